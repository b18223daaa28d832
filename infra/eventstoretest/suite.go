// Package eventstoretest is the acceptance suite every services.EventStore
// implementation must pass. Call Run from the implementation's tests with a
// factory that returns a store over an empty log.
package eventstoretest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/services"
)

// Factory returns a store over a fresh, empty log, and the largest unit it
// accepts.
type Factory func(t *testing.T) (store services.EventStore, maxUnitEvents int)

// Run runs the whole suite.
func Run(t *testing.T, newStore Factory) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s services.EventStore, maxUnit int)
	}{
		{"AppendLoadRoundTrip", testRoundTrip},
		{"StaleExpectationConflictsAndWritesNothing", testStale},
		{"NewAggregateMustNotExist", testMustNotExist},
		{"MultiAggregateUnitIsAllOrNothing", testAllOrNothing},
		{"RetriedUnitIsAppliedOnce", testRetry},
		{"ReadReplaysInCommitOrder", testReadOrder},
		{"ConcurrentAppendersOneWinnerPerVersion", testConcurrent},
		{"LargestUnitCommitsAndLargerIsRefused", testUnitLimit},
		{"BadInputIsRefusedAndWritesNothing", testBadInput},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, maxUnit := newStore(t)
			tt.fn(t, s, maxUnit)
		})
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

func server(name string) events.Aggregate { return events.Aggregate{Type: events.AggServer, ID: name} }

func saved(name string, port int) *events.ServerSaved {
	return &events.ServerSaved{Server: events.Server{Name: name, Address: name, Port: port, Method: "ssh", Active: true}, Changed: []string{"port"}}
}

