// Package projectionstest is the acceptance suite every projections.Store
// implementation must pass. Call Run from the implementation's tests with a
// factory that returns an empty store.
package projectionstest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/orchestra-fleet/orchestra/projections"
)

// Run runs the whole suite; open returns a fresh, empty store for each test.
//
// Beyond the Store interface's comments, the suite holds a store to these:
// keys are listed in bytewise order (Go's string order), documents come back
// byte for byte, a Query without a positive Limit still returns rows, and a
// single List never shows part of a commit.
func Run(t *testing.T, open func(t *testing.T) projections.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s projections.Store)
	}{
		{"EmptyCheckpointIsZero", testEmptyCheckpoint},
		{"CommitMovesCheckpointAndWritesRows", testCommit},
		{"CommitWithoutRowsMovesCheckpoint", testCommitNoRows},
		{"StaleCommitWritesNothing", testStale},
		{"DeleteRows", testDelete},
		{"UpsertReplacesDocVersionGroup", testUpsert},
		{"RowsApplyInOrder", testOrderWithinCommit},
		{"TablesAreSeparate", testTables},
		{"GetMissingIsNotFound", testNotFound},
		{"ListKeyOrderAndAfterCursor", testListOrder},
		{"ListGroupFilter", testListGroup},
		{"ListLimit", testListLimit},
		{"ListTableWithoutRows", testListEmpty},
		{"CheckpointsPerProjection", testPerProjection},
		{"LargeCommitAllVisible", testLarge},
		{"ReadersSeeWholeCommits", testAtomicReads},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.fn(t, open(t))
		})
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

// row is a written row of table "servers" unless table is given in key as
// "table/key".
func row(key, group string, version uint64, doc string) projections.Row {
	table := "servers"
	if tb, k, ok := strings.Cut(key, "/"); ok {
		table, key = tb, k
	}
	return projections.Row{Table: table, Key: key, Group: group, Version: version, Doc: json.RawMessage(doc)}
}

func deleted(key string) projections.Row {
	r := row(key, "", 0, "")
	r.Deleted = true
	r.Doc = nil
	return r
}

func doc(key string, version uint64) string {
	return fmt.Sprintf(`{"name":%q,"version":%d}`, key, version)
}

func commit(t *testing.T, s projections.Store, projection string, seq uint64, rows ...projections.Row) {
	t.Helper()
	if err := s.Commit(ctx(t), projection, seq, rows); err != nil {
		t.Fatalf("commit %s at %d (%d rows): %v", projection, seq, len(rows), err)
	}
}

func wantCheckpoint(t *testing.T, s projections.Store, projection string, want uint64) {
	t.Helper()
	got, err := s.Checkpoint(ctx(t), projection)
	if err != nil {
		t.Fatalf("checkpoint %s: %v", projection, err)
	}
	if got != want {
		t.Fatalf("checkpoint %s = %d, want %d", projection, got, want)
	}
}

func wantRow(t *testing.T, s projections.Store, want projections.Row) {
	t.Helper()
	got, err := s.Get(ctx(t), want.Table, want.Key)
	if err != nil {
		t.Fatalf("get %s/%s: %v", want.Table, want.Key, err)
	}
	sameRow(t, got, want)
}

func sameRow(t *testing.T, got, want projections.Row) {
	t.Helper()
	if got.Table != want.Table || got.Key != want.Key || got.Group != want.Group ||
		got.Version != want.Version || string(got.Doc) != string(want.Doc) || got.Deleted {
		t.Fatalf("row:\n got %s/%s group %q version %d deleted %t doc %s\nwant %s/%s group %q version %d doc %s",
			got.Table, got.Key, got.Group, got.Version, got.Deleted, got.Doc,
			want.Table, want.Key, want.Group, want.Version, want.Doc)
	}
}

