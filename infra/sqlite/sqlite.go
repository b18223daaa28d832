// Package sqlite keeps Orchestra's read models, projection checkpoints and
// idempotent responses in one SQLite file (modernc.org/sqlite, pure Go). It
// implements projections.Store and gateway.IdempotencyStore.
package sqlite

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	_ "modernc.org/sqlite" // registers the "sqlite" driver

	"github.com/orchestra-fleet/orchestra/gateway"
	"github.com/orchestra-fleet/orchestra/projections"
)

var (
	_ projections.Store        = (*DB)(nil)
	_ gateway.IdempotencyStore = (*DB)(nil)
)

// schemaVersion is the layout schema creates, kept in PRAGMA user_version.
// A file with a higher version was written by a newer build and is refused.
const schemaVersion = 3

// schema is idempotent: Open runs it on every start.
const schema = `
CREATE TABLE IF NOT EXISTS rows (
	tbl     TEXT    NOT NULL,
	key     TEXT    NOT NULL,
	grp     TEXT    NOT NULL DEFAULT '',
	version INTEGER NOT NULL,
	doc     BLOB    NOT NULL,
	PRIMARY KEY (tbl, key)
);

CREATE TABLE IF NOT EXISTS checkpoints (
	projection TEXT    PRIMARY KEY,
	seq        INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS idempotency (
	scope   TEXT    NOT NULL,
	key     TEXT    NOT NULL,
	hash    TEXT    NOT NULL,
	status  INTEGER NOT NULL,
	header  TEXT    NOT NULL, -- JSON object
	body    BLOB,
	created INTEGER NOT NULL, -- unix nanoseconds
	PRIMARY KEY (scope, key)
);
CREATE INDEX IF NOT EXISTS idempotency_by_created ON idempotency (created);
`