// unit builds a unit that saves each server once, expecting versions[i].
func unit(t *testing.T, names []string, versions []uint64) *services.Unit {
	t.Helper()
	u, err := services.NewUnit(events.Meta{Actor: "suite", CorrelationID: "corr-1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range names {
		u.Expect(server(n), versions[i])
		if err := u.Add(server(n), saved(n, 22+i)); err != nil {
			t.Fatal(err)
		}
	}
	return u
}

func mustAppend(t *testing.T, s services.EventStore, u *services.Unit) services.Appended {
	t.Helper()
	a, err := s.Append(ctx(t), u)
	if err != nil {
		t.Fatalf("append unit %s: %v", u.ID, err)
	}
	if a.Last-a.First+1 != uint64(u.Len()) {
		t.Fatalf("append unit of %d events: sequences %d…%d", u.Len(), a.First, a.Last)
	}
	return a
}

func readAll(t *testing.T, s services.EventStore, from uint64) []events.Envelope {
	t.Helper()
	var out []events.Envelope
	for e, err := range s.Read(ctx(t), from) {
		if err != nil {
			t.Fatalf("read from %d: %v", from, err)
		}
		out = append(out, e)
	}
	return out
}

func load(t *testing.T, s services.EventStore, agg events.Aggregate) services.History {
	t.Helper()
	h, err := s.Load(ctx(t), agg)
	if err != nil {
		t.Fatalf("load %s: %v", agg, err)
	}
	return h
}

func wantConflict(t *testing.T, err error, agg events.Aggregate, expected, actual uint64) {
	t.Helper()
	var c *services.ConflictError
	if !errors.As(err, &c) {
		t.Fatalf("want a conflict on %s, got %v", agg, err)
	}
	if c.Aggregate != agg || c.Expected != expected || c.Actual != actual {
		t.Fatalf("conflict = %+v, want %s expected %d actual %d", c, agg, expected, actual)
	}
	if services.ErrorCode(err) != services.ECONFLICT {
		t.Fatalf("ErrorCode = %q, want %q", services.ErrorCode(err), services.ECONFLICT)
	}
}

func testRoundTrip(t *testing.T, s services.EventStore, _ int) {
	if h := load(t, s, server("web1.example.com")); h.Version != 0 || len(h.Events) != 0 {
		t.Fatalf("unknown aggregate: %+v, want empty at version 0", h)
	}
	u1 := unit(t, []string{"web1.example.com"}, []uint64{0})
	a1 := mustAppend(t, s, u1)
	u2 := unit(t, []string{"web1.example.com"}, []uint64{a1.Last})
	a2 := mustAppend(t, s, u2)

	h := load(t, s, server("web1.example.com"))
	if h.Version != a2.Last || len(h.Events) != 2 {
		t.Fatalf("history: version %d with %d events, want %d with 2", h.Version, len(h.Events), a2.Last)
	}
	want := append(u1.Envelopes(), u2.Envelopes()...)
	for i, e := range h.Events {
		w := want[i]
		if e.ID != w.ID || e.Type != w.Type || e.Version != w.Version || e.Aggregate != w.Aggregate ||
			e.Unit != w.Unit || e.UnitIndex != w.UnitIndex || e.UnitSize != w.UnitSize ||
			e.Actor != "suite" || e.CorrelationID != "corr-1" || !e.Time.Equal(w.Time) || string(e.Payload) != string(w.Payload) {
			t.Fatalf("event %d:\n got %+v\nwant %+v", i, e, w)
		}
	}
	if h.Events[0].Sequence != a1.First || h.Events[1].Sequence != a2.First {
		t.Fatalf("sequences %d, %d; want %d, %d", h.Events[0].Sequence, h.Events[1].Sequence, a1.First, a2.First)
	}
	// Another aggregate whose name is a prefix must not leak into the history.
	mustAppend(t, s, unit(t, []string{"web1"}, []uint64{0}))
	if h := load(t, s, server("web1.example.com")); len(h.Events) != 2 {
		t.Fatalf("history of web1.example.com has %d events after writing web1", len(h.Events))
	}
}

func testStale(t *testing.T, s services.EventStore, _ int) {
	a1 := mustAppend(t, s, unit(t, []string{"db1"}, []uint64{0}))
	a2 := mustAppend(t, s, unit(t, []string{"db1"}, []uint64{a1.Last}))
	_, err := s.Append(ctx(t), unit(t, []string{"db1"}, []uint64{a1.Last}))
	wantConflict(t, err, server("db1"), a1.Last, a2.Last)
	if n := len(readAll(t, s, 1)); n != 2 {
		t.Fatalf("log has %d events after a stale append, want 2", n)
	}
	// A stale multi-event unit on one aggregate is refused as a whole too.
	u := unit(t, []string{"db1"}, []uint64{a1.Last})
	if err := u.Add(server("db1"), saved("db1", 2222)); err != nil {
		t.Fatal(err)
	}
	_, err = s.Append(ctx(t), u)
	wantConflict(t, err, server("db1"), a1.Last, a2.Last)
	if h := load(t, s, server("db1")); h.Version != a2.Last || len(h.Events) != 2 {
		t.Fatalf("history after stale unit: version %d, %d events", h.Version, len(h.Events))
	}
}

func testMustNotExist(t *testing.T, s services.EventStore, _ int) {
	a := mustAppend(t, s, unit(t, []string{"mail1"}, []uint64{0}))
	_, err := s.Append(ctx(t), unit(t, []string{"mail1"}, []uint64{0}))
	wantConflict(t, err, server("mail1"), 0, a.Last)
	// Expecting a version of an aggregate that does not exist is stale too.
	_, err = s.Append(ctx(t), unit(t, []string{"ghost"}, []uint64{a.Last}))
	wantConflict(t, err, server("ghost"), a.Last, 0)
}

func testAllOrNothing(t *testing.T, s services.EventStore, _ int) {
	a := mustAppend(t, s, unit(t, []string{"a", "b", "c"}, []uint64{0, 0, 0}))
	if a.Last-a.First != 2 {
		t.Fatalf("three-aggregate unit took sequences %d…%d", a.First, a.Last)
	}
	ha, hb, hc := load(t, s, server("a")).Version, load(t, s, server("b")).Version, load(t, s, server("c")).Version
	bump := mustAppend(t, s, unit(t, []string{"b"}, []uint64{hb}))

	// b is now stale in this unit; a and c are current.
	_, err := s.Append(ctx(t), unit(t, []string{"a", "b", "c"}, []uint64{ha, hb, hc}))
	wantConflict(t, err, server("b"), hb, bump.Last)
	for name, v := range map[string]uint64{"a": ha, "b": bump.Last, "c": hc} {
		if h := load(t, s, server(name)); h.Version != v {
			t.Fatalf("%s moved to %d after a refused unit, want %d", name, h.Version, v)
		}
	}
	if n := len(readAll(t, s, 1)); n != 4 {
		t.Fatalf("log has %d events, want 4", n)
	}
}

func testRetry(t *testing.T, s services.EventStore, _ int) {
	for _, names := range [][]string{{"r1"}, {"r2", "r3", "r4"}} {
		versions := make([]uint64, len(names))
		u := unit(t, names, versions)
		first := mustAppend(t, s, u)
		again, err := s.Append(ctx(t), u)
		if err != nil {
			t.Fatalf("retry of unit %v: %v, want success", names, err)
		}
		if again != first {
			t.Fatalf("retry of unit %v landed at %+v, want %+v", names, again, first)
		}
	}
	// A retry after later units touched the same aggregate is still the
	// same unit, not a conflict.
	u := unit(t, []string{"r5", "r6"}, []uint64{0, 0})
	first := mustAppend(t, s, u)
	mustAppend(t, s, unit(t, []string{"r5"}, []uint64{first.First}))
	again, err := s.Append(ctx(t), u)
	if err != nil || again != first {
		t.Fatalf("late retry: %+v, %v; want %+v", again, err, first)
	}
	if n := len(readAll(t, s, 1)); n != 1+3+2+1 {
		t.Fatalf("log has %d events after retries, want 7", n)
	}
}

func testReadOrder(t *testing.T, s services.EventStore, _ int) {
	if n := len(readAll(t, s, 1)); n != 0 {
		t.Fatalf("empty log yields %d events", n)
	}
	versions := map[string]uint64{}
	var units []*services.Unit
	for i := range 12 {
		names := []string{fmt.Sprintf("s%d", i%4)}
		if i%3 == 0 {
			names = append(names, fmt.Sprintf("t%d", i))
		}
		vs := make([]uint64, len(names))
		for j, n := range names {
			vs[j] = versions[n]
		}
		u := unit(t, names, vs)
		a := mustAppend(t, s, u)
		for j, n := range names {
			versions[n] = a.First + uint64(j)
		}
		units = append(units, u)
	}
	got := readAll(t, s, 1)
	var want []events.Envelope
	for _, u := range units {
		want = append(want, u.Envelopes()...)
	}
	if len(got) != len(want) {
		t.Fatalf("read %d events, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i].ID != want[i].ID {
			t.Fatalf("event %d is %s, want %s (commit order)", i, got[i].ID, want[i].ID)
		}
		if i > 0 && got[i].Sequence != got[i-1].Sequence+1 {
			t.Fatalf("sequence %d follows %d", got[i].Sequence, got[i-1].Sequence)
		}
	}
	mid := got[5].Sequence
	tail := readAll(t, s, mid)
	if len(tail) != len(got)-5 || tail[0].ID != got[5].ID {
		t.Fatalf("read from %d: %d events starting %v", mid, len(tail), tail[0].ID)
	}
	if n := len(readAll(t, s, got[len(got)-1].Sequence+1)); n != 0 {
		t.Fatalf("read past the end yields %d events", n)
	}
}

func testConcurrent(t *testing.T, s services.EventStore, _ int) {
	const writers, rounds = 8, 10
	agg := server("contended")
	var version uint64
	for r := range rounds {
		var (
			wg      sync.WaitGroup
			mu      sync.Mutex
			winners []services.Appended
			errs    []error
		)
		start := make(chan struct{})
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				u, err := services.NewUnit(events.Meta{Actor: fmt.Sprintf("writer-%d", w)}, time.Now())
				if err == nil {
					u.Expect(agg, version)
					err = u.Add(agg, saved("contended", 1000*r+w))
				}
				<-start
				var a services.Appended
				if err == nil {
					a, err = s.Append(context.Background(), u)
				}
				mu.Lock()
				defer mu.Unlock()
				if err == nil {
					winners = append(winners, a)
				} else {
					errs = append(errs, err)
				}
			}()
		}
		close(start)
		wg.Wait()
		if len(winners) != 1 {
			t.Fatalf("round %d: %d winners for version %d, want exactly 1 (errors: %v)", r, len(winners), version, errs)
		}
		for _, err := range errs {
			wantConflict(t, err, agg, version, winners[0].Last)
		}
		version = winners[0].Last
	}
	if h := load(t, s, agg); len(h.Events) != rounds || h.Version != version {
		t.Fatalf("history: %d events at version %d, want %d at %d", len(h.Events), h.Version, rounds, version)
	}
}