func wantMissing(t *testing.T, s projections.Store, table, key string) {
	t.Helper()
	r, err := s.Get(ctx(t), table, key)
	if !errors.Is(err, projections.ErrNotFound) {
		t.Fatalf("get %s/%s = %+v, %v; want ErrNotFound", table, key, r, err)
	}
}

func list(t *testing.T, s projections.Store, q projections.Query) []projections.Row {
	t.Helper()
	rows, err := s.List(ctx(t), q)
	if err != nil {
		t.Fatalf("list %+v: %v", q, err)
	}
	return rows
}

func keys(rows []projections.Row) []string {
	out := make([]string, len(rows))
	for i, r := range rows {
		out[i] = r.Key
	}
	return out
}

// listAll pages through q with limit rows a page and returns every key.
func listAll(t *testing.T, s projections.Store, q projections.Query, limit int) []string {
	t.Helper()
	q.Limit = limit
	var all []string
	for page := 0; ; page++ {
		rows := list(t, s, q)
		if len(rows) > limit {
			t.Fatalf("page %d of %+v has %d rows, over the limit", page, q, len(rows))
		}
		for _, r := range rows {
			if r.Table != q.Table || (q.Group != "" && r.Group != q.Group) {
				t.Fatalf("list %+v returned %s/%s of group %q", q, r.Table, r.Key, r.Group)
			}
		}
		all = append(all, keys(rows)...)
		if len(rows) < limit {
			return all
		}
		q.After = rows[len(rows)-1].Key
	}
}

func testEmptyCheckpoint(t *testing.T, s projections.Store) {
	wantCheckpoint(t, s, "model", 0)
	wantCheckpoint(t, s, "", 0)
}

func testCommit(t *testing.T, s projections.Store) {
	a, b := row("web1", "", 3, doc("web1", 3)), row("backends/ssh", "", 5, doc("ssh", 5))
	commit(t, s, "model", 5, a, b)
	wantCheckpoint(t, s, "model", 5)
	wantRow(t, s, a)
	wantRow(t, s, b)
	c := row("web2", "", 9, doc("web2", 9))
	commit(t, s, "model", 9, c)
	wantCheckpoint(t, s, "model", 9)
	wantRow(t, s, a)
	wantRow(t, s, c)
}

func testCommitNoRows(t *testing.T, s projections.Store) {
	commit(t, s, "model", 4)
	wantCheckpoint(t, s, "model", 4)
	commit(t, s, "model", 7, nil...)
	wantCheckpoint(t, s, "model", 7)
	if rows := list(t, s, projections.Query{Table: "servers"}); len(rows) != 0 {
		t.Fatalf("commits without rows wrote %d rows", len(rows))
	}
}

func testStale(t *testing.T, s projections.Store) {
	a := row("web1", "g", 10, doc("web1", 10))
	commit(t, s, "model", 10, a)
	for _, seq := range []uint64{10, 9, 1, 0} {
		err := s.Commit(ctx(t), "model", seq, []projections.Row{
			row("web1", "other", seq, doc("stale", seq)), // an overwrite
			row("stale", "", seq, doc("stale", seq)),     // a new row
			deleted("backends/ssh"),
		})
		if err == nil {
			t.Fatalf("commit at %d after 10 succeeded; want it refused", seq)
		}
		wantCheckpoint(t, s, "model", 10)
		wantRow(t, s, a)
		wantMissing(t, s, "servers", "stale")
	}
	// A refused commit leaves the store usable.
	b := row("web2", "", 11, doc("web2", 11))
	commit(t, s, "model", 11, b)
	wantRow(t, s, b)
	wantCheckpoint(t, s, "model", 11)
}

func testDelete(t *testing.T, s projections.Store) {
	commit(t, s, "model", 1, row("a", "", 1, doc("a", 1)), row("b", "", 1, doc("b", 1)), row("c", "", 1, doc("c", 1)))
	commit(t, s, "model", 2, deleted("b"), deleted("never-written"), deleted("other-table/a"))
	wantMissing(t, s, "servers", "b")
	wantRow(t, s, row("a", "", 1, doc("a", 1)))
	if got := keys(list(t, s, projections.Query{Table: "servers"})); !slices.Equal(got, []string{"a", "c"}) {
		t.Fatalf("after delete, servers = %v, want [a c]", got)
	}
	wantCheckpoint(t, s, "model", 2)
	// A deleted key can be written again.
	again := row("b", "", 3, doc("b", 3))
	commit(t, s, "model", 3, again)
	wantRow(t, s, again)
}

