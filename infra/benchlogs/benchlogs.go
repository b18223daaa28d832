// Package benchlogs provides the script logs the benchmarks read: the
// results of one script's run, and a results read model of many script
// logs, built once per machine in the user's cache directory and reused by
// later runs.
package benchlogs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/infra/sqlite"
	"github.com/orchestra-fleet/orchestra/projections"
)

// Count is how many script logs the benchmarks use: 1M, or the number
// ORCHESTRA_BENCH_LOGS says.
func Count(tb testing.TB) int {
	s := os.Getenv("ORCHESTRA_BENCH_LOGS")
	if s == "" {
		return 1_000_000
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		tb.Fatalf("ORCHESTRA_BENCH_LOGS=%q: want a positive number of script logs", s)
	}
	return n
}

// Script returns the results of one script's run: planned, started, two
// chunks of output, finished.
func Script(unit uuid.UUID, server, backend string, at time.Time, state string) (uuid.UUID, []events.Result) {
	id := events.ScriptID(unit, server, backend)
	return id, []events.Result{
		&events.ScriptPlanned{ID: id, Unit: unit, Server: server, Backend: backend, State: events.StateReceived, Script: "echo ****\n", Time: at,
			Operations: []events.OperationRef{{Backend: backend, Action: "save", Type: "site", Name: "s" + id.String()[:4]}}},
		&events.ScriptStarted{ID: id, Unit: unit, Server: server, Backend: backend, Attempt: 1, Executor: "local on bench", Time: at},
		&events.ScriptOutput{ID: id, Attempt: 1, Stream: events.Stdout, Data: []byte("reloading the site\n")},
		&events.ScriptOutput{ID: id, Attempt: 1, Stream: events.Stderr, Data: []byte("warning: nothing\n")},
		&events.ScriptFinished{ID: id, Unit: unit, Server: server, Backend: backend, Attempt: 1, State: state, Started: at, Time: at, Stdout: 19, Stderr: 17},
	}
}

// Start is when the first script log of Open's read model ran; the i-th
// ran i seconds later.
var Start = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// Open returns a results read model of n script logs and its file: over
// 100 servers (web0 … web99) and three backends (vhost, mail, db), a tenth
// failed and a twentieth timed out. It is built once (1M logs take about
// three minutes and 1.3 GB) and kept in the user's cache directory.
func Open(tb testing.TB, n int) (*sqlite.DB, string) {
	tb.Helper()
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	// The name changes with the results tables' layout (updated: when the
	// latest result was stored).
	path := filepath.Join(cache, "orchestra-bench", fmt.Sprintf("scripts-%d-updated.db", n))
	db, err := sqlite.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	ctx := context.Background()
	cp, err := db.Checkpoint(ctx, projections.ResultsName)
	if err != nil {
		tb.Fatal(err)
	}
	if cp >= uint64(2*n) {
		return db, path
	}
	tb.Logf("building %d script logs in %s (once)", n, path)
	seq := cp
	batch := make([]projections.ResultEnvelope, 0, 5000)
	for i := int(cp / 2); i < n; i++ {
		state := events.StateSuccess
		switch {
		case i%10 == 0:
			state = events.StateFailure
		case i%20 == 1:
			state = events.StateTimeout
		}
		_, rs := Script(uuid.New(), fmt.Sprint("web", i%100), []string{"vhost", "mail", "db"}[i%3], Start.Add(time.Duration(i)*time.Second), state)
		for _, r := range []events.Result{rs[0], rs[4]} { // planned and finished
			seq++
			batch = append(batch, projections.ResultEnvelope{Sequence: seq, Result: r})
		}
		if len(batch) == cap(batch) || i == n-1 {
			if err := db.CommitResults(ctx, seq, batch); err != nil {
				tb.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	return db, path
}
