package main

import (
	"context"
	"encoding/json"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/orchestra-fleet/orchestra/events"
)

// execPlans reads every plan on the EXEC stream, by server.
func execPlans(t testing.TB, js jetstream.JetStream) map[string][]events.Plan {
	t.Helper()
	out := map[string][]events.Plan{}
	streamMessages(t, js, events.StreamExec, "", func(msg jetstream.Msg) {
		var p events.Plan
		if err := json.Unmarshal(msg.Data(), &p); err != nil {
			t.Fatalf("EXEC message %s is not a plan: %v", msg.Subject(), err)
		}
		if want, _ := events.ExecSubject(p.Server); msg.Subject() != want {
			t.Errorf("the plan for %s is on %s", p.Server, msg.Subject())
		}
		out[p.Server] = append(out[p.Server], p)
	})
	return out
}

// streamMessages calls fn with every message stream holds under filter
// (every message when it is empty), in order. It fetches them in batches:
// one round trip a message would take minutes over a large stream.
func streamMessages(t testing.TB, js jetstream.JetStream, stream, filter string, fn func(jetstream.Msg)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var cfg jetstream.OrderedConsumerConfig
	if filter != "" {
		cfg.FilterSubjects = []string{filter}
	}
	cons, err := js.OrderedConsumer(ctx, stream, cfg)
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for left := info.NumPending; left > 0; {
		batch, err := cons.Fetch(int(min(left, 1000)), jetstream.FetchMaxWait(10*time.Second))
		if err != nil {
			t.Fatalf("read %s: %v", stream, err)
		}
		n := uint64(0)
		for msg := range batch.Messages() {
			fn(msg)
			n++
		}
		if n == 0 {
			t.Fatalf("read %s: %d messages left unread: %v", stream, left, batch.Error())
		}
		left -= n
	}
}

// waitPlan waits for the plan of unit on server.
func waitPlan(t *testing.T, js jetstream.JetStream, server, unit string) events.Plan {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, p := range execPlans(t, js)[server] {
			if p.Unit.String() == unit {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no plan of unit %s for %s within 30s; plans: %+v", unit, server, execPlans(t, js))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var unitPrinted = regexp.MustCompile(`unit ([0-9a-f-]{36}) at sequence`)

// Sync, custom actions and retries from the CLI, each followed to the plan
// it puts on the server's queue.
func TestRequestsEndToEnd(t *testing.T) {
	dir := t.TempDir()
	example, err := filepath.Abs("../../examples/hosting.yml")
	if err != nil {
		t.Fatal(err)
	}
	p := startUp(t, "--data", filepath.Join(dir, ".orchestra"), "--nats-listen", "127.0.0.1:0")
	p.waitReady(t)
	_, js := connect(t, p)
	if out, errOut, code := p.cli(t, dir, "apply", "-f", example); code != 0 {
		t.Fatalf("apply exited %d: %s%s", code, out, errOut)
	}
	run := func(args ...string) string {
		t.Helper()
		out, errOut, code := p.cli(t, dir, args...)
		if code != 0 {
			t.Fatalf("%v exited %d: %s%s", args, code, out, errOut)
		}
		return out
	}
	unitOf := func(out string) string {
		t.Helper()
		m := unitPrinted.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no unit in the output:\n%s", out)
		}
		return m[1]
	}
	opsOf := func(s events.PlanScript) []string {
		var out []string
		for _, op := range s.Operations {
			out = append(out, op.Action+" "+op.Type+"/"+op.Name)
		}
		return out
	}

	// A sync saves every website on web2, and only there.
	unit := unitOf(run("sync", "web2"))
	plan := waitPlan(t, js, "web2", unit)
	if len(plan.Scripts) != 1 || plan.Scripts[0].Backend != "vhost" ||
		!slices.Equal(opsOf(plan.Scripts[0]), []string{"save website/blog", "save website/shop"}) {
		t.Fatalf("the sync plan for web2 is %+v", plan)
	}
	if text := plan.Scripts[0].Script; !strings.Contains(text, "/tmp/orchestra-example/'web2'/sites/'shop'") || !strings.Contains(text, "ORC_NAME='blog'") {
		t.Errorf("the sync script:\n%s", text)
	}
	for server, plans := range execPlans(t, js) {
		for _, pl := range plans {
			if pl.Unit.String() == unit && server != "web2" {
				t.Errorf("the sync of web2 planned on %s", server)
			}
		}
	}
	if _, errOut, code := p.cli(t, dir, "sync", "web2", "--backend", "mailbox"); code != 1 || !strings.Contains(errOut, "backend") {
		t.Errorf("a sync of a backend without a route there exited %d: %s", code, errOut)
	}
	if _, errOut, code := p.cli(t, dir, "sync", "nowhere"); code != 1 || !strings.Contains(errOut, "does not exist") {
		t.Errorf("a sync of an unknown server exited %d: %s", code, errOut)
	}

	// A custom action reaches the backend that defines it.
	unit = unitOf(run("action", "mailbox", "alice", "quota"))
	plan = waitPlan(t, js, "mail1", unit)
	if len(plan.Scripts) != 1 || !slices.Equal(opsOf(plan.Scripts[0]), []string{"quota mailbox/alice"}) ||
		!strings.Contains(plan.Scripts[0].Script, "echo quota of 'alice': '1024' MB") || !plan.Scripts[0].Async {
		t.Fatalf("the action plan for mail1 is %+v", plan)
	}
	if _, errOut, code := p.cli(t, dir, "action", "website", "shop", "quota"); code != 1 || !strings.Contains(errOut, "action") {
		t.Errorf("an action no backend defines exited %d: %s", code, errOut)
	}

	// A retry plans the script's operations again; once the resource is
	// gone, it says so and plans nothing.
	script := plan.Scripts[0].ID.String()
	out := run("scripts", "retry", script)
	if !strings.Contains(out, "retry    quota mailbox/alice (mailbox)") {
		t.Fatalf("retry printed:\n%s", out)
	}
	waitPlan(t, js, "mail1", unitOf(out))
	run("delete", "resource", "mailbox/alice")
	out = run("scripts", "retry", script)
	if !strings.Contains(out, "skipped  quota mailbox/alice (mailbox): resource mailbox/alice no longer exists") || !strings.Contains(out, "nothing left to retry") {
		t.Fatalf("retry after the delete printed:\n%s", out)
	}
	if _, errOut, code := p.cli(t, dir, "scripts", "retry", "0192f1e0-6b1a-7c3e-9d2f-000000000000"); code != 1 || !strings.Contains(errOut, "does not exist") {
		t.Errorf("a retry of an unknown script exited %d: %s", code, errOut)
	}
	p.stop(t, "http", "core", "nats-server")
}