func testUpsert(t *testing.T, s projections.Store) {
	commit(t, s, "model", 1, row("resources/db", "mysql", 1, doc("db", 1)))
	next := row("resources/db", "postgres", 2, `{"name":"db","engine":"postgres","replaced":true}`)
	commit(t, s, "model", 2, next)
	wantRow(t, s, next)
	if rows := list(t, s, projections.Query{Table: "resources", Group: "mysql"}); len(rows) != 0 {
		t.Fatalf("old group still lists %v", keys(rows))
	}
	rows := list(t, s, projections.Query{Table: "resources", Group: "postgres"})
	if len(rows) != 1 {
		t.Fatalf("new group lists %v, want [db]", keys(rows))
	}
	sameRow(t, rows[0], next)
	// The group may be cleared too.
	cleared := row("resources/db", "", 3, doc("db", 3))
	commit(t, s, "model", 3, cleared)
	wantRow(t, s, cleared)
}

func testOrderWithinCommit(t *testing.T, s projections.Store) {
	last := row("twice", "", 2, doc("twice", 2))
	back := row("back", "", 2, doc("back", 2))
	commit(t, s, "model", 2,
		row("twice", "", 1, doc("twice", 1)), last,
		row("gone", "", 1, doc("gone", 1)), deleted("gone"),
		row("back", "", 1, doc("back", 1)), deleted("back"), back,
	)
	wantRow(t, s, last)
	wantRow(t, s, back)
	wantMissing(t, s, "servers", "gone")
}

func testTables(t *testing.T, s projections.Store) {
	srv, be := row("servers/x", "", 1, doc("server x", 1)), row("backends/x", "", 1, doc("backend x", 1))
	commit(t, s, "model", 1, srv, be)
	wantRow(t, s, srv)
	wantRow(t, s, be)
	commit(t, s, "model", 2, deleted("servers/x"))
	wantMissing(t, s, "servers", "x")
	wantRow(t, s, be)
	if got := keys(list(t, s, projections.Query{Table: "backends"})); !slices.Equal(got, []string{"x"}) {
		t.Fatalf("backends = %v, want [x]", got)
	}
}

func testNotFound(t *testing.T, s projections.Store) {
	wantMissing(t, s, "servers", "web1")
	commit(t, s, "model", 1, row("web1", "", 1, doc("web1", 1)))
	wantMissing(t, s, "servers", "web2")
	wantMissing(t, s, "servers", "web")  // a prefix
	wantMissing(t, s, "servers", "WEB1") // keys are case-sensitive
	wantMissing(t, s, "backends", "web1")
	wantMissing(t, s, "", "")
}

func testListOrder(t *testing.T, s projections.Store) {
	want := []string{"a", "a-1", "a.b", "a/b", "aa", "b", "B", "web10", "web2", "z", "Ä", "ä", "日本", "0", "9", "~"}
	shuffled := slices.Clone(want)
	rand.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	rows := make([]projections.Row, len(shuffled))
	for i, k := range shuffled {
		rows[i] = row("servers/"+k, "", 1, doc(k, 1))
	}
	commit(t, s, "model", 1, rows...)
	slices.Sort(want)

	got := list(t, s, projections.Query{Table: "servers", Limit: 1000})
	if !slices.Equal(keys(got), want) {
		t.Fatalf("list = %q\nwant %q (bytewise order)", keys(got), want)
	}
	for _, r := range got {
		sameRow(t, r, row("servers/"+r.Key, "", 1, doc(r.Key, 1)))
	}
	for _, limit := range []int{1, 3, 5, len(want), len(want) + 1} {
		if got := listAll(t, s, projections.Query{Table: "servers"}, limit); !slices.Equal(got, want) {
			t.Fatalf("paging by %d = %q\nwant %q", limit, got, want)
		}
	}
	// After needs not be a key that exists; it is a position in the order.
	if got := keys(list(t, s, projections.Query{Table: "servers", After: "a.c", Limit: 2})); !slices.Equal(got, []string{"a/b", "aa"}) {
		t.Fatalf("after a.c = %q, want [a/b aa]", got)
	}
	if got := list(t, s, projections.Query{Table: "servers", After: want[len(want)-1]}); len(got) != 0 {
		t.Fatalf("after the last key: %q", keys(got))
	}
}

