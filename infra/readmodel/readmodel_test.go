package readmodel_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	_ "modernc.org/sqlite"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/gateway"
	"github.com/orchestra-fleet/orchestra/infra/eventstore"
	"github.com/orchestra-fleet/orchestra/infra/natstest"
	"github.com/orchestra-fleet/orchestra/infra/planbus"
	"github.com/orchestra-fleet/orchestra/infra/readmodel"
	"github.com/orchestra-fleet/orchestra/infra/sqlite"
	"github.com/orchestra-fleet/orchestra/projections"
	"github.com/orchestra-fleet/orchestra/services"
)

// workload publishes a random history of units and scripts onto RESULTS:
// units planned before or after their scripts ran, several attempts, late
// results of older attempts, output split inside characters, output after
// an end, truncation, scripts that never finish, and some messages twice.
type workload struct {
	rnd     *rand.Rand
	js      jetstream.JetStream
	servers []string
	msgs    int
}

func (w *workload) publish(t *testing.T, subject string, r events.Result) {
	t.Helper()
	data, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.js.Publish(context.Background(), subject, data); err != nil {
		t.Fatal(err)
	}
	w.msgs++
}

func (w *workload) script(t *testing.T, server string, r events.Result) {
	t.Helper()
	w.publish(t, scriptSubject(t, server, r), r)
}

// scriptSubject is where r, a result about a script on server, goes.
func scriptSubject(t testing.TB, server string, r events.Result) string {
	t.Helper()
	var id uuid.UUID
	switch r := r.(type) {
	case *events.ScriptPlanned:
		id = r.ID
	case *events.ScriptStarted:
		id = r.ID
	case *events.ScriptOutput:
		id = r.ID
	case *events.ScriptFinished:
		id = r.ID
	}
	subject, err := events.ScriptSubject(server, id, r.ResultType())
	if err != nil {
		t.Fatal(err)
	}
	return subject
}

var states = []string{events.StateSuccess, events.StateFailure, events.StateTimeout, events.StateError, events.StateAborted}

