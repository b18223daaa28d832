package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/orchestra-fleet/orchestra/projections"
	"github.com/orchestra-fleet/orchestra/projections/projectionstest"
)

func testCtx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// openAt opens the file at path and closes it when the test ends.
func openAt(t *testing.T, path string) *DB {
	t.Helper()
	db, err := Open(path)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	t.Cleanup(func() {
		if err := db.Close(); err != nil {
			t.Errorf("close %s: %v", path, err)
		}
	})
	return db
}

func openTemp(t *testing.T) *DB {
	t.Helper()
	return openAt(t, filepath.Join(t.TempDir(), "read.db"))
}

func srv(key string, version uint64) projections.Row {
	return projections.Row{Table: "servers", Key: key, Version: version, Doc: json.RawMessage(fmt.Sprintf(`{"name":%q}`, key))}
}

func commitOrFail(t *testing.T, db *DB, projection string, seq uint64, rows ...projections.Row) {
	t.Helper()
	if err := db.Commit(testCtx(t), projection, seq, rows); err != nil {
		t.Fatalf("commit %s at %d: %v", projection, seq, err)
	}
}

func listKeys(t *testing.T, db *DB, q projections.Query) []string {
	t.Helper()
	rows, err := db.List(testCtx(t), q)
	if err != nil {
		t.Fatalf("list %+v: %v", q, err)
	}
	var out []string
	for _, r := range rows {
		out = append(out, r.Key)
	}
	return out
}

func TestStoreSuite(t *testing.T) {
	projectionstest.Run(t, func(t *testing.T) projections.Store { return openTemp(t) })
}

func TestReopenKeepsRowsAndCheckpoints(t *testing.T) {
	path := filepath.Join(t.TempDir(), "read.db")
	db, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	commitOrFail(t, db, "model", 7, srv("web1", 3), srv("web2", 7))
	commitOrFail(t, db, "planner", 4)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	db = openAt(t, path)
	for name, want := range map[string]uint64{"model": 7, "planner": 4} {
		if got, err := db.Checkpoint(testCtx(t), name); err != nil || got != want {
			t.Fatalf("checkpoint %s after reopen = %d, %v; want %d", name, got, err, want)
		}
	}
	r, err := db.Get(testCtx(t), "servers", "web1")
	if err != nil || r.Version != 3 || string(r.Doc) != `{"name":"web1"}` {
		t.Fatalf("web1 after reopen = %+v, %v", r, err)
	}
	if got := listKeys(t, db, projections.Query{Table: "servers"}); !slices.Equal(got, []string{"web1", "web2"}) {
		t.Fatalf("servers after reopen = %v", got)
	}
	var v int
	if err := db.sql.QueryRow("PRAGMA user_version").Scan(&v); err != nil || v != schemaVersion {
		t.Fatalf("user_version = %d, %v; want %d", v, err, schemaVersion)
	}
	// The store still moves on from where it was.
	if err := db.Commit(testCtx(t), "model", 7, nil); err == nil {
		t.Fatal("commit at the reopened checkpoint succeeded; want it refused")
	}
	commitOrFail(t, db, "model", 8, srv("web3", 8))
}

func TestNewerSchemaIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "read.db")
	db, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.sql.Exec(fmt.Sprintf("PRAGMA user_version = %d", schemaVersion+1)); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db, err = Open(path)
	if err == nil {
		db.Close()
		t.Fatal("open of a file from a newer schema succeeded")
	}
	if !strings.Contains(err.Error(), "newer") || !strings.Contains(err.Error(), path) {
		t.Fatalf("open: %v; want it to name the file and the newer schema", err)
	}
}

