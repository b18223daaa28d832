package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/executor"
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
func unitRecords(t testing.TB, js jetstream.JetStream) map[string]int {
	t.Helper()
	out := map[string]int{}
	streamMessages(t, js, events.StreamResults, events.SubjectUnits, func(msg jetstream.Msg) {
		var rec events.UnitPlanned
		if err := json.Unmarshal(msg.Data(), &rec); err != nil {
			t.Fatal(err)
		}
		out[rec.Unit.String()]++
	})
	return out
}

// TestChaosKilledUnderLoad: writers pour 10,000 changes over HTTP into
// `orchestra up`, spread over eight local servers; it is killed with
// SIGKILL once 3,000 are acknowledged and a script of a ninth server is
// running, started again on the same data directory, and given the rest.
// Once the pipeline is idle: every acknowledged change is in the log;
// every unit of work is planned exactly once (one plan on its server's
// queue, one unit record); every planned script finished once, with
// success (the one cut short by the kill ran again as attempt 2, and only
// that attempt ended); and the read models the API answers from, built
// live across the kill, equal a full replay.
func TestChaosKilledUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("10,000 changes")
	}
	const servers, writers, changes, killAfter = 8, 8, 10_000, 3_000
	t0 := time.Now()
	deadline := t0.Add(4 * time.Minute) // the whole test's bound
	dir := t.TempDir()
	data := filepath.Join(dir, ".orchestra")
	// Applies answer once the change is in the log, without waiting for
	// its script, so the log runs ahead of the planner and the executors;
	// a plan lost with the process runs again after 3 s, not 30.
	start := func() *process {
		p := startUp(t, "--data", data, "--nats-listen", "127.0.0.1:0", "--apply-wait", "0s", "--ack-wait", "3s")
		p.waitReady(t)
		return p
	}
	p := start()
	token := adminToken(t, data)
	p.token = token
	// Eight servers for the load, and one that holds a script running
	// when the process is killed: it sleeps on its first attempt, and
	// ends at once on the next.
	held := filepath.Join(dir, "held")
	fixtures := []map[string]any{
		{"kind": "Backend", "name": "site", "type": "website", "actions": map[string]string{"save": "echo {{ .name }}"}},
		{"kind": "Server", "name": "hold", "method": "local", "address": "127.0.0.1"},
		{"kind": "Backend", "name": "hold", "type": "hold", "timeout": "10m",
			"actions": map[string]string{"save": fmt.Sprintf("if [ ! -e %[1]s ]; then touch %[1]s; exec sleep 600; fi", held)}},
		{"kind": "Route", "backend": "hold", "server": "hold"},
	}
	names := []string{"hold"}
	for i := range servers {
		name := fmt.Sprintf("l%d", i)
		names = append(names, name)
		fixtures = append(fixtures,
			map[string]any{"kind": "Server", "name": name, "method": "local", "address": "127.0.0.1"},
			map[string]any{"kind": "Route", "backend": "site", "server": name, "match": fmt.Sprintf("resource.attrs.server == %q", name)})
	}
	if ok, err := p.post(token, fixtures...); err != nil || !ok {
		t.Fatalf("fixtures: %v %v", ok, err)
	}
	if ok, err := p.post(token, map[string]any{"kind": "Resource", "type": "hold", "name": "h", "attrs": map[string]any{"server": "hold"}}); err != nil || !ok {
		t.Fatalf("the held change: %v %v", ok, err)
	}

	// Writers: change i is resource r<i> on server l<i mod servers>. A
	// change whose request failed with the process is sent again to the
	// restarted one (the log may hold it already: then nothing changes).
	var current atomic.Pointer[process]
	current.Store(p)
	restarted, killNow, stop := make(chan struct{}), make(chan struct{}), make(chan struct{})
	var acked atomic.Int64
	var wg sync.WaitGroup
	t.Cleanup(func() { // should the test end early, the writers end with it
		close(stop)
		_ = current.Load().cmd.Process.Kill()
		wg.Wait()
	})
	for w := range writers {
		wg.Go(func() {
			for i := w; i < changes; i += writers {
				change := map[string]any{"kind": "Resource", "type": "website", "name": fmt.Sprintf("r%05d", i),
					"attrs": map[string]any{"server": fmt.Sprintf("l%d", i%servers)}}
				for {
					ok, err := current.Load().post(token, change)
					if err == nil && !ok {
						t.Errorf("change %d refused", i)
						return
					}
					if err == nil {
						break
					}
					if time.Now().After(deadline) {
						t.Errorf("change %d: %v", i, err)
						return
					}
					select { // the process is gone: wait for the next one
					case <-restarted:
						time.Sleep(10 * time.Millisecond)
					case <-stop:
						return
					}
				}
				if acked.Add(1) == killAfter {
					close(killNow)
				}
			}
		})
	}
	select {
	case <-killNow:
	case <-time.After(2 * time.Minute):
		t.Fatalf("only %d changes acknowledged in 2 minutes", acked.Load())
	}
	for _, err := os.Stat(held); err != nil; _, err = os.Stat(held) {
		if time.Now().After(deadline) {
			t.Fatal("the held script did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	p.signal(t, syscall.SIGKILL)
	<-p.exited
	before := acked.Load()
	killed := time.Now()
	p = start()
	p.token = token
	current.Store(p)
	close(restarted)
	t.Logf("SIGKILL after %d of %d changes were acknowledged (%s in), the held script running; restarted and ready in %s",
		before, changes, killed.Sub(t0).Round(time.Millisecond), time.Since(killed).Round(time.Millisecond))
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	if n := acked.Load(); n != changes {
		t.Fatalf("%d of %d changes acknowledged", n, changes)
	}
	written := time.Now()

	// Every acknowledged change is in the log (all of them were, in the end).
	store, js := connect(t, p)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	reg, err := events.NewRegistry(events.Catalog()...)
	if err != nil {
		t.Fatal(err)
	}
	type change struct{ resource, server string }
	units := map[string]change{} // unit → its change
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
			var attrs struct{ Server string }
			_ = json.Unmarshal(rs.Resource.Attrs, &attrs)
			units[e.Unit.String()] = change{rs.Resource.Type + "/" + rs.Resource.Name, attrs.Server}
			stored[rs.Resource.Name] = true
		}
	}
	for i := range changes {
		if name := fmt.Sprintf("r%05d", i); !stored[name] {
			t.Errorf("acknowledged change %s is not in the log", name)
		}
	}
	if len(units) < changes+1 {
		t.Fatalf("%d units in the log for %d changes and the held one", len(units), changes)
	}

	// Idle: a plan for every unit on EXEC, and no server's queue holding
	// one undelivered or unacknowledged (a plan is acknowledged once its
	// result is stored).
	idle := func() bool {
		st, err := js.Stream(ctx, events.StreamExec)
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs < uint64(len(units)) {
			return false
		}
		for _, server := range names {
			name, _ := executor.ConsumerName(server)
			ci, err := js.Consumer(ctx, events.StreamExec, name)
			if err != nil {
				return false
			}
			if ci.CachedInfo().NumPending > 0 || ci.CachedInfo().NumAckPending > 0 {
				return false
			}
		}
		return true
	}
	for !idle() {
		if time.Now().After(deadline) {
			t.Fatal("the pipeline did not become idle in time")
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("%d changes in %s; the pipeline idle %s after the last one", changes, written.Sub(t0).Round(time.Millisecond), time.Since(written).Round(time.Millisecond))
	time.Sleep(time.Second) // a plan or a result twice would show now

	// Every unit planned exactly once, on its server.
	plans := execPlans(t, js)
	planned := map[string]int{}
	var scripts []events.PlanScript
	var heldScript uuid.UUID
	for server, list := range plans {
		for _, pl := range list {
			if server == "hold" {
				heldScript = pl.Scripts[0].ID
			}
			u := pl.Unit.String()
			planned[u]++
			if want, ok := units[u]; !ok {
				t.Errorf("a plan of unit %s, which is not in the log", u)
			} else if server != want.server {
				t.Errorf("unit %s planned on %s, want %s", u, server, want.server)
			}
			scripts = append(scripts, pl.Scripts...)
		}
	}
	records := unitRecords(t, js)
	for u := range units {
		if planned[u] != 1 || records[u] != 1 {
			t.Errorf("unit %s: %d plans and %d records, want 1 and 1", u, planned[u], records[u])
		}
	}

	// Every planned script finished once; one cut short by the kill ran
	// again, and only its last attempt ended.
	started, finished := readResults(t, js, events.SubjectResults)
	attempts := map[uuid.UUID]int{}
	for _, s := range started {
		attempts[s.ID] = max(attempts[s.ID], s.Attempt)
	}
	ends := map[uuid.UUID][]events.ScriptFinished{}
	for _, f := range finished {
		ends[f.ID] = append(ends[f.ID], f)
	}
	reruns := 0
	for _, s := range scripts {
		e := ends[s.ID]
		switch {
		case len(e) != 1:
			t.Errorf("script %s: %d final results, want 1", s.ID, len(e))
		case e[0].State != events.StateSuccess:
			t.Errorf("script %s ended %s (%s)", s.ID, e[0].State, e[0].Reason)
		case e[0].Attempt != attempts[s.ID]:
			t.Errorf("script %s: attempt %d ended, but attempt %d started", s.ID, e[0].Attempt, attempts[s.ID])
		}
		if attempts[s.ID] > 1 {
			reruns++
		}
	}
	if len(scripts) != len(units) {
		t.Errorf("%d scripts planned for %d units", len(scripts), len(units))
	}
	if attempts[heldScript] < 2 {
		t.Errorf("the script running at the kill: %d attempts, want 2 or more", attempts[heldScript])
	}
	t.Logf("%d units, each planned once; %d scripts finished once, %d of them run again after the kill", len(units), len(scripts), reruns)

	// The read models, built live across the kill, equal a full replay.
	sample := map[string]string{} // every tenth unit → its resource
	for i, u := range slices.Sorted(maps.Keys(units)) {
		if i%10 == 0 {
			sample[u] = units[u].resource
		}
	}
	live := readModels(t, p, sample)
	replayed := time.Now()
	if out, errOut, code := p.cli(t, dir, "replay"); code != 0 {
		t.Fatalf("replay exited %d: %s%s", code, out, errOut)
	}
	t.Logf("full replay in %s", time.Since(replayed).Round(time.Millisecond))
	again := readModels(t, p, sample)
	for _, view := range slices.Sorted(maps.Keys(live)) {
		a, b := live[view], again[view]
		if len(a) == 0 {
			t.Errorf("%s: nothing to compare", view)
		}
		if len(a) != len(b) {
			t.Errorf("%s: %d items live, %d after the replay", view, len(a), len(b))
			continue
		}
		diffs := 0
		for i := range a {
			if a[i] != b[i] {
				if diffs++; diffs <= 3 {
					t.Errorf("%s item %d:\nlive:     %s\nreplayed: %s", view, i, a[i], b[i])
				}
			}
		}
		if diffs > 3 {
			t.Errorf("%s: %d items differ in all", view, diffs)
		}
	}
	p.stop(t, "http", "core", "nats-server")
}

// readModels is what the API answers from the read models, view by view:
// every item of every list (all pages), and the roll-up of each unit of
// units and the history of its resource (TYPE/NAME).
func readModels(t *testing.T, p *process, units map[string]string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	get := func(path string) []byte {
		code, body := p.get(t, path)
		if code != http.StatusOK {
			t.Fatalf("GET %s = %d %s", path, code, body)
		}
		return []byte(body)
	}
	for _, list := range []string{"/v1/servers", "/v1/backends", "/v1/routes", "/v1/resources", "/v1/tokens", "/v1/scripts", "/v1/server-status"} {
		for next := ""; ; {
			path := list
			if list != "/v1/server-status" {
				path += "?limit=1000"
			}
			if next != "" {
				path += "&after=" + next
			}
			var pg struct {
				Items []json.RawMessage
				Next  string
			}
			if err := json.Unmarshal(get(path), &pg); err != nil {
				t.Fatalf("GET %s: %v", path, err)
			}
			for _, it := range pg.Items {
				out[list] = append(out[list], string(it))
			}
			if next = pg.Next; next == "" {
				break
			}
		}
	}
	for _, u := range slices.Sorted(maps.Keys(units)) {
		out["/v1/units"] = append(out["/v1/units"], string(get("/v1/units/"+u)))
		out["history"] = append(out["history"], string(get("/v1/resources/"+units[u]+"/history")))
	}
	return out
}