// migrate brings tables made by schema version v up to date: CREATE TABLE
// IF NOT EXISTS leaves a table that exists as it was.
func migrate(ctx context.Context, tx *sql.Tx, v int) error {
	if v != 2 {
		return nil // version 1 had no results tables; 0 is a new file
	}
	var has int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM pragma_table_info('scripts') WHERE name = 'updated'`).Scan(&has); err != nil {
		return err
	}
	if has > 0 {
		return nil
	}
	// Until then logs were pruned by their creation.
	_, err := tx.ExecContext(ctx, `ALTER TABLE scripts ADD COLUMN updated INTEGER NOT NULL DEFAULT 0;
		UPDATE scripts SET updated = created;
		ALTER TABLE rejected_results ADD COLUMN time INTEGER NOT NULL DEFAULT 0`)
	return err
}

// queryIndexes are the indexes only queries (and pruning) use: folds and
// commits look rows up by their keys. A replay builds them once it has caught up
// (DeferQueryIndexes, BuildQueryIndexes), which is quicker than keeping
// them up to date row by row.
var queryIndexes = []struct{ name, on string }{
	{"rows_by_group", "rows (tbl, grp, key)"},
	{"scripts_by_server", "scripts (server, seq)"},
	{"scripts_by_server_state", "scripts (server, state, seq)"},
	{"scripts_by_state", "scripts (state, seq)"},
	{"scripts_by_backend", "scripts (backend, seq)"},
	{"scripts_by_unit", "scripts (unit, seq)"},
	{"scripts_by_created", "scripts (created)"},
	{"scripts_by_updated", "scripts (updated)"},
	{"operations_by_script", "operations (script)"},
	{"operations_by_time", "operations (time)"},
	{"units_by_planned", "units (planned)"},
}

// DeferQueryIndexes drops the indexes only queries use, for a replay into
// this file; BuildQueryIndexes makes them again.
func (db *DB) DeferQueryIndexes(ctx context.Context) error {
	return db.write(ctx, func(tx *sql.Tx) error {
		for _, ix := range queryIndexes {
			if _, err := tx.ExecContext(ctx, "DROP INDEX IF EXISTS "+ix.name); err != nil {
				return fmt.Errorf("drop index %s: %w", ix.name, err)
			}
		}
		return nil
	})
}

// BuildQueryIndexes makes the indexes only queries use, those missing.
func (db *DB) BuildQueryIndexes(ctx context.Context) error {
	return db.write(ctx, func(tx *sql.Tx) error { return buildQueryIndexes(ctx, tx) })
}

func buildQueryIndexes(ctx context.Context, tx *sql.Tx) error {
	for _, ix := range queryIndexes {
		// Names and columns are constants.
		if _, err := tx.ExecContext(ctx, "CREATE INDEX IF NOT EXISTS "+ix.name+" ON "+ix.on); err != nil {
			return fmt.Errorf("create index %s: %w", ix.name, err)
		}
	}
	return nil
}

// writerCacheKiB is the page cache of the writer connection. The writer's
// cache stays valid from one commit to the next (no other connection
// writes), so it pays to hold the working set of the read model: with
// SQLite's default of 2 MiB a 500-row commit over a few MB of rows reads
// pages back from the file and takes about half again as long. Readers keep
// the default: every commit invalidates their caches anyway.
const writerCacheKiB = 32 << 10

// busyTimeout is how long a connection waits for another process's write
// lock before failing with SQLITE_BUSY.
const busyTimeout = 5000 // ms

// DB is an open read-model file. It is safe for concurrent use.
type DB struct {
	sql *sql.DB
	// writer is a one-slot semaphore held by every write transaction and by
	// Close; its holder owns w. See Open.
	writer chan struct{}
	// w is the connection writes run on, taken from sql when first needed
	// and kept; nil until then, after Close, or after it broke.
	w *sql.Conn
	// The statements of a commit, prepared once: a transaction reuses what
	// a connection has prepared before (sql.Tx.StmtContext), so a commit
	// parses no SQL.
	upsert, del, getCP, setCP *sql.Stmt
	// The results read models' statements (results.go).
	res resultStmts
}

// Open opens the SQLite file at path, creating it (0600) and its directory
// (0700) if they do not exist, and brings its schema up to date.
//
// Connections: one *sql.DB whose connections all carry the same pragmas
// (WAL, synchronous=NORMAL, busy_timeout, foreign_keys). In WAL mode readers
// never block the writer nor it them, so reads (Get, List, Checkpoint,
// Lookup: single statements, no transaction) run on any free connection
// while a commit is open. Writers are another matter: SQLite allows one,
// and two deferred transactions that both upgrade to writing can fail with
// SQLITE_BUSY at once, without waiting. So writes are serialized here, on
// one connection: every write transaction holds DB.writer (one slot,
// waited for with the caller's context) and runs on DB.w, a connection
// pinned out of the pool. Its transactions begin IMMEDIATE (_txlock),
// taking the file's write lock up front, so a writer in another process is
// waited for by busy_timeout rather than failing midway. Pinning also keeps
// the writer's page cache warm: SQLite drops a connection's cache when
// another connection has written, so writes that wandered over the pool
// would each start cold; and the writer's cache is the larger one (see
// writerCacheKiB). The pool holds the writer plus GOMAXPROCS (at least 4)
// readers; idle readers are kept rather than reopened.
func Open(path string) (*DB, error) {
	if path == "" {
		return nil, errors.New("sqlite: open: empty path")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o700); err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	// Create the file ourselves so that it is private: SQLite would create
	// it 0644, and gives its -wal and -shm files the database file's mode.
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}

	sdb, err := sql.Open("sqlite", dsn(abs))
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	conns := 1 + max(4, runtime.GOMAXPROCS(0)) // the writer and the readers
	sdb.SetMaxOpenConns(conns)
	sdb.SetMaxIdleConns(conns)
	sdb.SetConnMaxLifetime(0)
	sdb.SetConnMaxIdleTime(0)

	db := &DB{sql: sdb, writer: make(chan struct{}, 1)}
	if err := db.init(context.Background()); err != nil {
		return nil, errors.Join(fmt.Errorf("sqlite: open %s: %w", path, err), db.Close())
	}
	for _, st := range []struct {
		dst   **sql.Stmt
		query string
	}{{&db.upsert, upsertRow}, {&db.del, deleteRow}, {&db.getCP, selectCheckpoint}, {&db.setCP, upsertCheckpoint},
		{&db.res.selScript, selectScript}, {&db.res.selUnit, selectUnit}, {&db.res.selServer, selectServer},
		{&db.res.upScript, upsertScript}, {&db.res.upUnit, upsertUnit}, {&db.res.upServer, upsertServer}, {&db.res.insOp, insertOperation}} {
		if *st.dst, err = sdb.Prepare(st.query); err != nil {
			return nil, errors.Join(fmt.Errorf("sqlite: open %s: prepare: %w", path, err), db.Close())
		}
	}
	return db, nil
}

// dsn is the driver's name for the file at abs: a file: URI, so that any
// '?' or '#' in the path is escaped, with the pragmas every connection runs.
func dsn(abs string) string {
	q := url.Values{}
	q.Set("_txlock", "immediate")
	q.Set("_busy_timeout", strconv.Itoa(busyTimeout))
	q.Set("_journal_mode", "WAL")
	q.Set("_synchronous", "NORMAL")
	q.Set("_foreign_keys", "on")
	u := url.URL{Scheme: "file", Path: filepath.ToSlash(abs), RawQuery: q.Encode()}
	return u.String()
}

// init checks the journal mode and creates or checks the schema.
func (db *DB) init(ctx context.Context) error {
	var mode string
	if err := db.sql.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return err
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("journal mode is %q, want wal", mode)
	}
	return db.write(ctx, func(tx *sql.Tx) error {
		var v int
		if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
			return fmt.Errorf("schema version: %w", err)
		}
		if v > schemaVersion {
			return fmt.Errorf("schema version %d is newer than this build's %d", v, schemaVersion)
		}
		if _, err := tx.ExecContext(ctx, schema+resultsSchema); err != nil {
			return fmt.Errorf("create schema: %w", err)
		}
		if err := migrate(ctx, tx, v); err != nil {
			return fmt.Errorf("migrate from schema version %d: %w", v, err)
		}
		if err := buildQueryIndexes(ctx, tx); err != nil {
			return err
		}
		if v == schemaVersion {
			return nil
		}
		// PRAGMA takes no parameters; schemaVersion is a constant.
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", schemaVersion)); err != nil {
			return fmt.Errorf("set schema version: %w", err)
		}
		return nil
	})
}

// Close waits for a write in flight to end, then closes every connection.
// Reads in flight may fail.
func (db *DB) Close() error {
	db.writer <- struct{}{}
	defer func() { <-db.writer }()
	var errs []error
	for _, st := range []*sql.Stmt{db.upsert, db.del, db.getCP, db.setCP, db.res.selScript, db.res.selUnit, db.res.selServer,
		db.res.upScript, db.res.upUnit, db.res.upServer, db.res.insOp} {
		if st != nil {
			errs = append(errs, st.Close())
		}
	}
	if db.w != nil {
		errs = append(errs, db.w.Close())
		db.w = nil
	}
	return errors.Join(append(errs, db.sql.Close())...)
}

// write runs fn in a write transaction on the writer connection, committed
// if fn returns nil and rolled back otherwise. It waits for the writer slot
// with ctx.
func (db *DB) write(ctx context.Context, fn func(*sql.Tx) error) (err error) {
	select {
	case db.writer <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-db.writer }()
	if db.w == nil {
		if db.w, err = writerConn(ctx, db.sql); err != nil {
			return fmt.Errorf("writer connection: %w", err)
		}
	}
	defer func() {
		// database/sql retires a connection the driver called bad; the
		// next write takes a new one.
		if errors.Is(err, sql.ErrConnDone) || errors.Is(err, driver.ErrBadConn) {
			_ = db.w.Close() // the connection is gone; only ErrConnDone to say
			db.w = nil
		}
	}()
	tx, err := db.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if err := fn(tx); err != nil {
		// The rollback's own error adds nothing: the transaction is
		// abandoned either way, and SQLite rolls back a failed commit.
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// writerConn takes the writer connection out of the pool and sizes its cache.
func writerConn(ctx context.Context, sdb *sql.DB) (*sql.Conn, error) {
	c, err := sdb.Conn(ctx)
	if err != nil {
		return nil, err
	}
	// PRAGMA takes no parameters; writerCacheKiB is a constant.
	if _, err := c.ExecContext(ctx, fmt.Sprintf("PRAGMA cache_size = -%d", writerCacheKiB)); err != nil {
		return nil, errors.Join(err, c.Close())
	}
	return c, nil
}

// int64Of converts a sequence to SQLite's signed 64-bit integer.
func int64Of(what string, v uint64) (int64, error) {
	if v > math.MaxInt64 {
		return 0, fmt.Errorf("%s %d is beyond SQLite's integer range", what, v)
	}
	return int64(v), nil
}
