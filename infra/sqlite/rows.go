package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"

	"github.com/orchestra-fleet/orchestra/projections"
)

// DefaultListLimit is how many rows List returns for a Query without a
// positive Limit.
const DefaultListLimit = 100

const (
	upsertRow = `INSERT INTO rows (tbl, key, grp, version, doc) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (tbl, key) DO UPDATE SET grp = excluded.grp, version = excluded.version, doc = excluded.doc`
	deleteRow        = `DELETE FROM rows WHERE tbl = ? AND key = ?`
	selectCheckpoint = `SELECT seq FROM checkpoints WHERE projection = ?`
	upsertCheckpoint = `INSERT INTO checkpoints (projection, seq) VALUES (?, ?)
		ON CONFLICT (projection) DO UPDATE SET seq = excluded.seq`
)

// Checkpoint implements projections.Store.
func (db *DB) Checkpoint(ctx context.Context, projection string) (uint64, error) {
	seq, err := checkpoint(ctx, db.getCP, projection)
	if err != nil {
		return 0, fmt.Errorf("checkpoint %s: %w", projection, err)
	}
	return seq, nil
}

func checkpoint(ctx context.Context, q *sql.Stmt, projection string) (uint64, error) {
	var seq int64
	err := q.QueryRowContext(ctx, projection).Scan(&seq)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return uint64(seq), nil
}

// Commit implements projections.Store: in one transaction it writes or
// deletes rows in order and moves projection's checkpoint to seq. A seq at
// or below the checkpoint is refused and nothing is written. Rows are
// checked before the transaction begins: each needs a table and a key, and
// each written row a document.
func (db *DB) Commit(ctx context.Context, projection string, seq uint64, rows []projections.Row) error {
	if err := db.commit(ctx, projection, seq, rows); err != nil {
		return fmt.Errorf("commit %s at %d: %w", projection, seq, err)
	}
	return nil
}

func (db *DB) commit(ctx context.Context, projection string, seq uint64, rows []projections.Row) error {
	if projection == "" {
		return errors.New("empty projection name")
	}
	seq64, err := int64Of("sequence", seq)
	if err != nil {
		return err
	}
	for i, r := range rows {
		switch {
		case r.Table == "" || r.Key == "":
			return fmt.Errorf("rows[%d] (%q/%q): empty table or key", i, r.Table, r.Key)
		case !r.Deleted && len(r.Doc) == 0:
			return fmt.Errorf("rows[%d] (%s/%s): empty document", i, r.Table, r.Key)
		}
		if r.Version > math.MaxInt64 {
			return fmt.Errorf("rows[%d] (%s/%s): version %d is beyond SQLite's integer range", i, r.Table, r.Key, r.Version)
		}
	}
	return db.write(ctx, func(tx *sql.Tx) error {
		cur, err := checkpoint(ctx, tx.StmtContext(ctx, db.getCP), projection)
		if err != nil {
			return fmt.Errorf("read checkpoint: %w", err)
		}
		if seq <= cur {
			return fmt.Errorf("refused: the checkpoint is already at %d, so these rows were committed before", cur)
		}
		upsert, del := tx.StmtContext(ctx, db.upsert), tx.StmtContext(ctx, db.del)
		for _, r := range rows {
			if r.Deleted {
				if _, err := del.ExecContext(ctx, r.Table, r.Key); err != nil {
					return fmt.Errorf("delete %s/%s: %w", r.Table, r.Key, err)
				}
				continue
			}
			if _, err := upsert.ExecContext(ctx, r.Table, r.Key, r.Group, int64(r.Version), []byte(r.Doc)); err != nil {
				return fmt.Errorf("write %s/%s: %w", r.Table, r.Key, err)
			}
		}
		if _, err := tx.StmtContext(ctx, db.setCP).ExecContext(ctx, projection, seq64); err != nil {
			return fmt.Errorf("write checkpoint: %w", err)
		}
		return nil
	})
}

// Get implements projections.Store. A missing row is projections.ErrNotFound.
func (db *DB) Get(ctx context.Context, table, key string) (projections.Row, error) {
	r := projections.Row{Table: table, Key: key}
	var version int64
	err := db.sql.QueryRowContext(ctx, `SELECT grp, version, doc FROM rows WHERE tbl = ? AND key = ?`, table, key).
		Scan(&r.Group, &version, (*[]byte)(&r.Doc))
	if errors.Is(err, sql.ErrNoRows) {
		return projections.Row{}, fmt.Errorf("row %s/%s: %w", table, key, projections.ErrNotFound)
	}
	if err != nil {
		return projections.Row{}, fmt.Errorf("row %s/%s: %w", table, key, err)
	}
	r.Version = uint64(version)
	return r, nil
}

// List implements projections.Store: rows of q.Table (of q.Group only, if
// set) whose keys sort after q.After, in key order, at most q.Limit of them
// or DefaultListLimit. Keys compare bytewise, as Go compares strings.
func (db *DB) List(ctx context.Context, q projections.Query) ([]projections.Row, error) {
	limit := q.Limit
	if limit <= 0 {
		limit = DefaultListLimit
	}
	var (
		rs  *sql.Rows
		err error
	)
	if q.Group == "" {
		rs, err = db.sql.QueryContext(ctx,
			`SELECT key, grp, version, doc FROM rows WHERE tbl = ? AND key > ? ORDER BY key LIMIT ?`,
			q.Table, q.After, limit)
	} else {
		rs, err = db.sql.QueryContext(ctx,
			`SELECT key, grp, version, doc FROM rows WHERE tbl = ? AND grp = ? AND key > ? ORDER BY key LIMIT ?`,
			q.Table, q.Group, q.After, limit)
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", q.Table, err)
	}
	defer rs.Close()
	out := make([]projections.Row, 0, min(limit, 64))
	for rs.Next() {
		r := projections.Row{Table: q.Table}
		var version int64
		if err := rs.Scan(&r.Key, &r.Group, &version, (*[]byte)(&r.Doc)); err != nil {
			return nil, fmt.Errorf("list %s: %w", q.Table, err)
		}
		r.Version = uint64(version)
		out = append(out, r)
	}
	if err := rs.Err(); err != nil {
		return nil, fmt.Errorf("list %s: %w", q.Table, err)
	}
	return out, nil
}