func TestOpenSetsPragmas(t *testing.T) {
	db := openTemp(t)
	// Ask several connections at once, so the pragmas are known to be set
	// on each, not only the first.
	conns := make([]*sql.Conn, 3)
	for i := range conns {
		c, err := db.sql.Conn(testCtx(t))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
	for i, c := range conns {
		for pragma, want := range map[string]string{
			"journal_mode": "wal",
			"synchronous":  "1", // NORMAL
			"foreign_keys": "1",
			"busy_timeout": fmt.Sprint(busyTimeout),
		} {
			var got string
			if err := c.QueryRowContext(testCtx(t), "PRAGMA "+pragma).Scan(&got); err != nil {
				t.Fatalf("conn %d: pragma %s: %v", i, pragma, err)
			}
			if got != want {
				t.Errorf("conn %d: pragma %s = %s, want %s", i, pragma, got, want)
			}
		}
	}
}

func TestFileIsPrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data", "read")
	path := filepath.Join(dir, "orchestra.db")
	db := openAt(t, path)
	commitOrFail(t, db, "model", 1, srv("web1", 1))

	for _, c := range []struct {
		path string
		want os.FileMode
	}{
		{filepath.Dir(dir), 0o700},
		{dir, 0o700},
		{path, 0o600},
		{path + "-wal", 0o600},
		{path + "-shm", 0o600},
	} {
		fi, err := os.Stat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != c.want {
			t.Errorf("%s has mode %v, want %v", c.path, got, c.want)
		}
	}
}

func TestPathNeedsNoEscaping(t *testing.T) {
	path := filepath.Join(t.TempDir(), "odd ?name#%20.db")
	db := openAt(t, path)
	commitOrFail(t, db, "model", 1, srv("web1", 1))
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("the file is not where it was asked for: %v", err)
	}
}

// TestReadersBesideALongWrite holds a write transaction open and reads
// beside it, through the same DB and through a second one on the file (as
// another process would): WAL readers neither wait nor fail, and see the
// last commit.
func TestReadersBesideALongWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "read.db")
	db := openAt(t, path)
	other := openAt(t, path)
	commitOrFail(t, db, "model", 1, srv("web1", 1), srv("web2", 1))

	holding, release := make(chan struct{}), make(chan struct{})
	written := make(chan error, 1)
	go func() {
		ctx := context.Background()
		written <- db.write(ctx, func(tx *sql.Tx) error {
			for _, k := range []string{"web3", "web4"} {
				if _, err := tx.ExecContext(ctx, upsertRow, "servers", k, "", 2, []byte(`{}`)); err != nil {
					return err
				}
			}
			if _, err := tx.ExecContext(ctx, upsertCheckpoint, "model", 2); err != nil {
				return err
			}
			close(holding)
			<-release
			return nil
		})
	}()
	<-holding

	// Shorter than busy_timeout: a reader that waited for the writer
	// would fail here rather than pass late.
	ctx, cancel := context.WithTimeout(context.Background(), busyTimeout*time.Millisecond/2)
	defer cancel()
	for name, s := range map[string]*DB{"same DB": db, "second DB": other} {
		for range 20 {
			rows, err := s.List(ctx, projections.Query{Table: "servers"})
			if err != nil || len(rows) != 2 {
				t.Fatalf("%s: list beside a write: %d rows, %v; want the 2 committed", name, len(rows), err)
			}
			if seq, err := s.Checkpoint(ctx, "model"); err != nil || seq != 1 {
				t.Fatalf("%s: checkpoint beside a write: %d, %v; want 1", name, seq, err)
			}
			if _, err := s.Get(ctx, "servers", "web1"); err != nil {
				t.Fatalf("%s: get beside a write: %v", name, err)
			}
			if _, _, err := s.Lookup(ctx, "admin", "k"); err != nil {
				t.Fatalf("%s: idempotency lookup beside a write: %v", name, err)
			}
		}
	}

	// A commit from another DB on the file waits for the lock (busy_timeout)
	// instead of failing; one on the same DB waits for the writer slot.
	waiting := make(chan error, 2)
	go func() { waiting <- other.Commit(context.Background(), "other", 1, []projections.Row{srv("web5", 1)}) }()
	go func() { waiting <- db.Commit(context.Background(), "planner", 1, []projections.Row{srv("web6", 1)}) }()
	time.Sleep(50 * time.Millisecond) // let both reach the lock
	close(release)
	if err := <-written; err != nil {
		t.Fatalf("long write: %v", err)
	}
	for range 2 {
		if err := <-waiting; err != nil {
			t.Fatalf("commit queued behind a long write: %v", err)
		}
	}
	want := []string{"web1", "web2", "web3", "web4", "web5", "web6"}
	if got := listKeys(t, db, projections.Query{Table: "servers"}); !slices.Equal(got, want) {
		t.Fatalf("after the writes: %v, want %v", got, want)
	}
}

