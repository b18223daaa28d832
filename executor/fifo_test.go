package executor_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/executor"
)

// TestFIFOUnderStress: 1,000 plans for 20 servers from 10 concurrent
// writers. On every server the scripts ran in the order the plans were
// stored (what they appended to a file on the server side), each once.
func TestFIFOUnderStress(t *testing.T) {
	const servers, plans, writers = 20, 1000, 10
	r := newRig(t, localConfig())
	dir := t.TempDir()
	for i := range servers {
		r.save(localServer(fmt.Sprintf("s%02d", i)))
	}
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for range plans / writers {
				server := fmt.Sprintf("s%02d", rng.IntN(servers))
				p := events.Plan{Unit: uuid.New(), Server: server, Time: time.Now()}
				// A random pause inside the script gives a later plan every
				// chance to overtake it, were the order not enforced.
				p.Scripts = append(p.Scripts, script("log",
					fmt.Sprintf("sleep 0.00%d\necho %s >> %s\n", rng.IntN(5), p.Unit, filepath.Join(dir, server)), "1m"))
				if err := sendPlan(r.env.JS, p); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	total := 0
	for i := range servers {
		server := fmt.Sprintf("s%02d", i)
		eventually(t, "server "+server+" drains its queue", func() bool { return r.pending(server) == 0 })
		committed := r.committedUnits(server)
		data, err := os.ReadFile(filepath.Join(dir, server))
		if err != nil && len(committed) > 0 {
			t.Fatal(err)
		}
		ran := strings.Fields(string(data))
		if strings.Join(ran, ",") != strings.Join(committed, ",") {
			t.Fatalf("server %s ran %d plans in an order other than the %d committed:\nran       %v\ncommitted %v", server, len(ran), len(committed), ran, committed)
		}
		total += len(ran)
	}
	if total != plans {
		t.Fatalf("%d plans ran, want %d", total, plans)
	}
}

// committedUnits lists the units of server's plans in the order EXEC
// stored them.
func (r *rig) committedUnits(server string) []string {
	r.t.Helper()
	subject, _ := events.ExecSubject(server)
	var units []string
	for _, msg := range r.messages(events.StreamExec, subject) {
		var p events.Plan
		if err := json.Unmarshal(msg.Data(), &p); err != nil {
			r.t.Fatal(err)
		}
		units = append(units, p.Unit.String())
	}
	return units
}

// takeDelivery plays an executor that takes server's next plan and dies
// before it finishes: the plan is delivered and never acknowledged.
func (r *rig) takeDelivery(server string, ackWait time.Duration) {
	r.t.Helper()
	cfg, err := executor.ConsumerConfig(server, ackWait)
	if err != nil {
		r.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cons, err := r.env.JS.CreateOrUpdateConsumer(ctx, events.StreamExec, cfg)
	if err != nil {
		r.t.Fatal(err)
	}
	msgs, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		r.t.Fatal(err)
	}
	for range msgs.Messages() {
	}
	if msgs.Error() != nil {
		r.t.Fatal(msgs.Error())
	}
}

// A plan lost mid-run comes back after AckWait: it runs again as attempt
// 2, with one final state, and the server's next plan waits for it.
func TestLostPlanRunsAgainAsTheNextAttempt(t *testing.T) {
	cfg := localConfig()
	cfg.AckWait = time.Second
	r := newRig(t, cfg)
	dir := t.TempDir()
	first := r.send("web1", script("b", fmt.Sprintf("echo first >> %s/log", dir), "1m"))
	second := r.send("web1", script("b", fmt.Sprintf("echo second >> %s/log", dir), "1m"))
	r.takeDelivery("web1", time.Second)
	r.save(localServer("web1"))

	fin := r.finished("web1", first.Scripts[0].ID)
	if fin.State != events.StateSuccess || fin.Attempt != 2 {
		t.Fatalf("first: %+v", fin)
	}
	r.finished("web1", second.Scripts[0].ID)
	got, _ := os.ReadFile(filepath.Join(dir, "log"))
	if string(got) != "first\nsecond\n" {
		t.Fatalf("the server ran %q", got)
	}
	finals, started := 0, 0
	for _, x := range r.results("web1", first.Scripts[0].ID) {
		switch v := x.v.(type) {
		case *events.ScriptFinished:
			finals++
		case *events.ScriptStarted:
			started++
			if v.Attempt != 2 {
				t.Fatalf("started as attempt %d", v.Attempt)
			}
		}
	}
	if finals != 1 || started != 1 {
		t.Fatalf("%d starts and %d final states, want one each", started, finals)
	}
}

// A plan lost more often than MaxAttempts is given up: ABORTED, not run.
func TestPlanLostTooOftenIsAborted(t *testing.T) {
	cfg := localConfig()
	cfg.AckWait, cfg.MaxAttempts = time.Second, 1
	r := newRig(t, cfg)
	marker := filepath.Join(t.TempDir(), "ran")
	p := r.send("web1", script("b", "touch "+marker, "1m"))
	r.takeDelivery("web1", time.Second)
	r.save(localServer("web1"))
	fin := r.finished("web1", p.Scripts[0].ID)
	if fin.State != events.StateAborted || fin.Attempt != 2 || !strings.Contains(fin.Reason, "given up") {
		t.Fatalf("%+v", fin)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("an aborted script ran")
	}
	eventually(t, "the queue moves on", func() bool { return r.pending("web1") == 0 })
}
