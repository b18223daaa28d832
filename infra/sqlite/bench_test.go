package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/orchestra-fleet/orchestra/infra/benchpair"
	"github.com/orchestra-fleet/orchestra/projections"
)

// BenchmarkCommit measures Commit of 500-row batches and, in the same run,
// interleaved in blocks so both see the same machine, the raw operation it
// stands on: the same rows written by INSERT OR REPLACE through one
// prepared statement in one transaction, with database/sql on a second file
// with the same schema, pragmas and cache size. It reports:
//
//	orchestra-ns/op, raw-ns/op  one batch
//	orchestra-rows/s, raw-rows/s
//	%raw                        Orchestra's throughput as a percentage of raw
//
// (ns/op counts both halves and is not meaningful on its own.) Both sides
// cycle over the same 10,000 keys, written once before timing starts, so
// every timed batch replaces rows as a projection mostly does. (Commit's
// upsert rewrites a row in place where INSERT OR REPLACE deletes and
// inserts it again, so %raw may well exceed 100.)
func BenchmarkCommit(b *testing.B) {
	const batchRows, keys = 500, 10000
	ctx := context.Background()
	dir := b.TempDir()

	db, err := Open(filepath.Join(dir, "orchestra.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	raw, err := sql.Open("sqlite", dsn(filepath.Join(dir, "raw.db")))
	if err != nil {
		b.Fatal(err)
	}
	defer raw.Close()
	raw.SetMaxOpenConns(1) // one connection, as Commit writes on one
	for _, stmt := range []string{schema, fmt.Sprintf("PRAGMA cache_size = -%d", writerCacheKiB)} {
		if _, err := raw.Exec(stmt); err != nil {
			b.Fatal(err)
		}
	}

	batches := make([][]projections.Row, keys/batchRows)
	for i := range batches {
		batches[i] = make([]projections.Row, batchRows)
		for j := range batchRows {
			k := fmt.Sprintf("srv-%05d", i*batchRows+j)
			batches[i][j] = projections.Row{
				Table: "servers", Key: k, Group: fmt.Sprint(j % 5), Version: uint64(i*batchRows + j + 1),
				Doc: json.RawMessage(fmt.Sprintf(`{"kind":"server","name":%q,"address":"%s.example.com","port":22,"method":"ssh","active":true,"labels":{"rack":"r%d"},"version":%d}`, k, k, j%40, i*batchRows+j+1)),
			}
		}
	}

	var seq uint64
	ours := func(rows []projections.Row) {
		seq++
		if err := db.Commit(ctx, "bench", seq, rows); err != nil {
			b.Fatal(err)
		}
	}
	rawCommit := func(rows []projections.Row) {
		tx, err := raw.BeginTx(ctx, nil)
		if err != nil {
			b.Fatal(err)
		}
		stmt, err := tx.PrepareContext(ctx, `INSERT OR REPLACE INTO rows (tbl, key, grp, version, doc) VALUES (?, ?, ?, ?, ?)`)
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range rows {
			if _, err := stmt.ExecContext(ctx, r.Table, r.Key, r.Group, int64(r.Version), []byte(r.Doc)); err != nil {
				b.Fatal(err)
			}
		}
		if err := tx.Commit(); err != nil {
			b.Fatal(err)
		}
	}
	for _, rows := range batches {
		rawCommit(rows)
		ours(rows)
	}

	var p benchpair.Pair
	rawNext, oursNext := 0, 0
	b.ResetTimer()
	p.Run(b, 4, func() {
		rawCommit(batches[rawNext%len(batches)])
		rawNext++
	}, func() {
		ours(batches[oursNext%len(batches)])
		oursNext++
	})
	rows := float64(b.N * batchRows)
	p.Report(b, b.N)
	b.ReportMetric(rows/p.Ours.Seconds(), "orchestra-rows/s")
	b.ReportMetric(rows/p.Raw.Seconds(), "raw-rows/s")
}