func TestCommitRefusals(t *testing.T) {
	db := openTemp(t)
	commitOrFail(t, db, "model", 5, srv("web1", 5))
	for _, c := range []struct {
		name       string
		projection string
		seq        uint64
		rows       []projections.Row
		says       string
	}{
		{"stale sequence", "model", 5, []projections.Row{srv("web2", 5)}, "already at 5"},
		{"empty projection", "", 6, nil, "empty projection"},
		{"sequence out of range", "model", 1 << 63, nil, "range"},
		{"row without table", "model", 6, []projections.Row{{Key: "k", Doc: json.RawMessage(`{}`)}}, "rows[0]"},
		{"row without key", "model", 6, []projections.Row{srv("ok", 6), {Table: "servers", Doc: json.RawMessage(`{}`)}}, "rows[1]"},
		{"row without document", "model", 6, []projections.Row{{Table: "servers", Key: "k"}}, "empty document"},
	} {
		err := db.Commit(testCtx(t), c.projection, c.seq, c.rows)
		if err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: %v, want an error saying %q", c.name, err, c.says)
		}
	}
	if seq, err := db.Checkpoint(testCtx(t), "model"); err != nil || seq != 5 {
		t.Fatalf("checkpoint after refusals = %d, %v; want 5", seq, err)
	}
	if got := listKeys(t, db, projections.Query{Table: "servers"}); !slices.Equal(got, []string{"web1"}) {
		t.Fatalf("rows after refusals: %v", got)
	}
}

func TestGetNotFoundNamesTheRow(t *testing.T) {
	db := openTemp(t)
	_, err := db.Get(testCtx(t), "servers", "web9")
	if err == nil || !strings.Contains(err.Error(), "servers/web9") {
		t.Fatalf("get of a missing row: %v, want it to name servers/web9", err)
	}
}

func TestDefaultListLimit(t *testing.T) {
	db := openTemp(t)
	rows := make([]projections.Row, DefaultListLimit+5)
	for i := range rows {
		rows[i] = srv(fmt.Sprintf("k%04d", i), 1)
	}
	commitOrFail(t, db, "model", 1, rows...)
	if got := listKeys(t, db, projections.Query{Table: "servers"}); len(got) != DefaultListLimit {
		t.Fatalf("list without a limit: %d rows, want %d", len(got), DefaultListLimit)
	}
}

func TestCanceledCommitWritesNothing(t *testing.T) {
	db := openTemp(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := db.Commit(ctx, "model", 1, []projections.Row{srv("web1", 1)}); err == nil {
		t.Fatal("commit with a canceled context succeeded")
	}
	if seq, err := db.Checkpoint(testCtx(t), "model"); err != nil || seq != 0 {
		t.Fatalf("checkpoint = %d, %v; want 0", seq, err)
	}

	// Canceled halfway through a transaction: rolled back, and the writer
	// connection still serves the next commit.
	ctx, cancel = context.WithCancel(context.Background())
	err := db.write(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, upsertRow, "servers", "half", "", 1, []byte(`{}`)); err != nil {
			return err
		}
		cancel()
		_, err := tx.ExecContext(ctx, upsertCheckpoint, "model", 1)
		return err
	})
	if err == nil {
		t.Fatal("write canceled halfway succeeded")
	}
	commitOrFail(t, db, "model", 2, srv("web2", 2))
	if got := listKeys(t, db, projections.Query{Table: "servers"}); !slices.Equal(got, []string{"web2"}) {
		t.Fatalf("after a canceled write: %v, want [web2]", got)
	}
}
