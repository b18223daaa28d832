package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/orchestra-fleet/orchestra/events"
)

// post sends an apply of objects; it reports whether Orchestra
// acknowledged it.
func (p *process) post(token string, objects ...map[string]any) (bool, error) {
	body, err := json.Marshal(map[string]any{"objects": objects})
	if err != nil {
		return false, err
	}
	req, err := http.NewRequest("POST", p.http+"/v1/apply", bytes.NewReader(body))
	if err != nil {
		return false, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false, err
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK, nil
}

// unitRecords counts the planner's unit records on RESULTS, by unit.
func unitRecords(t *testing.T, js jetstream.JetStream) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, events.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{events.SubjectUnits}})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for {
		msg, err := cons.Next(jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return out
		}
		var rec events.UnitPlanned
		if err := json.Unmarshal(msg.Data(), &rec); err != nil {
			t.Fatal(err)
		}
		out[rec.Unit.String()]++
	}
}

// `orchestra up` killed with SIGKILL while changes pour in and the planner
// plans them: after a restart every acknowledged change is in the log, and
// every unit of work is planned exactly once — one plan on the server's
// queue and one record per unit, none missing, none twice.
func TestKilledPlannerPlansEveryUnitOnce(t *testing.T) {
	dir := t.TempDir()
	start := func() *process {
		p := startUp(t, "--data", dir, "--nats-listen", "127.0.0.1:0")
		p.waitReady(t)
		return p
	}
	p := start()
	token := adminToken(t, dir)
	ok, err := p.post(token,
		map[string]any{"kind": "Server", "name": "local1", "method": "local", "address": "127.0.0.1"},
		map[string]any{"kind": "Backend", "name": "site", "type": "website", "actions": map[string]string{"save": "echo {{ .name }} {{ .attrs.n }}"}},
		map[string]any{"kind": "Route", "backend": "site", "server": "local1"})
	if err != nil || !ok {
		t.Fatalf("fixtures: %v %v", ok, err)
	}

	// Writers apply one resource per unit until the process dies.
	const writers, killAfter = 4, 150
	var acked atomic.Int64
	var mu sync.Mutex
	acknowledged := map[string]bool{}
	killed := make(chan struct{})
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10_000; i++ {
				name := fmt.Sprintf("r%d-%d", w, i)
				ok, err := p.post(token, map[string]any{"kind": "Resource", "type": "website", "name": name, "attrs": map[string]any{"n": i}})
				if err != nil {
					return // the process is gone
				}
				if ok {
					mu.Lock()
					acknowledged[name] = true
					mu.Unlock()
					if acked.Add(1) == killAfter {
						close(killed)
					}
				}
			}
		}()
	}
	select {
	case <-killed:
	case <-time.After(2 * time.Minute):
		t.Fatalf("only %d changes acknowledged in 2 minutes", acked.Load())
	}
	p.signal(t, syscall.SIGKILL)
	<-p.exited
	wg.Wait()

	p = start()
	store, js := connect(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	reg, err := events.NewRegistry(events.Catalog()...)
	if err != nil {
		t.Fatal(err)
	}
	units := map[string]bool{} // units that call for a plan
	stored := map[string]bool{}
	for e, err := range store.Read(ctx, 1) {
		if err != nil {
			t.Fatal(err)
		}
		pl, err := reg.Payload(e)
		if err != nil {
			t.Fatal(err)
		}
		if rs, ok := pl.(*events.ResourceSaved); ok {
			units[e.Unit.String()] = true
			stored[rs.Resource.Name] = true
		}
	}
	for name := range acknowledged {
		if !stored[name] {
			t.Errorf("acknowledged change %s is not in the log", name)
		}
	}
	t.Logf("%d changes acknowledged before SIGKILL, %d units in the log", len(acknowledged), len(units))

	var plans []events.Plan
	deadline := time.Now().Add(60 * time.Second)
	for {
		plans = execPlans(t, js)["local1"]
		if len(plans) >= len(units) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	planned := map[string]int{}
	for _, pl := range plans {
		planned[pl.Unit.String()]++
	}
	records := unitRecords(t, js)
	for u := range units {
		if planned[u] != 1 || records[u] != 1 {
			t.Errorf("unit %s: %d plans and %d records, want 1 and 1", u, planned[u], records[u])
		}
	}
	for u, n := range planned {
		if !units[u] {
			t.Errorf("a plan of unit %s, which is not in the log (%d times)", u, n)
		}
	}
	p.stop(t, "http", "core", "nats-server")
}
