package natsserver_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/infra/eventstore"
	"github.com/orchestra-fleet/orchestra/infra/natstest"
	"github.com/orchestra-fleet/orchestra/services"
)

// TestChaosClusterLeaderStopped: the event log on a three-node cluster
// with R3 streams. Writers append units while the EVENTS stream's leader
// is stopped: every unit the store acknowledged is in the log afterwards,
// once, and the writers go on. The pause is logged.
func TestChaosClusterLeaderStopped(t *testing.T) {
	nodes, _, js := natstest.ClusterJS(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	reg, err := events.NewRegistry(events.Catalog()...)
	if err != nil {
		t.Fatal(err)
	}
	store, err := eventstore.New(ctx, eventstore.Config{JetStream: js, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}

	// Writers: one resource per unit, each unit tried until the store
	// acknowledges it (a retry is safe: the same message ids).
	const writers, before, after = 4, 200, 200
	var mu sync.Mutex
	acked := map[string]bool{}
	var ackTimes []time.Time
	var count atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := 0; ; i++ {
				name := fmt.Sprintf("w%d-%d", w, i)
				u, err := services.NewUnit(events.Meta{Actor: "chaos"}, time.Now())
				if err != nil {
					t.Error(err)
					return
				}
				agg := events.Aggregate{Type: events.AggResource, ID: "job/" + name}
				u.Expect(agg, 0)
				if err := u.Add(agg, &events.ResourceSaved{Resource: events.Resource{Type: "job", Name: name, Attrs: json.RawMessage(`{}`)}, Changed: []string{}}); err != nil {
					t.Error(err)
					return
				}
				for {
					select {
					case <-stop:
						return
					default:
					}
					actx, acancel := context.WithTimeout(ctx, time.Second)
					_, err := store.Append(actx, u)
					acancel()
					if err == nil {
						break
					}
					var conflict *services.ConflictError
					if errors.As(err, &conflict) {
						t.Errorf("unit %s: a conflict on a new aggregate: %v", name, err)
						return
					}
					time.Sleep(20 * time.Millisecond) // the cluster is electing: try again
				}
				mu.Lock()
				acked[name] = true
				ackTimes = append(ackTimes, time.Now())
				mu.Unlock()
				count.Add(1)
			}
		})
	}
	waitCount := func(n int64) {
		for count.Load() < n {
			if ctx.Err() != nil {
				t.Fatalf("only %d units acknowledged", count.Load())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitCount(before)
	stream, err := js.Stream(ctx, events.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil || info.Cluster == nil || nodes[info.Cluster.Leader] == nil {
		t.Fatalf("the EVENTS leader: %v %+v", err, info)
	}
	leader := info.Cluster.Leader
	stopped := time.Now()
	nodes[leader].Shutdown()
	delete(nodes, leader)
	waitCount(before + after)
	close(stop)
	wg.Wait()

	// The pause: the longest gap between acknowledgements after the stop.
	mu.Lock()
	var pause time.Duration
	last := stopped
	for _, at := range ackTimes {
		if at.After(stopped) {
			pause = max(pause, at.Sub(last))
			last = at
		}
	}
	want := make(map[string]bool, len(acked))
	for k := range acked {
		want[k] = true
	}
	mu.Unlock()
	t.Logf("leader %s stopped; %d units acknowledged in all; the longest wait for an acknowledgement after the stop: %s", leader, len(want), pause)

	seen := map[string]int{}
	for e, err := range store.Read(ctx, 1) {
		if err != nil {
			t.Fatal(err)
		}
		p, err := reg.Payload(e)
		if err != nil {
			t.Fatal(err)
		}
		if rs, ok := p.(*events.ResourceSaved); ok {
			seen[rs.Resource.Name]++
		}
	}
	for name := range want {
		if seen[name] != 1 {
			t.Errorf("acknowledged unit %s is in the log %d times", name, seen[name])
		}
	}
}
