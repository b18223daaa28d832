package sqlite_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/infra/sqlite"
	"github.com/orchestra-fleet/orchestra/projections"
)

// TestPruneResultsAsRetentionDoes: a script's log goes when the last
// result about it is older than the retention, as RESULTS drops its
// messages: one planned long ago but retried lately stays, with its
// history; an old dropped operation goes with its unit.
func TestPruneResultsAsRetentionDoes(t *testing.T) {
	db, err := sqlite.Open(filepath.Join(t.TempDir(), "results.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	now := time.Now().UTC()
	old, recent := now.Add(-40*24*time.Hour), now.Add(-time.Hour)
	unit, oldScript, retried := uuid.New(), uuid.New(), uuid.New()
	op := func(name string) []events.OperationRef {
		return []events.OperationRef{{Backend: "b", Action: "save", Type: "site", Name: name}}
	}
	batch := []projections.ResultEnvelope{
		{Sequence: 1, Time: old, Result: &events.ScriptPlanned{ID: oldScript, Unit: unit, Server: "web1", Backend: "b", State: events.StateReceived, Operations: op("a"), Time: old}},
		{Sequence: 2, Time: old, Result: &events.ScriptPlanned{ID: retried, Unit: unit, Server: "web1", Backend: "b", State: events.StateReceived, Operations: op("b"), Time: old}},
		{Sequence: 3, Time: old, Result: &events.UnitPlanned{Unit: unit, Time: old, Dropped: []events.DroppedOp{{Operation: op("c")[0], Reason: "no route"}}}},
		{Sequence: 4, Time: recent, Result: &events.ScriptStarted{ID: retried, Unit: unit, Server: "web1", Backend: "b", Attempt: 2, Time: recent}},
	}
	if err := db.CommitResults(ctx, 4, batch); err != nil {
		t.Fatal(err)
	}
	n, err := db.PruneResults(ctx, now.Add(-30*24*time.Hour))
	if err != nil || n != 1 {
		t.Fatalf("pruned %d, %v; want 1", n, err)
	}
	if _, err := db.Script(ctx, oldScript); !errors.Is(err, projections.ErrNotFound) {
		t.Errorf("the old script's log: %v, want not found", err)
	}
	if l, err := db.Script(ctx, retried); err != nil || l.State != events.StateStarted {
		t.Errorf("the retried script's log: %+v, %v", l.ScriptEntry, err)
	}
	for name, want := range map[string]int{"a": 0, "b": 1, "c": 0} {
		if ops, err := db.History(ctx, "site", name, projections.HistoryCursor{}, 10); err != nil || len(ops) != want {
			t.Errorf("history of site/%s: %v, %v; want %d operations", name, ops, err, want)
		}
	}
	if _, err := db.Unit(ctx, unit); !errors.Is(err, projections.ErrNotFound) {
		t.Errorf("the old unit: %v, want not found", err)
	}
}
