package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/orchestra-fleet/orchestra/projections"
)

var (
	_ projections.ResultsStore  = (*DB)(nil)
	_ projections.ResultsReader = (*DB)(nil)
)

// resultsSchema holds the results read models (projections.FoldResult).
// Script logs are keyed by their first sequence, so that listings, newest
// first, walk the table's own order; the columns a filter uses are
// indexed (queryIndexes); the text and output come last, so a listing
// never reads them.
const resultsSchema = `
CREATE TABLE IF NOT EXISTS scripts (
	seq     INTEGER PRIMARY KEY,
	id      TEXT    NOT NULL UNIQUE,
	server  TEXT    NOT NULL,
	backend TEXT    NOT NULL,
	unit    TEXT    NOT NULL,
	state   TEXT    NOT NULL,
	created INTEGER NOT NULL, -- unix nanoseconds
	updated INTEGER NOT NULL, -- unix nanoseconds: when RESULTS stored its latest result
	entry   BLOB    NOT NULL, -- projections.ScriptEntry, JSON
	script  TEXT    NOT NULL,
	stdout  BLOB    NOT NULL,
	stderr  BLOB    NOT NULL
);

CREATE TABLE IF NOT EXISTS operations (
	type    TEXT    NOT NULL,
	name    TEXT    NOT NULL,
	seq     INTEGER NOT NULL,
	idx     INTEGER NOT NULL, -- position in its record
	doc     BLOB    NOT NULL, -- projections.ResourceOp, JSON
	script  TEXT    NOT NULL, -- '' for a dropped operation
	time    INTEGER NOT NULL, -- unix nanoseconds
	PRIMARY KEY (type, name, seq, idx)
);

CREATE TABLE IF NOT EXISTS units (
	id      TEXT    PRIMARY KEY,
	planned INTEGER NOT NULL, -- unix nanoseconds
	doc     BLOB    NOT NULL  -- projections.UnitLog, JSON
);

CREATE TABLE IF NOT EXISTS rejected_results ( -- messages on RESULTS that are not well-formed results
	seq     INTEGER PRIMARY KEY,
	subject TEXT    NOT NULL,
	reason  TEXT    NOT NULL,
	time    INTEGER NOT NULL -- unix nanoseconds: when RESULTS stored it
);

CREATE TABLE IF NOT EXISTS server_status (
	name TEXT PRIMARY KEY,
	doc  BLOB NOT NULL -- projections.ServerStatus, JSON
);
`