func testListGroup(t *testing.T, s projections.Store) {
	var rows []projections.Row
	var mysql, all []string
	for i := range 30 {
		k := fmt.Sprintf("res-%02d", i)
		g := []string{"mysql", "postgres", ""}[i%3]
		rows = append(rows, row("resources/"+k, g, uint64(i+1), doc(k, uint64(i+1))))
		all = append(all, k)
		if g == "mysql" {
			mysql = append(mysql, k)
		}
	}
	rows = append(rows, row("other/res-00", "mysql", 1, doc("other", 1)))
	commit(t, s, "model", 30, rows...)

	got := list(t, s, projections.Query{Table: "resources", Group: "mysql"})
	if !slices.Equal(keys(got), mysql) {
		t.Fatalf("group mysql = %q, want %q", keys(got), mysql)
	}
	for _, r := range got {
		if r.Group != "mysql" || r.Table != "resources" {
			t.Fatalf("group mysql listed %s/%s of group %q", r.Table, r.Key, r.Group)
		}
	}
	if got := listAll(t, s, projections.Query{Table: "resources", Group: "mysql"}, 4); !slices.Equal(got, mysql) {
		t.Fatalf("group mysql by 4 = %q, want %q", got, mysql)
	}
	if got := listAll(t, s, projections.Query{Table: "resources", Group: "mysql", After: mysql[2]}, 2); !slices.Equal(got, mysql[3:]) {
		t.Fatalf("group mysql after %s = %q, want %q", mysql[2], got, mysql[3:])
	}
	if got := listAll(t, s, projections.Query{Table: "resources"}, 7); !slices.Equal(got, all) {
		t.Fatalf("every group = %q, want %q", got, all)
	}
	if got := list(t, s, projections.Query{Table: "resources", Group: "oracle"}); len(got) != 0 {
		t.Fatalf("unknown group lists %q", keys(got))
	}
}

func testListLimit(t *testing.T, s projections.Store) {
	var rows []projections.Row
	var want []string
	for i := range 10 {
		k := fmt.Sprintf("k%d", i)
		rows = append(rows, row(k, "", 1, doc(k, 1)))
		want = append(want, k)
	}
	commit(t, s, "model", 1, rows...)
	for _, c := range []struct {
		name  string
		limit int
		want  []string
	}{
		{"one", 1, want[:1]},
		{"some", 4, want[:4]},
		{"exactly all", 10, want},
		{"more than all", 11, want},
		{"zero means a default", 0, want},
		{"negative means a default", -1, want},
	} {
		got := keys(list(t, s, projections.Query{Table: "servers", Limit: c.limit}))
		if !slices.Equal(got, c.want) {
			t.Errorf("%s (limit %d): %q, want %q", c.name, c.limit, got, c.want)
		}
	}
}