// unit publishes one unit of work's history.
func (w *workload) unit(t *testing.T, at time.Time) {
	t.Helper()
	unit := uuid.New()
	n := 1 + w.rnd.IntN(4)
	rec := &events.UnitPlanned{Unit: unit, Sequence: uint64(w.rnd.IntN(1000)), Operations: n + 1, Time: at}
	if w.rnd.IntN(3) == 0 {
		rec.Dropped = []events.DroppedOp{{Operation: events.OperationRef{Backend: "spare", Action: "save", Type: "site", Name: fmt.Sprint("s", w.rnd.IntN(20))}, Reason: "no route takes it"}}
	}
	type run struct {
		server string
		id     uuid.UUID
	}
	var runs []run
	seen := map[uuid.UUID]bool{}
	for range n {
		server := w.servers[w.rnd.IntN(len(w.servers))]
		backend := []string{"vhost", "mail", "db"}[w.rnd.IntN(3)]
		id := events.ScriptID(unit, server, backend)
		if seen[id] {
			continue // one script per backend and server in a unit
		}
		seen[id] = true
		rec.Scripts = append(rec.Scripts, events.ScriptSummary{ID: id, Server: server, Backend: backend, State: events.StateReceived, Async: w.rnd.IntN(4) == 0})
		ops := []events.OperationRef{{Backend: backend, Action: "save", Type: "site", Name: fmt.Sprint("s", w.rnd.IntN(20))}}
		if w.rnd.IntN(3) == 0 {
			ops = append(ops, events.OperationRef{Backend: backend, Action: "reload", Type: "site", Name: ops[0].Name})
		}
		w.script(t, server, &events.ScriptPlanned{ID: id, Unit: unit, Server: server, Backend: backend, Operations: ops,
			State: events.StateReceived, Script: "echo ****\n", Time: at})
		runs = append(runs, run{server, id})
	}
	recordFirst := w.rnd.IntN(2) == 0
	if recordFirst {
		w.publish(t, events.UnitSubject(unit, rec.ResultType()), rec)
	}
	for i, r := range runs {
		attempts := 1 + w.rnd.IntN(3)
		if w.rnd.IntN(8) == 0 {
			attempts = 0 // still queued
		}
		var late []events.Result
		for a := 1; a <= attempts; a++ {
			start := at.Add(time.Duration(a) * time.Second)
			w.script(t, r.server, &events.ScriptStarted{ID: r.id, Unit: unit, Server: r.server, Backend: rec.Scripts[i].Backend, Attempt: a, Executor: "local on test", Time: start})
			var off int64
			for range w.rnd.IntN(4) {
				data := []byte(strings.Repeat("é", 1+w.rnd.IntN(40)))
				data = data[:len(data)-w.rnd.IntN(2)] // sometimes cut inside a character
				w.script(t, r.server, &events.ScriptOutput{ID: r.id, Attempt: a, Stream: []string{events.Stdout, events.Stderr}[w.rnd.IntN(2)], Offset: off, Data: data})
				off += int64(len(data))
			}
			if w.rnd.IntN(10) == 0 {
				w.script(t, r.server, &events.ScriptOutput{ID: r.id, Attempt: a, Stream: events.Stdout, Offset: off, Truncated: true, Data: []byte("[truncated]")})
			}
			fin := &events.ScriptFinished{ID: r.id, Unit: unit, Server: r.server, Backend: rec.Scripts[i].Backend, Attempt: a,
				State: states[w.rnd.IntN(len(states))], ExitCode: w.rnd.IntN(4) - 1, Stdout: off, Time: start.Add(time.Second)}
			if w.rnd.IntN(3) > 0 {
				fin.Started = start
			}
			if a < attempts && w.rnd.IntN(3) == 0 {
				late = append(late, fin) // the older attempt's end arrives after the newer one started
				continue
			}
			if a == attempts && w.rnd.IntN(6) == 0 {
				continue // never finishes
			}
			w.script(t, r.server, fin)
			if w.rnd.IntN(8) == 0 {
				w.script(t, r.server, &events.ScriptOutput{ID: r.id, Attempt: a, Stream: events.Stdout, Offset: off, Data: []byte("after the end\n")})
			}
		}
		for _, l := range late {
			w.script(t, r.server, l)
		}
	}
	if !recordFirst {
		w.publish(t, events.UnitSubject(unit, rec.ResultType()), rec)
	}
}

// The queries that dump a read model's file, every row in key order.
var (
	resultsTables = []string{
		`SELECT seq, id, server, backend, unit, state, created, updated, entry, script, hex(stdout), hex(stderr) FROM scripts ORDER BY seq`,
		`SELECT type, name, seq, idx, doc, script, time FROM operations ORDER BY type, name, seq, idx`,
		`SELECT id, planned, doc FROM units ORDER BY id`,
		`SELECT name, doc FROM server_status ORDER BY name`,
		`SELECT projection, seq FROM checkpoints ORDER BY projection`,
	}
	modelTables = []string{
		`SELECT tbl, key, grp, version, doc FROM rows ORDER BY tbl, key`,
		`SELECT projection, seq FROM checkpoints ORDER BY projection`,
	}
)

