package sqlite_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
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

// TestOpenMigratesSchemaTwo: a file whose results tables were made by
// schema version 2 (no updated column) opens, and its logs are pruned by
// their creation.
func TestOpenMigratesSchemaTwo(t *testing.T) {
	path := filepath.Join(t.TempDir(), "results.db")
	raw, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-40 * 24 * time.Hour).UnixNano()
	for _, q := range []string{
		`CREATE TABLE scripts (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, server TEXT NOT NULL, backend TEXT NOT NULL,
			unit TEXT NOT NULL, state TEXT NOT NULL, created INTEGER NOT NULL, entry BLOB NOT NULL, script TEXT NOT NULL,
			stdout BLOB NOT NULL, stderr BLOB NOT NULL)`,
		`CREATE TABLE rejected_results (seq INTEGER PRIMARY KEY, subject TEXT NOT NULL, reason TEXT NOT NULL)`,
		fmt.Sprintf(`INSERT INTO scripts VALUES (1, 'a', 'web1', 'b', 'u', 'SUCCESS', %d, '{}', '', '', '')`, old),
		`PRAGMA user_version = 2`,
	} {
		if _, err := raw.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err := raw.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := sqlite.Open(path)
	if err != nil {
		t.Fatalf("open a schema 2 file: %v", err)
	}
	defer db.Close()
	if n, err := db.PruneResults(context.Background(), time.Now().Add(-30*24*time.Hour)); err != nil || n != 1 {
		t.Errorf("pruned %d, %v; want the old log", n, err)
	}
}
