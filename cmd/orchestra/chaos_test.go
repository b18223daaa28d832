package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/infra/natstest"
	"github.com/orchestra-fleet/orchestra/infra/streams"
)

// TestChaosHeavyScriptsDoNotBlockOthers: a script writing 100 MB of
// output and one that never ends, each on a server of its own, while
// twenty units of work run on three other servers. Those all finish while
// the endless one still runs, and the 100 MB end up whole in the output
// bucket with the log's chunks truncated. How long the twenty took beside
// a quiet run of the same is logged, not asserted (machines are noisy).
func TestChaosHeavyScriptsDoNotBlockOthers(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 100 MB")
	}
	dir := t.TempDir()
	p := startUp(t, "--data", filepath.Join(dir, ".orchestra"), "--nats-listen", "127.0.0.1:0")
	p.waitReady(t)
	var doc strings.Builder
	for _, s := range []string{"big", "stuck", "o1", "o2", "o3"} {
		fmt.Fprintf(&doc, "kind: Server\nname: %s\naddress: 127.0.0.1\nmethod: local\n---\n", s)
	}
	doc.WriteString(`kind: Backend
name: heavy
type: heavy
timeout: 10m
actions:
  save: |
    case {{ .name }} in
      big) head -c 104857600 /dev/zero | tr '\0' x ;;
      stuck) exec sleep 100000 ;;
    esac
---
kind: Route
backend: heavy
server: big
match: resource.name == "big"
async: true
---
kind: Route
backend: heavy
server: stuck
match: resource.name == "stuck"
async: true
---
kind: Backend
name: quick
type: quick
actions:
  save: echo {{ .name }}
`)
	for _, s := range []string{"o1", "o2", "o3"} {
		fmt.Fprintf(&doc, "---\nkind: Route\nbackend: quick\nserver: %s\n", s)
	}
	if out, errOut, code := p.applyDoc(t, dir, doc.String()); code != 0 {
		t.Fatalf("apply exited %d: %s%s", code, out, errOut)
	}
	// Twenty units of work on the three other servers, each waited for.
	units := func(prefix string) time.Duration {
		t0 := time.Now()
		for i := range 20 {
			out, errOut, code := p.applyDoc(t, dir, fmt.Sprintf("kind: Resource\ntype: quick\nname: %s%d\nattrs: {}\n", prefix, i))
			if code != 0 {
				t.Fatalf("unit %s%d exited %d: %s%s", prefix, i, code, out, errOut)
			}
		}
		return time.Since(t0)
	}
	quiet := units("before")

	p.applyText(t, dir, "kind: Resource\ntype: heavy\nname: big\nattrs: {}\n---\nkind: Resource\ntype: heavy\nname: stuck\nattrs: {}\n")
	state := func(server string) string {
		out, _, _ := p.cli(t, dir, "scripts", "--server", server, "-o", "json")
		var items []struct{ State string }
		if json.Unmarshal([]byte(out), &items) != nil || len(items) == 0 {
			return ""
		}
		return items[0].State
	}
	for deadline := time.Now().Add(60 * time.Second); state("stuck") != "STARTED" || state("big") == "" || state("big") == "RECEIVED"; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the heavy scripts did not start: big %q, stuck %q", state("big"), state("stuck"))
		}
	}
	busy := units("during")
	if s := state("stuck"); s != "STARTED" {
		t.Errorf("the endless script is %s, want STARTED while the others ran", s)
	}
	t.Logf("twenty units on three servers: %s quiet, %s beside 100 MB of output and an endless script", quiet, busy)

	// The 100 MB: whole in the bucket, the log's chunks cut short.
	var big struct {
		State       string
		StdoutBytes int64 `json:"stdout_bytes"`
		Truncated   bool
		Object      string
	}
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		out, _, _ := p.cli(t, dir, "scripts", "--server", "big", "-o", "json")
		var items []json.RawMessage
		if json.Unmarshal([]byte(out), &items) == nil && len(items) == 1 {
			_ = json.Unmarshal(items[0], &big)
		}
		if big.State == "SUCCESS" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the 100 MB script is %q after 3 minutes", big.State)
		}
	}
	if big.StdoutBytes != 100<<20 || !big.Truncated || big.Object == "" {
		t.Errorf("the 100 MB script's log: %+v; want 104857600 bytes counted, chunks truncated, the whole in an object", big)
	}
	// A graceful stop kills the endless script's process group.
	p.stop(t)
}