// dump runs the queries on the file at path and prints what they give.
func dump(t *testing.T, path string, queries []string) string {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var b strings.Builder
	for _, q := range queries {
		rows, err := db.Query(q)
		if err != nil {
			t.Fatal(err)
		}
		cols, _ := rows.Columns()
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		n := 0
		for rows.Next() {
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			for i, v := range vals {
				if bs, ok := v.([]byte); ok {
					vals[i] = string(bs)
				}
			}
			fmt.Fprintln(&b, vals...)
			n++
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		rows.Close()
		fmt.Fprintf(&b, "-- %d rows: %s\n", n, q)
	}
	return b.String()
}

// startBus starts an embedded JetStream with Orchestra's streams and the
// planner's bus on it.
func startBus(t testing.TB) (*natstest.Env, *planbus.Bus) {
	t.Helper()
	env := natstest.Start(t)
	bus, err := planbus.New(context.Background(), env.JS)
	if err != nil {
		t.Fatal(err)
	}
	return env, bus
}

// TestLiveEqualsReplay is the property: for random workloads, the results
// read models built live, while the results arrive, are the same, row for
// row, as the ones a replay rebuilds from sequence 1.
func TestLiveEqualsReplay(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) {
			env, bus := startBus(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			log := slog.New(slog.DiscardHandler)
			newRunner := func(db *sqlite.DB) readmodel.Runner { return projections.NewResultsRunner(db, bus, log) }
			dir := t.TempDir()
			live, err := readmodel.Open(projections.ResultsName, dir, newRunner, newRunner, log)
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- live.Run(ctx) }()

			w := &workload{rnd: rand.New(rand.NewPCG(seed, seed)), js: env.JS, servers: []string{"web1", "web2", "db1.example.com"}}
			at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
			for i := range 60 {
				w.unit(t, at.Add(time.Duration(i)*time.Minute))
				if i%7 == 0 {
					time.Sleep(time.Millisecond) // let the live runner commit in between
				}
			}
			last, err := bus.LastResult(ctx)
			if err != nil {
				t.Fatal(err)
			}
			wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
			defer wcancel()
			if err := live.WaitFor(wctx, last); err != nil {
				t.Fatalf("the live read models did not reach %d: %v", last, err)
			}
			liveFile := onlyDB(t, dir)
			before := dump(t, liveFile, resultsTables)

			// Replay beside it; once it has caught up, the live file is
			// replaced by the replayed one. Meanwhile the API's reads see
			// every script, from the old copy, then from the new one.
			view := readmodel.ResultsView{Model: live, Bus: bus}
			all, err := view.Scripts(ctx, projections.ScriptFilter{Limit: 100000})
			if err != nil {
				t.Fatal(err)
			}
			reads := make(chan error, 1)
			replaying := make(chan struct{})
			go func() {
				n := 0
				defer func() { t.Logf("%d reads during the replay", n) }()
				for {
					got, err := view.Scripts(ctx, projections.ScriptFilter{Limit: 100000})
					if err == nil && len(got) != len(all) {
						err = fmt.Errorf("a read during the replay saw %d scripts, not %d", len(got), len(all))
					}
					n++
					select {
					case <-replaying:
						reads <- err
						return
					default:
						if err != nil {
							reads <- err
							return
						}
					}
				}
			}()
			var progress []gateway.ReplayStatus
			err = live.Replay(ctx, func(p gateway.ReplayStatus) { progress = append(progress, p) })
			close(replaying)
			if err != nil {
				t.Fatal(err)
			}
			if err := <-reads; err != nil {
				t.Fatal(err)
			}
			replayed := onlyDB(t, dir)
			if replayed == liveFile {
				t.Fatal("the replay left the read model in the same file")
			}
			if after := dump(t, replayed, resultsTables); after != before {
				t.Fatalf("replayed read models differ from the live ones (%d results):\n%s", w.msgs, diff(before, after))
			}
			if !strings.Contains(before, "FAILURE") || !strings.Contains(before, "DROPPED") {
				t.Fatalf("the workload is too tame:\n%s", before)
			}
			if p := progress[len(progress)-1]; !p.Done || p.Seq < last || p.Finished == nil {
				t.Errorf("last progress %+v, want done at %d", p, last)
			}
			cancel()
			if err := <-done; err != nil && ctx.Err() == nil {
				t.Fatal(err)
			}
		})
	}
}

// onlyDB is the one database file in dir.
func onlyDB(t *testing.T, dir string) string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.db"))
	if err != nil || len(files) != 1 {
		t.Fatalf("database files %v (%v), want one", files, err)
	}
	return files[0]
}

// diff shows the first lines where a and b differ.
func diff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := range min(len(al), len(bl)) {
		if al[i] != bl[i] {
			return fmt.Sprintf("line %d\nlive:     %s\nreplayed: %s", i+1, al[i], bl[i])
		}
	}
	return fmt.Sprintf("%d lines live, %d replayed", len(al), len(bl))
}

