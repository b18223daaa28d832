package lease_test

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/orchestra-fleet/orchestra/infra/lease"
	"github.com/orchestra-fleet/orchestra/infra/natstest"
)

// ttl is long beside the holders' polling (ttl/4), so that a take-over
// after a release is told apart from one after an expiry.
const ttl = 3 * time.Second

func bucket(t *testing.T) jetstream.KeyValue {
	t.Helper()
	env := natstest.Start(t)
	kv, err := env.JS.CreateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: "leases", TTL: ttl, History: 1})
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

var discard = slog.New(slog.DiscardHandler)

// active runs a task under l until ctx ends, counting how many run.
func active(ctx context.Context, l *lease.Lease, running *atomic.Int32, started chan<- string, name string) {
	_ = l.Run(ctx, func(ctx context.Context) error {
		running.Add(1)
		defer running.Add(-1)
		started <- name
		<-ctx.Done()
		return nil
	})
}

// TestOneActiveAndHandOver: of two holders one runs the task; when it
// stops, the other takes over at once (the lease is released).
func TestOneActiveAndHandOver(t *testing.T) {
	kv := bucket(t)
	var running atomic.Int32
	started := make(chan string, 4)
	ctxA, stopA := context.WithCancel(context.Background())
	ctxB, stopB := context.WithCancel(context.Background())
	defer stopB()
	go active(ctxA, lease.New(kv, "planner", "a", ttl, discard), &running, started, "a")
	if got := <-started; got != "a" {
		t.Fatalf("%s started first", got)
	}
	go active(ctxB, lease.New(kv, "planner", "b", ttl, discard), &running, started, "b")
	select {
	case got := <-started:
		t.Fatalf("%s started while a holds the lease", got)
	case <-time.After(ttl):
	}
	if n := running.Load(); n != 1 {
		t.Fatalf("%d tasks run", n)
	}
	stopA()
	select {
	case got := <-started:
		if got != "b" {
			t.Fatalf("%s took over", got)
		}
	case <-time.After(ttl * 2 / 3):
		t.Fatal("b did not take over at once after a released the lease")
	}
}

// TestCrashedHolderExpires: a holder that stops renewing without
// releasing (killed) loses the lease once it expires; the same holder
// started again takes its own lease back at once.
func TestCrashedHolderExpires(t *testing.T) {
	kv := bucket(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := kv.Create(ctx, "planner", []byte("dead")); err != nil {
		t.Fatal(err)
	}
	var running atomic.Int32
	started := make(chan string, 2)
	t0 := time.Now()
	go active(ctx, lease.New(kv, "planner", "b", ttl, discard), &running, started, "b")
	select {
	case <-started:
		if waited := time.Since(t0); waited < ttl/2 {
			t.Errorf("b took a live lease after %s", waited)
		}
	case <-time.After(5 * ttl):
		t.Fatal("the dead holder's lease never expired")
	}

	kv2 := bucket(t)
	if _, err := kv2.Create(ctx, "planner", []byte("me")); err != nil {
		t.Fatal(err)
	}
	t0 = time.Now()
	go active(ctx, lease.New(kv2, "planner", "me", ttl, discard), &running, started, "me")
	select {
	case <-started:
		if waited := time.Since(t0); waited > ttl/2 {
			t.Errorf("the same holder waited %s for its own lease", waited)
		}
	case <-time.After(5 * ttl):
		t.Fatal("the same holder did not take its lease back")
	}
}