// TestChaosClusterActiveProcessKilled: two orchestra up on a three-node
// NATS cluster (embedded nodes on loopback) with R3 streams; one is the
// active planner and site runner, the other waits. A change written
// through the waiting one is planned and run. The active one is killed
// with SIGKILL: the other takes over once the lease expires (the time is
// logged), and changes and site runs go on, every plan published once.
func TestChaosClusterActiveProcessKilled(t *testing.T) {
	start := time.Now()
	_, urls := natstest.Cluster(t, 3)
	work := t.TempDir()
	// The active process may die between storing a result and
	// acknowledging its plan: the plan then waits --ack-wait before the
	// survivor takes it (and passes it over), holding that server's queue.
	up := func(data string) *process {
		p := startUp(t, "--data", data, "--nats", urls, "--replicas", "3", "--ack-wait", "3s")
		p.waitReady(t)
		return p
	}
	p1 := up(filepath.Join(work, ".orchestra"))
	p2 := up(t.TempDir())
	t.Logf("the cluster and both processes ready in %s", time.Since(start).Round(time.Millisecond))
	_, js := connect(t, p1)
	for _, name := range []string{events.StreamEvents, events.StreamExec, events.StreamResults, "KV_" + streams.LeaseBucket} {
		st, err := js.Stream(context.Background(), name)
		if err != nil {
			t.Fatal(err)
		}
		if info := st.CachedInfo(); info.Config.Replicas != 3 || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
			t.Fatalf("stream %s: %d replicas configured, cluster %+v; want 3 on three nodes", name, info.Config.Replicas, info.Cluster)
		}
	}
	activeOf := func(ps ...*process) *process {
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			for _, p := range ps {
				if p.logged("this process is the active one") {
					return p
				}
			}
		}
		t.Fatal("no process became the active one")
		return nil
	}
	active := activeOf(p1, p2)
	passive := p2
	if active == p2 {
		passive = p1
	}
	if passive.logged("this process is the active one") {
		t.Fatal("both processes are active")
	}
	doc := `kind: Server
name: box
address: 127.0.0.1
method: local
---
kind: Backend
name: echo
type: job
actions:
  save: echo {{ .name }}
---
kind: Route
backend: echo
server: box
---
kind: Site
name: s
services:
  - {name: a, rank: 1, servers: [box], start: "true"}
`
	// A change written through the waiting process is planned by the
	// active one and run.
	ran(t, passive, work, doc+"---\nkind: Resource\ntype: job\nname: before\nattrs: {}\n")
	if err := active.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-active.exited
	t0 := time.Now()
	activeOf(passive)
	took := time.Since(t0)
	t.Logf("the waiting process took over %s after the active one was killed", took.Round(time.Millisecond))
	// The lease expires LeaseTTL after its last renewal, which came at
	// most a third of that before the kill; NATS removes it up to about
	// 2 s late.
	if took > streams.LeaseTTL+5*time.Second {
		t.Errorf("the take-over took %s; the lease expires %s after its last renewal", took, streams.LeaseTTL)
	}
	t1 := time.Now()
	ran(t, passive, work, "kind: Resource\ntype: job\nname: after\nattrs: {}\n")
	t2 := time.Now()
	if v, code, errOut := passive.siteRun(t, work, "start", "s"); code != 0 || v.State != "SUCCESS" {
		t.Fatalf("a site run after the take-over exited %d: %s %s", code, v.State, errOut)
	}
	t.Logf("then a change ran in %s, and a site run in %s", t2.Sub(t1).Round(time.Millisecond), time.Since(t2).Round(time.Millisecond))
	// Each unit and each phase of the run planned once, by one process
	// or the other.
	seen := map[string]int{}
	for _, pl := range execPlans(t, js)["box"] {
		seen[pl.MsgID()]++
	}
	if len(seen) != 3 {
		t.Errorf("plans for box: %v; want the two changes and the site run's phase", seen)
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("plan %s is on EXEC %d times", id, n)
		}
	}
}

// ran applies doc through p and checks that it planned scripts and that
// they all ran with success within 15 s.
func ran(t *testing.T, p *process, dir, doc string) {
	t.Helper()
	out, errOut, code := p.applyDoc(t, dir, doc, "-o", "json", "--wait", "15s")
	var res struct{ Scripts []scriptOutcome }
	if err := json.Unmarshal([]byte(out), &res); err != nil || code != 0 || len(res.Scripts) == 0 {
		t.Fatalf("apply through %s exited %d (%v): %s%s", p.http, code, err, out, errOut)
	}
	for _, s := range res.Scripts {
		if s.State != events.StateSuccess {
			t.Errorf("script %s on %s: %s %s", s.ID, s.Server, s.State, s.Reason)
		}
	}
}