func testUnitLimit(t *testing.T, s services.EventStore, maxUnit int) {
	names := make([]string, maxUnit)
	for i := range names {
		names[i] = fmt.Sprintf("bulk-%04d", i)
	}
	a := mustAppend(t, s, unit(t, names, make([]uint64, maxUnit)))
	if a.First != 1 || a.Last != uint64(maxUnit) {
		t.Fatalf("largest unit landed at %d…%d", a.First, a.Last)
	}
	over := append(names, "bulk-one-too-many")
	vs := make([]uint64, len(over))
	for i := range names {
		vs[i] = a.First + uint64(i)
	}
	_, err := s.Append(ctx(t), unit(t, over, vs))
	if services.ErrorCode(err) != services.ETOOLARGE || !strings.Contains(err.Error(), fmt.Sprint(maxUnit)) {
		t.Fatalf("unit of %d events: %v, want %s naming the limit %d", len(over), err, services.ETOOLARGE, maxUnit)
	}
	if n := len(readAll(t, s, 1)); n != maxUnit {
		t.Fatalf("log has %d events, want %d", n, maxUnit)
	}
}

// unregistered is a payload no registry knows.
type unregistered struct{ X int }

func (unregistered) EventType() events.Type { return events.Type{Name: "Unregistered", Version: 1} }

