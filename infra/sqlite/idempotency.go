package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/orchestra-fleet/orchestra/gateway"
)

// Lookup implements gateway.IdempotencyStore: the response saved for
// (scope, key), unless it was created more than gateway.IdempotencyTTL ago.
func (db *DB) Lookup(ctx context.Context, scope, key string) (gateway.StoredResponse, bool, error) {
	cutoff := time.Now().Add(-gateway.IdempotencyTTL).UnixNano()
	var (
		r       gateway.StoredResponse
		header  string
		created int64
	)
	err := db.sql.QueryRowContext(ctx,
		`SELECT hash, status, header, body, created FROM idempotency WHERE scope = ? AND key = ? AND created >= ?`,
		scope, key, cutoff).Scan(&r.Hash, &r.Status, &header, &r.Body, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return gateway.StoredResponse{}, false, nil
	}
	if err != nil {
		return gateway.StoredResponse{}, false, fmt.Errorf("idempotency lookup %s/%s: %w", scope, key, err)
	}
	if err := json.Unmarshal([]byte(header), &r.Header); err != nil {
		return gateway.StoredResponse{}, false, fmt.Errorf("idempotency lookup %s/%s: header: %w", scope, key, err)
	}
	r.Created = time.Unix(0, created)
	return r, true, nil
}

// Save implements gateway.IdempotencyStore: it stores r for (scope, key)
// unless a response younger than gateway.IdempotencyTTL is stored there
// already (the first save wins), and in the same transaction drops every
// response older than the TTL. r.Created is the response's age (the zero
// time means now).
func (db *DB) Save(ctx context.Context, scope, key string, r gateway.StoredResponse) error {
	now := time.Now()
	created := r.Created
	if created.IsZero() {
		created = now
	}
	header, err := json.Marshal(r.Header)
	if err != nil {
		return fmt.Errorf("idempotency save %s/%s: header: %w", scope, key, err)
	}
	err = db.write(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM idempotency WHERE created < ?`,
			now.Add(-gateway.IdempotencyTTL).UnixNano()); err != nil {
			return fmt.Errorf("expire: %w", err)
		}
		_, err := tx.ExecContext(ctx,
			`INSERT OR IGNORE INTO idempotency (scope, key, hash, status, header, body, created) VALUES (?, ?, ?, ?, ?, ?, ?)`,
			scope, key, r.Hash, r.Status, string(header), r.Body, created.UnixNano())
		return err
	})
	if err != nil {
		return fmt.Errorf("idempotency save %s/%s: %w", scope, key, err)
	}
	return nil
}
