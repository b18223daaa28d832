package services_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/orchestra-fleet/orchestra/services"
)

// TestTwoProcesses runs two services over one event store, as two gateway
// processes would: neither is told about the other's writes.
func TestTwoProcesses(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	a, b := h.svc, h.newService(t)

	t.Run("reference to an object the other created", func(t *testing.T) {
		if _, err := applyWith(a, admin, serverWeb1, backendWeb); err != nil {
			t.Fatal(err)
		}
		res, err := applyWith(b, admin, routeWeb) // b has not synced
		if err != nil {
			t.Fatalf("route from the second process: %v", err)
		}
		if o := res.Objects[0]; o.Result != services.Created || o.Version != 3 {
			t.Fatalf("%+v", o)
		}
	})

	t.Run("creating what the other created", func(t *testing.T) {
		if _, err := applyWith(a, admin, `{"kind":"Server","name":"web2","port":2202}`); err != nil {
			t.Fatal(err)
		}
		res, err := applyWith(b, admin, `{"kind":"Server","name":"web2","port":2203}`)
		if err != nil {
			t.Fatal(err)
		}
		if o := res.Objects[0]; o.Result != services.Configured || o.Version != h.lastSeq(t) {
			t.Fatalf("%+v", o)
		}
	})

	t.Run("same object from stale state without a version", func(t *testing.T) {
		if err := a.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if err := b.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := applyWith(a, admin, `{"kind":"Server","name":"web1","address":"10.0.0.1","port":2201}`); err != nil {
			t.Fatal(err)
		}
		res, err := applyWith(b, admin, `{"kind":"Server","name":"web1","address":"10.0.0.1","port":2202}`)
		if err != nil {
			t.Fatalf("second writer without a version: %v", err)
		}
		if o := res.Objects[0]; o.Result != services.Configured || o.Version != h.lastSeq(t) {
			t.Fatalf("%+v", o)
		}
		// Both agree on the outcome: the last write.
		if err := a.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		for name, svc := range map[string]*services.Service{"a": a, "b": b} {
			res, err := applyWith(svc, admin, `{"kind":"Server","name":"web1","address":"10.0.0.1","port":2202}`)
			if err != nil || res.Objects[0].Result != services.Unchanged {
				t.Fatalf("%s: %+v, %v", name, res, err)
			}
		}
	})

	t.Run("same object from stale state with a version", func(t *testing.T) {
		read := h.lastSeq(t) // both read web1 at this version
		if _, err := applyWith(a, admin, fmt.Sprintf(`{"kind":"Server","name":"web1","address":"10.0.0.1","port":2210,"version":%d}`, read)); err != nil {
			t.Fatal(err)
		}
		before := h.lastSeq(t)
		_, err := applyWith(b, admin, fmt.Sprintf(`{"kind":"Server","name":"web1","address":"10.0.0.1","port":2211,"version":%d}`, read))
		wantStale(t, err, "objects[0].version", read, before)
		if h.lastSeq(t) != before {
			t.Fatal("the stale write wrote")
		}
	})

	t.Run("deleted by the other, then recreated", func(t *testing.T) {
		if _, err := applyWith(a, admin, `{"kind":"Server","name":"web2","delete":true}`); err != nil {
			t.Fatal(err)
		}
		res, err := applyWith(b, admin, `{"kind":"Server","name":"web2"}`) // b still has web2
		if err != nil {
			t.Fatal(err)
		}
		if o := res.Objects[0]; o.Result != services.Created {
			t.Fatalf("%+v", o)
		}
	})
}

// TestConcurrentApplies runs many applies at once on two services; every
// one succeeds and the log holds each change once.
func TestConcurrentApplies(t *testing.T) {
	h := newHarness(t)
	a, b := h.svc, h.newService(t)
	const n = 16
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := range n {
		for j, svc := range []*services.Service{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// One resource per goroutine; the shared one only through a,
				// which serializes its commands. (Two processes racing on
				// one object may see a conflict: each retries once.)
				docs := []string{fmt.Sprintf(`{"kind":"Resource","type":"vhost","name":"site%d-%d","attrs":{"i":%d}}`, i, j, i)}
				if svc == a {
					docs = append(docs, fmt.Sprintf(`{"kind":"Resource","type":"vhost","name":"shared","attrs":{"last":%d}}`, i))
				}
				_, err := applyWith(svc, operator, docs...)
				errs <- err
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	fresh := h.newService(t)
	if fresh.Seq() != h.lastSeq(t) {
		t.Fatalf("fresh service at %d, stream at %d", fresh.Seq(), h.lastSeq(t))
	}
	if got := len(h.payloads(t, 1)); got < 2*n+1 || got > 3*n {
		t.Fatalf("%d events for %d applies", got, 2*n)
	}
}