// CommitResults implements projections.ResultsStore.
func (db *DB) CommitResults(ctx context.Context, seq uint64, batch []projections.ResultEnvelope) error {
	seq64, err := int64Of("sequence", seq)
	if err != nil {
		return err
	}
	err = db.write(ctx, func(tx *sql.Tx) error {
		cur, err := checkpoint(ctx, tx.StmtContext(ctx, db.getCP), projections.ResultsName)
		if err != nil {
			return fmt.Errorf("read checkpoint: %w", err)
		}
		if seq <= cur {
			return fmt.Errorf("refused: the checkpoint is already at %d, so these results were committed before", cur)
		}
		w := newWorking(ctx, tx, db.res)
		for _, e := range batch {
			if e.Sequence <= cur {
				continue
			}
			reject := e.Err
			if reject == nil {
				err := projections.FoldResult(w, e)
				if err != nil && !errors.Is(err, projections.ErrRejected) {
					return &projections.EventError{Seq: e.Sequence, Err: fmt.Errorf("%s: %w", e.Subject, err)}
				}
				reject = err
			}
			if reject != nil {
				if _, err := tx.ExecContext(ctx, `INSERT OR REPLACE INTO rejected_results (seq, subject, reason, time) VALUES (?, ?, ?, ?)`,
					int64(e.Sequence), e.Subject, reject.Error(), e.Time.UnixNano()); err != nil {
					return fmt.Errorf("record the rejected result at %d: %w", e.Sequence, err)
				}
			}
		}
		if err := w.save(); err != nil {
			return err
		}
		if _, err := tx.StmtContext(ctx, db.setCP).ExecContext(ctx, projections.ResultsName, seq64); err != nil {
			return fmt.Errorf("write checkpoint: %w", err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("commit %s at %d: %w", projections.ResultsName, seq, err)
	}
	return nil
}

// working is a transaction's working set of the results read models: what
// the fold read, and what it changed, written by save.
type working struct {
	ctx     context.Context
	st      resultStmts                          // bound to the transaction
	scripts map[uuid.UUID]*projections.ScriptLog // nil: not in the store
	units   map[uuid.UUID]*projections.UnitLog
	servers map[string]*projections.ServerStatus
	dirty   struct { // what save writes
		scripts map[uuid.UUID]bool
		units   map[uuid.UUID]bool
		servers map[string]bool
	}
	ops []indexedOp
}

// indexedOp is an operation with its position in its record.
type indexedOp struct {
	idx int
	projections.ResourceOpOf
}

func newWorking(ctx context.Context, tx *sql.Tx, st resultStmts) *working {
	for _, s := range []**sql.Stmt{&st.selScript, &st.selUnit, &st.selServer, &st.upScript, &st.upUnit, &st.upServer, &st.insOp} {
		*s = tx.StmtContext(ctx, *s)
	}
	w := &working{ctx: ctx, st: st, scripts: map[uuid.UUID]*projections.ScriptLog{},
		units: map[uuid.UUID]*projections.UnitLog{}, servers: map[string]*projections.ServerStatus{}}
	w.dirty.scripts, w.dirty.units, w.dirty.servers = map[uuid.UUID]bool{}, map[uuid.UUID]bool{}, map[string]bool{}
	return w
}

func (w *working) Script(id uuid.UUID) (*projections.ScriptLog, error) {
	if l, ok := w.scripts[id]; ok {
		return l, nil
	}
	l, err := scanScript(w.st.selScript.QueryRowContext(w.ctx, id.String()))
	if errors.Is(err, projections.ErrNotFound) {
		w.scripts[id] = nil
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("script %s: %w", id, err)
	}
	w.scripts[id] = &l
	return &l, nil
}

func (w *working) Unit(id uuid.UUID) (*projections.UnitLog, error) {
	if u, ok := w.units[id]; ok {
		return u, nil
	}
	var u projections.UnitLog
	err := getDoc(w.st.selUnit.QueryRowContext(w.ctx, id.String()), &u)
	if errors.Is(err, projections.ErrNotFound) {
		w.units[id] = nil
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("unit %s: %w", id, err)
	}
	w.units[id] = &u
	return &u, nil
}

func (w *working) Server(name string) (*projections.ServerStatus, error) {
	if s, ok := w.servers[name]; ok {
		return s, nil
	}
	var s projections.ServerStatus
	err := getDoc(w.st.selServer.QueryRowContext(w.ctx, name), &s)
	if errors.Is(err, projections.ErrNotFound) {
		w.servers[name] = nil
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("server %s: %w", name, err)
	}
	w.servers[name] = &s
	return &s, nil
}

// The Put methods keep what they are given in the working set, where the
// next Script, Unit or Server finds it, and mark it for save.

func (w *working) PutScript(l *projections.ScriptLog) {
	w.scripts[l.ID] = l
	w.dirty.scripts[l.ID] = true
}

func (w *working) PutUnit(u *projections.UnitLog) { w.units[u.Unit] = u; w.dirty.units[u.Unit] = true }

func (w *working) PutServer(s *projections.ServerStatus) {
	w.servers[s.Name] = s
	w.dirty.servers[s.Name] = true
}

func (w *working) AddOperations(ops []projections.ResourceOpOf) {
	for i, op := range ops {
		w.ops = append(w.ops, indexedOp{i, op})
	}
}

// resultStmts are the statements of a results commit, prepared once.
type resultStmts struct {
	selScript, selUnit, selServer, upScript, upUnit, upServer, insOp *sql.Stmt
}

const (
	selectUnit   = `SELECT doc FROM units WHERE id = ?`
	selectServer = `SELECT doc FROM server_status WHERE name = ?`
	upsertUnit   = `INSERT INTO units (id, planned, doc) VALUES (?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET planned = excluded.planned, doc = excluded.doc`
	upsertServer = `INSERT INTO server_status (name, doc) VALUES (?, ?)
		ON CONFLICT (name) DO UPDATE SET doc = excluded.doc`
	insertOperation = `INSERT OR REPLACE INTO operations (type, name, seq, idx, script, time, doc) VALUES (?, ?, ?, ?, ?, ?, ?)`
	selectScript    = `SELECT entry, script, stdout, stderr, updated FROM scripts WHERE id = ?`
	upsertScript    = `INSERT INTO scripts (seq, id, server, backend, unit, state, created, updated, entry, script, stdout, stderr)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (seq) DO UPDATE SET server = excluded.server, backend = excluded.backend, unit = excluded.unit,
			state = excluded.state, created = excluded.created, updated = excluded.updated, entry = excluded.entry,
			script = excluded.script, stdout = excluded.stdout, stderr = excluded.stderr`
)

// save writes what the fold changed.
func (w *working) save() error {
	for id := range w.dirty.scripts {
		l := w.scripts[id]
		entry, err := json.Marshal(l.ScriptEntry)
		if err != nil {
			return fmt.Errorf("script %s: %w", l.ID, err)
		}
		if _, err := w.st.upScript.ExecContext(w.ctx, int64(l.Seq), l.ID.String(), l.Server, l.Backend, l.Unit.String(), l.State,
			l.Created.UnixNano(), l.Updated.UnixNano(), entry, l.Script, []byte(l.Stdout), []byte(l.Stderr)); err != nil {
			return fmt.Errorf("write script %s: %w", l.ID, err)
		}
	}
	for id := range w.dirty.units {
		u := w.units[id]
		if err := putDoc(w.ctx, w.st.upUnit, u, u.Unit.String(), u.Planned.UnixNano()); err != nil {
			return fmt.Errorf("write unit %s: %w", u.Unit, err)
		}
	}
	for name := range w.dirty.servers {
		s := w.servers[name]
		if err := putDoc(w.ctx, w.st.upServer, s, s.Name); err != nil {
			return fmt.Errorf("write server %s: %w", s.Name, err)
		}
	}
	for _, op := range w.ops {
		script := ""
		if op.Script != uuid.Nil {
			script = op.Script.String()
		}
		if err := putDoc(w.ctx, w.st.insOp, op.ResourceOp, op.Type, op.Name, int64(op.Sequence), op.idx, script, op.Time.UnixNano()); err != nil {
			return fmt.Errorf("write an operation on %s/%s: %w", op.Type, op.Name, err)
		}
	}
	return nil
}

// putDoc runs st with args and v, as JSON, last.
func putDoc(ctx context.Context, st *sql.Stmt, v any, args ...any) error {
	doc, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = st.ExecContext(ctx, append(args, doc)...)
	return err
}

// getDoc decodes the one JSON column row holds into v; no row is
// projections.ErrNotFound.
func getDoc(row *sql.Row, v any) error {
	var doc []byte
	if err := row.Scan(&doc); errors.Is(err, sql.ErrNoRows) {
		return projections.ErrNotFound
	} else if err != nil {
		return err
	}
	return json.Unmarshal(doc, v)
}

func scanScript(row *sql.Row) (projections.ScriptLog, error) {
	var (
		l              projections.ScriptLog
		entry          []byte
		stdout, stderr []byte
	)
	var updated int64
	if err := row.Scan(&entry, &l.Script, &stdout, &stderr, &updated); errors.Is(err, sql.ErrNoRows) {
		return l, projections.ErrNotFound
	} else if err != nil {
		return l, err
	}
	if err := json.Unmarshal(entry, &l.ScriptEntry); err != nil {
		return l, err
	}
	l.Stdout, l.Stderr, l.Updated = string(stdout), string(stderr), time.Unix(0, updated).UTC()
	return l, nil
}

// Script implements projections.ResultsReader.
func (db *DB) Script(ctx context.Context, id uuid.UUID) (projections.ScriptLog, error) {
	l, err := scanScript(db.res.selScript.QueryRowContext(ctx, id.String()))
	if err != nil {
		return l, fmt.Errorf("script %s: %w", id, err)
	}
	return l, nil
}

// Scripts implements projections.ResultsReader: newest first, at most
// f.Limit (DefaultListLimit if not positive).
func (db *DB) Scripts(ctx context.Context, f projections.ScriptFilter) ([]projections.EntryDoc, error) {
	var (
		where []string
		args  []any
	)
	cond := func(c string, a ...any) { where, args = append(where, c), append(args, a...) }
	if f.Server != "" {
		cond("server = ?", f.Server)
	}
	if f.Backend != "" {
		cond("backend = ?", f.Backend)
	}
	if f.State != "" {
		cond("state = ?", f.State)
	}
	if f.Unit != uuid.Nil {
		cond("unit = ?", f.Unit.String())
	}
	if f.Type != "" {
		if f.Name != "" {
			cond("id IN (SELECT script FROM operations WHERE type = ? AND name = ?)", f.Type, f.Name)
		} else {
			cond("id IN (SELECT script FROM operations WHERE type = ?)", f.Type)
		}
	}
	if !f.Since.IsZero() {
		cond("created >= ?", f.Since.UnixNano())
	}
	if !f.Until.IsZero() {
		cond("created < ?", f.Until.UnixNano())
	}
	if f.Before > 0 {
		before, err := int64Of("cursor", f.Before)
		if err != nil {
			return nil, err
		}
		cond("seq < ?", before)
	}
	limit := f.Limit
	if limit <= 0 {
		limit = DefaultListLimit
	}
	// The page's keys first, from the indexes alone where they hold the
	// filtered columns (every index holds seq, the table's key), then
	// the rows of those keys: a filter that matches thousands of rows
	// (an hour of logs) sorts their keys, not the rows.
	q := "SELECT seq FROM scripts"
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q = "SELECT seq, entry FROM scripts WHERE seq IN (" + q + " ORDER BY seq DESC LIMIT ?) ORDER BY seq DESC"
	rs, err := db.sql.QueryContext(ctx, q, append(args, limit)...)
	if err != nil {
		return nil, fmt.Errorf("list scripts: %w", err)
	}
	defer rs.Close()
	out := make([]projections.EntryDoc, 0, min(limit, 64))
	for rs.Next() {
		var (
			d   projections.EntryDoc
			seq int64
		)
		if err := rs.Scan(&seq, (*[]byte)(&d.Entry)); err != nil {
			return nil, fmt.Errorf("list scripts: %w", err)
		}
		d.Seq = uint64(seq)
		out = append(out, d)
	}
	if err := rs.Err(); err != nil {
		return nil, fmt.Errorf("list scripts: %w", err)
	}
	return out, nil
}

// Unit implements projections.ResultsReader.
func (db *DB) Unit(ctx context.Context, id uuid.UUID) (projections.UnitLog, error) {
	var u projections.UnitLog
	if err := getDoc(db.res.selUnit.QueryRowContext(ctx, id.String()), &u); err != nil {
		return u, fmt.Errorf("unit %s: %w", id, err)
	}
	return u, nil
}

// ServerStatus implements projections.ResultsReader.
func (db *DB) ServerStatus(ctx context.Context, name string) (projections.ServerStatus, error) {
	var s projections.ServerStatus
	if err := getDoc(db.res.selServer.QueryRowContext(ctx, name), &s); err != nil {
		return s, fmt.Errorf("server %s: %w", name, err)
	}
	return s, nil
}

// ServerStatuses implements projections.ResultsReader.
func (db *DB) ServerStatuses(ctx context.Context) ([]projections.ServerStatus, error) {
	rs, err := db.sql.QueryContext(ctx, `SELECT doc FROM server_status ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("servers' status: %w", err)
	}
	defer rs.Close()
	out := []projections.ServerStatus{}
	for rs.Next() {
		var doc []byte
		var st projections.ServerStatus
		if err := rs.Scan(&doc); err != nil {
			return nil, fmt.Errorf("servers' status: %w", err)
		}
		if err := json.Unmarshal(doc, &st); err != nil {
			return nil, fmt.Errorf("servers' status: %w", err)
		}
		out = append(out, st)
	}
	if err := rs.Err(); err != nil {
		return nil, fmt.Errorf("servers' status: %w", err)
	}
	return out, nil
}

// History implements projections.ResultsReader: the operations on one
// resource, newest first, each with its script's state now.
func (db *DB) History(ctx context.Context, typ, name string, after projections.HistoryCursor, limit int) ([]projections.ResourceOp, error) {
	if limit <= 0 {
		limit = DefaultListLimit
	}
	seq, err := int64Of("cursor", after.Seq)
	if err != nil {
		return nil, err
	}
	if after.Seq == 0 {
		seq, after.Index = math.MaxInt64, -1
	}
	rs, err := db.sql.QueryContext(ctx, `SELECT o.idx, o.doc, s.state, s.entry FROM operations o LEFT JOIN scripts s ON s.id = o.script AND o.script != ''
		WHERE o.type = ? AND o.name = ? AND (o.seq < ? OR o.seq = ? AND o.idx > ?) ORDER BY o.seq DESC, o.idx LIMIT ?`,
		typ, name, seq, seq, after.Index, limit)
	if err != nil {
		return nil, fmt.Errorf("history of %s/%s: %w", typ, name, err)
	}
	defer rs.Close()
	var out []projections.ResourceOp
	for rs.Next() {
		var (
			doc, entry []byte
			state      sql.NullString
			op         projections.ResourceOp
		)
		var idx int
		if err := rs.Scan(&idx, &doc, &state, &entry); err != nil {
			return nil, fmt.Errorf("history of %s/%s: %w", typ, name, err)
		}
		if err := json.Unmarshal(doc, &op); err != nil {
			return nil, fmt.Errorf("history of %s/%s: %w", typ, name, err)
		}
		op.Index = idx
		if state.Valid {
			op.State = state.String
			var e projections.ScriptEntry
			if json.Unmarshal(entry, &e) == nil {
				op.Reason = e.Reason
			}
		}
		out = append(out, op)
	}
	if err := rs.Err(); err != nil {
		return nil, fmt.Errorf("history of %s/%s: %w", typ, name, err)
	}
	return out, nil
}

// PruneResults drops the results read models' records older than before,
// as RESULTS drops its messages: script logs whose latest result was
// stored before it, with their operations, and units (with their dropped
// operations) planned before it.
// It returns how many script logs it dropped.
func (db *DB) PruneResults(ctx context.Context, before time.Time) (int64, error) {
	var n int64
	err := db.write(ctx, func(tx *sql.Tx) error {
		t := before.UnixNano()
		// A script's log goes with the last result about it; its
		// operations with it; a dropped operation with its unit's record.
		if _, err := tx.ExecContext(ctx, `DELETE FROM operations WHERE script IN (SELECT id FROM scripts WHERE updated < ?)`, t); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM scripts WHERE updated < ?`, t)
		if err != nil {
			return err
		}
		if n, err = res.RowsAffected(); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM operations WHERE script = '' AND time < ?`, t); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM rejected_results WHERE time < ?`, t); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `DELETE FROM units WHERE planned < ?`, t)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("prune results before %s: %w", before.Format(time.RFC3339), err)
	}
	return n, nil
}