func testBadInput(t *testing.T, s services.EventStore, _ int) {
	newUnit := func() *services.Unit {
		u, err := services.NewUnit(events.Meta{Actor: "suite"}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	cases := []struct {
		name  string
		build func() *services.Unit
		code  string
		says  string
	}{
		{"empty unit", newUnit, services.EINVALID, "no events"},
		{"event without expectation", func() *services.Unit {
			u := newUnit()
			_ = u.Add(server("x"), saved("x", 22))
			return u
		}, services.EINVALID, "no expected version"},
		{"expectation without event", func() *services.Unit {
			u := newUnit()
			u.Expect(server("x"), 0)
			u.Expect(server("y"), 0)
			_ = u.Add(server("x"), saved("x", 22))
			return u
		}, services.EINVALID, "has no event"},
		{"unknown event type", func() *services.Unit {
			u := newUnit()
			u.Expect(server("x"), 0)
			_ = u.Add(server("x"), unregistered{X: 1})
			return u
		}, services.EINVALID, "unknown event type"},
		{"payload over the server's max payload", func() *services.Unit {
			u := newUnit()
			u.Expect(server("x"), 0)
			u.Expect(server("big"), 0)
			_ = u.Add(server("x"), saved("x", 22))
			big := saved("big", 22)
			big.Server.Labels = map[string]string{"blob": strings.Repeat("a", 2<<20)}
			_ = u.Add(server("big"), big)
			return u
		}, services.ETOOLARGE, "events[1]"},
	}
	for _, c := range cases {
		_, err := s.Append(ctx(t), c.build())
		if services.ErrorCode(err) != c.code || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: %v, want %s saying %q", c.name, err, c.code, c.says)
		}
	}
	// Names that are not valid are refused when the event is built.
	u := newUnit()
	for _, id := range []string{"", "bad\nname", strings.Repeat("x", events.MaxNameLen+1)} {
		if err := u.Add(server(id), saved("x", 22)); services.ErrorCode(err) != services.EINVALID {
			t.Errorf("aggregate id %q: %v, want %s", id, err, services.EINVALID)
		}
	}
	if _, err := s.Load(ctx(t), server("")); services.ErrorCode(err) != services.EINVALID {
		t.Errorf("load of an empty name: %v, want %s", err, services.EINVALID)
	}
	if n := len(readAll(t, s, 1)); n != 0 {
		t.Fatalf("bad input wrote %d events", n)
	}
}