func testListEmpty(t *testing.T, s projections.Store) {
	for _, q := range []projections.Query{
		{Table: "servers"},
		{Table: "servers", Group: "g", After: "x", Limit: 5},
	} {
		if rows := list(t, s, q); len(rows) != 0 {
			t.Fatalf("empty store lists %q for %+v", keys(rows), q)
		}
	}
	commit(t, s, "model", 1, row("backends/b", "", 1, doc("b", 1)))
	if rows := list(t, s, projections.Query{Table: "servers"}); len(rows) != 0 {
		t.Fatalf("table without rows lists %q", keys(rows))
	}
	commit(t, s, "model", 2, deleted("backends/b"))
	if rows := list(t, s, projections.Query{Table: "backends"}); len(rows) != 0 {
		t.Fatalf("table whose rows were deleted lists %q", keys(rows))
	}
}

func testPerProjection(t *testing.T, s projections.Store) {
	commit(t, s, "model", 100, row("a", "", 100, doc("a", 100)))
	commit(t, s, "planner", 7, row("plans/p", "", 7, doc("p", 7)))
	wantCheckpoint(t, s, "model", 100)
	wantCheckpoint(t, s, "planner", 7)
	wantCheckpoint(t, s, "scriptlogs", 0)
	// planner is behind model; its own checkpoint is what counts.
	commit(t, s, "planner", 50, row("plans/q", "", 50, doc("q", 50)))
	wantCheckpoint(t, s, "planner", 50)
	wantCheckpoint(t, s, "model", 100)
	if err := s.Commit(ctx(t), "model", 50, nil); err == nil {
		t.Fatal("model commit at 50 after 100 succeeded; want it refused")
	}
	wantCheckpoint(t, s, "model", 100)
	// A name that is a prefix of another is a separate projection.
	commit(t, s, "plan", 1)
	wantCheckpoint(t, s, "plan", 1)
	wantCheckpoint(t, s, "planner", 50)
}

func testLarge(t *testing.T, s projections.Store) {
	const n = 2000
	rows := make([]projections.Row, n)
	want := make([]string, n)
	for i := range rows {
		k := fmt.Sprintf("srv-%05d", i)
		rows[i] = row(k, fmt.Sprint(i%7), uint64(i+1), doc(k, uint64(i+1)))
		want[i] = k
	}
	commit(t, s, "model", n, rows...)
	wantCheckpoint(t, s, "model", n)
	if got := listAll(t, s, projections.Query{Table: "servers"}, 500); !slices.Equal(got, want) {
		t.Fatalf("listed %d rows, want %d in order", len(got), n)
	}
	for _, i := range []int{0, 1, n / 2, n - 1} {
		wantRow(t, s, rows[i])
	}
	var groups int
	for g := range 7 {
		groups += len(listAll(t, s, projections.Query{Table: "servers", Group: fmt.Sprint(g)}, 100))
	}
	if groups != n {
		t.Fatalf("groups hold %d rows, want %d", groups, n)
	}
}

// testAtomicReads commits batches that rewrite every row at the batch's
// sequence while readers list them: every List must show one sequence.
func testAtomicReads(t *testing.T, s projections.Store) {
	const n, commits, readers = 50, 40, 3
	batch := func(seq uint64) []projections.Row {
		rows := make([]projections.Row, n)
		for i := range rows {
			k := fmt.Sprintf("k%02d", i)
			rows[i] = row(k, "", seq, doc(k, seq))
		}
		return rows
	}
	commit(t, s, "model", 1, batch(1)...)

	c := ctx(t)
	done := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, readers)
	for range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				rows, err := s.List(c, projections.Query{Table: "servers", Limit: n})
				if err == nil && len(rows) != n {
					err = fmt.Errorf("list during commits: %d rows, want %d", len(rows), n)
				}
				for _, r := range rows {
					if err == nil && r.Version != rows[0].Version {
						err = fmt.Errorf("one list shows versions %d and %d: a commit seen in part", rows[0].Version, r.Version)
					}
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for seq := uint64(2); seq <= commits; seq++ {
		if err := s.Commit(c, "model", seq, batch(seq)); err != nil {
			close(done)
			wg.Wait()
			t.Fatalf("commit at %d beside readers: %v", seq, err)
		}
	}
	close(done)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	wantCheckpoint(t, s, "model", commits)
}