// records keeps what a logger was given.
type records struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (r *records) Enabled(context.Context, slog.Level) bool { return true }
func (r *records) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec.Clone())
	return nil
}
func (r *records) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *records) WithGroup(string) slog.Handler      { return r }

// failures are the "projection failed" records: the seq of each and when.
func (r *records) failures() (seqs []uint64, at []time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rec := range r.recs {
		if rec.Level != slog.LevelError {
			continue
		}
		rec.Attrs(func(a slog.Attr) bool {
			if a.Key == "seq" {
				seqs, at = append(seqs, a.Value.Uint64()), append(at, rec.Time)
			}
			return true
		})
	}
	return seqs, at
}

// TestAMalformedResultIsRejectedAndReported: a message on RESULTS that is
// not a well-formed result — not JSON, or naming another server than its
// subject (an agent may publish only under its own) — is reported with its
// sequence and recorded as rejected, and the read models go on with what
// follows, leaving the other server's log alone.
func TestAMalformedResultIsRejectedAndReported(t *testing.T) {
	env, bus := startBus(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rec := &records{}
	path := filepath.Join(t.TempDir(), "results.db")
	db, err := sqlite.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	r := projections.NewResultsRunner(db, bus, slog.New(rec))
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()

	w := &workload{rnd: rand.New(rand.NewPCG(7, 7)), js: env.JS}
	unit := uuid.New()
	victim := events.ScriptID(unit, "web2", "vhost")
	w.script(t, "web2", &events.ScriptStarted{ID: victim, Unit: unit, Server: "web2", Backend: "vhost", Attempt: 1})
	notJSON, err := env.JS.Publish(ctx, scriptSubject(t, "web1", &events.ScriptFinished{ID: uuid.New()}), []byte("not json"))
	if err != nil {
		t.Fatal(err)
	}
	// Published under web1's subject (as web1's agent may), about web2's
	// script: naming web2, naming web1, and output.
	var spoofs []uint64
	for _, r := range []events.Result{
		&events.ScriptFinished{ID: victim, Unit: unit, Server: "web2", Backend: "vhost", Attempt: 1, State: events.StateFailure},
		&events.ScriptFinished{ID: victim, Unit: unit, Server: "web1", Backend: "vhost", Attempt: 5, State: events.StateError},
		&events.ScriptOutput{ID: victim, Attempt: 1, Stream: events.Stdout, Data: []byte("forged\n")},
	} {
		data, _ := json.Marshal(r)
		ack, err := env.JS.Publish(ctx, scriptSubject(t, "web1", r), data)
		if err != nil {
			t.Fatal(err)
		}
		spoofs = append(spoofs, ack.Sequence)
	}
	after := events.ScriptID(unit, "web1", "vhost")
	w.script(t, "web1", &events.ScriptStarted{ID: after, Unit: unit, Server: "web1", Backend: "vhost", Attempt: 1})
	last, err := bus.LastResult(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
	defer wcancel()
	if err := r.WaitFor(wctx, last); err != nil {
		t.Fatalf("the read models stopped at %d: %v", r.Seq(), err)
	}
	if l, err := db.Script(ctx, after); err != nil || l.State != events.StateStarted {
		t.Errorf("the result after the rejected ones: %+v, %v", l.ScriptEntry, err)
	}
	if l, err := db.Script(ctx, victim); err != nil || l.State != events.StateStarted || l.Attempt != 1 || l.Stdout != "" {
		t.Errorf("web2's script after spoofed results: %+v, %v", l, err)
	}
	if st, err := db.ServerStatus(ctx, "web2"); err != nil || !st.Reachable || st.LastState != events.StateStarted {
		t.Errorf("web2's status after spoofed results: %+v, %v", st, err)
	}
	// Those refused as they are decoded are reported; output is refused
	// by the fold, against the script's log; all are recorded.
	if seqs, _ := rec.failures(); !slices.Equal(seqs, []uint64{notJSON.Sequence, spoofs[0], spoofs[1]}) {
		t.Errorf("reported %v, want %d, %d and %d", seqs, notJSON.Sequence, spoofs[0], spoofs[1])
	}
	got := dump(t, path, []string{`SELECT seq, subject, reason FROM rejected_results ORDER BY seq`})
	for _, want := range []string{fmt.Sprintf("%d orchestra.res.web1.", notJSON.Sequence), "names server \"web2\"",
		"is not the script of backend \"vhost\" on server \"web1\"", "published under server \"web1\"", "-- 4 rows"} {
		if !strings.Contains(got, want) {
			t.Errorf("rejected results, without %q:\n%s", want, got)
		}
	}
	cancel()
	<-done
}

// failingStore fails the first n commits, as a full disk would.
type failingStore struct {
	projections.ResultsStore
	mu sync.Mutex
	n  int
}

func (s *failingStore) CommitResults(ctx context.Context, seq uint64, batch []projections.ResultEnvelope) error {
	s.mu.Lock()
	fail := s.n > 0
	s.n--
	s.mu.Unlock()
	if fail {
		return &projections.EventError{Seq: batch[0].Sequence, Err: errors.New("disk I/O error")}
	}
	return s.ResultsStore.CommitResults(ctx, seq, batch)
}

// TestAFailingCommitIsRetriedNotSkipped: a commit that fails is retried
// with growing waits, each failure reported with the event's sequence,
// until it succeeds; nothing is skipped.
func TestAFailingCommitIsRetriedNotSkipped(t *testing.T) {
	env, bus := startBus(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	db, err := sqlite.Open(filepath.Join(t.TempDir(), "results.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	w := &workload{rnd: rand.New(rand.NewPCG(7, 7)), js: env.JS}
	unit := uuid.New()
	id := events.ScriptID(unit, "web1", "vhost")
	w.script(t, "web1", &events.ScriptStarted{ID: id, Unit: unit, Server: "web1", Backend: "vhost", Attempt: 1})
	w.script(t, "web1", &events.ScriptFinished{ID: id, Unit: unit, Server: "web1", Backend: "vhost", Attempt: 1, State: events.StateSuccess})

	rec := &records{}
	r := projections.NewResultsRunner(&failingStore{ResultsStore: db, n: 3}, bus, slog.New(rec))
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
	defer wcancel()
	if err := r.WaitFor(wctx, 2); err != nil {
		t.Fatalf("the read models stopped at %d: %v", r.Seq(), err)
	}
	seqs, at := rec.failures()
	if !slices.Equal(seqs, []uint64{1, 1, 1}) {
		t.Fatalf("failures reported at %v, want three at 1", seqs)
	}
	if d1, d2 := at[1].Sub(at[0]), at[2].Sub(at[1]); d2 <= d1 {
		t.Errorf("waits between retries %s then %s: not growing", d1, d2)
	}
	if l, err := db.Script(ctx, id); err != nil || l.State != events.StateSuccess {
		t.Errorf("after the retries: %+v, %v", l.ScriptEntry, err)
	}
	cancel()
	<-done
}

// TestModelLiveEqualsReplay is the same property for the model read model
// (servers, resources): random saves and deletes, folded live while they
// are appended, then replayed.
func TestModelLiveEqualsReplay(t *testing.T) {
	env, _ := startBus(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reg, err := events.NewRegistry(events.Catalog()...)
	if err != nil {
		t.Fatal(err)
	}
	store, err := eventstore.New(ctx, eventstore.Config{JetStream: env.JS, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	newRunner := func(db *sqlite.DB) readmodel.Runner {
		return projections.NewRunner(projections.NewModel(reg), db, store, log)
	}
	dir := t.TempDir()
	live, err := readmodel.Open("model", dir, newRunner, newRunner, log)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- live.Run(ctx) }()

	rnd := rand.New(rand.NewPCG(11, 12))
	seqOf := map[events.Aggregate]uint64{} // the aggregate's last event, for the compare-and-set
	exists := map[events.Aggregate]bool{}
	var last uint64
	for i := range 400 {
		u, err := services.NewUnit(events.Meta{Actor: "tester"}, time.Date(2026, 3, 1, 12, 0, i, 0, time.UTC))
		if err != nil {
			t.Fatal(err)
		}
		var agg events.Aggregate
		var p events.Payload
		if rnd.IntN(2) == 0 {
			name := fmt.Sprint("web", rnd.IntN(8))
			agg = events.Aggregate{Type: events.AggServer, ID: name}
			p = &events.ServerSaved{Server: events.Server{Name: name, Address: fmt.Sprint("10.0.0.", rnd.IntN(250)), Port: 22, Method: "ssh", Active: rnd.IntN(4) > 0}}
			if exists[agg] && rnd.IntN(4) == 0 {
				p = &events.ServerDeleted{Name: name}
			}
		} else {
			name := fmt.Sprint("s", rnd.IntN(20))
			agg = events.Aggregate{Type: events.AggResource, ID: services.ResourceName("site", name)}
			p = &events.ResourceSaved{Resource: events.Resource{Type: "site", Name: name, Attrs: json.RawMessage(fmt.Sprintf(`{"n":%d}`, rnd.IntN(1000)))}}
			if exists[agg] && rnd.IntN(4) == 0 {
				p = &events.ResourceDeleted{Type: "site", Name: name}
			}
		}
		u.Expect(agg, seqOf[agg])
		if err := u.Add(agg, p); err != nil {
			t.Fatal(err)
		}
		a, err := store.Append(ctx, u)
		if err != nil {
			t.Fatal(err)
		}
		last, seqOf[agg] = a.Last, a.Last
		switch p.(type) {
		case *events.ServerDeleted, *events.ResourceDeleted:
			exists[agg] = false
		default:
			exists[agg] = true
		}
	}
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if err := live.WaitFor(wctx, last); err != nil {
		t.Fatalf("the live read model did not reach %d: %v", last, err)
	}
	liveFile := onlyDB(t, dir)
	before := dump(t, liveFile, modelTables)
	if err := live.Replay(ctx, func(gateway.ReplayStatus) {}); err != nil {
		t.Fatal(err)
	}
	if after := dump(t, onlyDB(t, dir), modelTables); after != before {
		t.Fatalf("the replayed model differs from the live one:\n%s", diff(before, after))
	}
	if !strings.Contains(before, "servers web") || !strings.Contains(before, "resources site") {
		t.Fatalf("the workload left no rows:\n%s", before)
	}
	cancel()
	<-done
}

// TestReplayAfterRetentionRemovedEverything: when RESULTS has gone past
// sequences it no longer holds, a new copy is up to date at its last
// sequence, and a replay finishes.
func TestReplayAfterRetentionRemovedEverything(t *testing.T) {
	env, bus := startBus(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	log := slog.New(slog.DiscardHandler)
	newRunner := func(db *sqlite.DB) readmodel.Runner { return projections.NewResultsRunner(db, bus, log) }
	live, err := readmodel.Open(projections.ResultsName, t.TempDir(), newRunner, newRunner, log)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- live.Run(ctx) }()
	w := &workload{rnd: rand.New(rand.NewPCG(3, 3)), js: env.JS, servers: []string{"web1"}}
	w.unit(t, time.Now())
	last, err := bus.LastResult(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := live.WaitFor(ctx, last); err != nil {
		t.Fatal(err)
	}
	stream, err := env.JS.Stream(ctx, events.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Purge(ctx); err != nil {
		t.Fatal(err)
	}
	if err := live.Replay(ctx, func(gateway.ReplayStatus) {}); err != nil {
		t.Fatalf("replay over an emptied stream: %v", err)
	}
	view := readmodel.ResultsView{Model: live, Bus: bus}
	if err := view.CatchUp(ctx); err != nil {
		t.Fatalf("catch up over an emptied stream: %v", err)
	}
	if seq := live.Seq(); seq != last {
		t.Errorf("the new copy is at %d, want %d", seq, last)
	}
	cancel()
	<-done
}
