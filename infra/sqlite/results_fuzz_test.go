package sqlite_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/google/uuid"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/infra/planbus"
	"github.com/orchestra-fleet/orchestra/infra/sqlite"
	"github.com/orchestra-fleet/orchestra/projections"
)

// FuzzFoldResult: whatever someone publishes on a RESULTS subject (the
// executors' credentials allow theirs), decoding it either fails or gives
// a result the results read models fold and commit without a panic, and
// the commit moves the checkpoint.
func FuzzFoldResult(f *testing.F) {
	db, err := sqlite.Open(filepath.Join(f.TempDir(), "results.db"))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { db.Close() })
	kinds := []string{"ScriptPlanned", "ScriptStarted", "ScriptOutput", "ScriptFinished", "UnitPlanned"}
	unit := "0192f1e0-6b1a-7c3e-9d2f-5a4b3c2d1e0f"
	id := events.ScriptID(uuid.MustParse(unit), "web1", "b").String() // the script of backend b on web1
	for i, seed := range []string{
		`{"id":"` + id + `","unit":"` + unit + `","server":"web1","backend":"b","operations":[{"backend":"b","action":"save","type":"t","name":"n"}],"state":"RECEIVED","time":"2026-01-01T00:00:00Z"}`,
		`{"id":"` + id + `","unit":"` + unit + `","server":"web1","backend":"b","attempt":2,"time":"2026-01-01T00:00:00Z"}`,
		`{"id":"` + id + `","attempt":2,"stream":"stdout","data":"aGVsbG8K"}`,
		`{"id":"` + id + `","unit":"` + unit + `","server":"web1","backend":"b","attempt":-1,"state":"TIMEOUT","exit_code":-1}`,
		`{"unit":"` + unit + `","scripts":[{"id":"` + id + `","server":"web1","state":"RECEIVED"}],"dropped":[{"operation":{"type":"t","name":"n"},"reason":"r"}]}`,
	} {
		f.Add(uint8(i), []byte(seed))
	}
	var seq uint64
	f.Fuzz(func(t *testing.T, kind uint8, data []byte) {
		k := kinds[int(kind)%len(kinds)]
		subject := "orchestra.res.web1." + id + "." + k
		if k == "UnitPlanned" {
			subject = events.UnitSubject(uuid.MustParse(unit), k)
		}
		r, err := planbus.DecodeResult(subject, data)
		if err != nil {
			return
		}
		seq++
		ctx := context.Background()
		if err := db.CommitResults(ctx, seq, []projections.ResultEnvelope{{Sequence: seq, Subject: subject, Result: r}}); err != nil {
			t.Fatalf("%s %s: %v", k, data, err)
		}
		if cp, err := db.Checkpoint(ctx, projections.ResultsName); err != nil || cp != seq {
			t.Fatalf("checkpoint %d, %v; want %d", cp, err, seq)
		}
	})
}
