package executor_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/executor"
	"github.com/orchestra-fleet/orchestra/infra/natstest"
)

// rig is an embedded JetStream server, a fleet and an executor serving it.
type rig struct {
	t     testing.TB
	env   *natstest.Env
	fleet *executor.Fleet
	exec  *executor.Executor
	seq   uint64
	stop  context.CancelFunc
	done  chan struct{}
}

// newRig starts an executor with cfg (JetStream filled in) on a fresh
// server; it serves until the test ends.
func newRig(t testing.TB, cfg executor.Config) *rig {
	t.Helper()
	r := &rig{t: t, env: natstest.Start(t), fleet: executor.NewFleet()}
	cfg.JetStream = r.env.JS
	r.start(cfg)
	return r
}

func (r *rig) start(cfg executor.Config) {
	r.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ex, err := executor.New(ctx, cfg)
	if err != nil {
		r.t.Fatal(err)
	}
	r.exec, r.stop, r.done = ex, cancel, make(chan struct{})
	go func() {
		defer close(r.done)
		if err := ex.Run(ctx, r.fleet); err != nil {
			r.t.Errorf("executor: %v", err)
		}
	}()
	r.t.Cleanup(r.halt)
}

// halt stops the executor and waits for it.
func (r *rig) halt() {
	r.stop()
	<-r.done
}

// save adds or changes a server in the fleet.
func (r *rig) save(s events.Server) {
	r.t.Helper()
	r.observe(events.Aggregate{Type: "server", ID: s.Name}, events.ServerSaved{Server: s})
}

// remove deletes a server from the fleet.
func (r *rig) remove(name string) {
	r.t.Helper()
	r.observe(events.Aggregate{Type: "server", ID: name}, events.ServerDeleted{Name: name})
}

func (r *rig) observe(agg events.Aggregate, p events.Payload) {
	r.t.Helper()
	e, err := events.New(agg, p, events.Meta{}, time.Now())
	if err != nil {
		r.t.Fatal(err)
	}
	r.seq++
	e.Sequence = r.seq
	if err := r.fleet.Observe(e); err != nil {
		r.t.Fatal(err)
	}
}

func localServer(name string) events.Server {
	return events.Server{Name: name, Address: "127.0.0.1", Port: 22, Method: "local", Active: true}
}

// script is one script of a plan, run by bash.
func script(backend, text, timeout string) events.PlanScript {
	return events.PlanScript{ID: uuid.New(), Backend: backend, Executable: "/bin/bash", Timeout: timeout, Script: text}
}

// send publishes a plan of scripts for server, as the planner does.
func (r *rig) send(server string, scripts ...events.PlanScript) events.Plan {
	r.t.Helper()
	p := events.Plan{Unit: uuid.New(), Server: server, Time: time.Now(), Scripts: scripts}
	if err := sendPlan(r.env.JS, p); err != nil {
		r.t.Fatal(err)
	}
	return p
}

func sendPlan(js jetstream.JetStream, p events.Plan) error {
	subject, err := events.ExecSubject(p.Server)
	if err != nil {
		return err
	}
	data, err := json.Marshal(p)
	if err != nil {
		return err
	}
	_, err = js.PublishMsg(context.Background(), &nats.Msg{Subject: subject, Data: data,
		Header: nats.Header{jetstream.MsgIDHeader: {events.PlanID(p.Unit, p.Server)}}})
	return err
}

// finished waits (bounded) for the final result of a script.
func (r *rig) finished(server string, id uuid.UUID) events.ScriptFinished {
	r.t.Helper()
	var fin events.ScriptFinished
	subject, _ := events.ScriptSubject(server, id, fin.ResultType())
	deadline := time.Now().Add(60 * time.Second)
	for {
		msg, err := r.env.JS.Conn().Request("$JS.API.DIRECT.GET."+events.StreamResults+"."+subject, nil, 5*time.Second)
		if err == nil && msg.Header.Get("Status") == "" {
			if err := json.Unmarshal(msg.Data, &fin); err != nil {
				r.t.Fatal(err)
			}
			return fin
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("script %s on %s did not finish in 60s", id, server)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// result is one message of RESULTS about a script, decoded.
type result struct {
	seq  uint64
	kind string
	v    any
}

// messages reads every message a stream holds under subject, in order.
func (r *rig) messages(stream, subject string) []jetstream.Msg {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cons, err := r.env.JS.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		r.t.Fatal(err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		r.t.Fatal(err)
	}
	var out []jetstream.Msg
	for range info.NumPending {
		msg, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
		if err != nil {
			r.t.Fatal(err)
		}
		out = append(out, msg)
	}
	return out
}

// results reads every message RESULTS holds about a script, in order.
func (r *rig) results(server string, id uuid.UUID) []result {
	r.t.Helper()
	subject, _ := events.ScriptSubject(server, id, ">")
	var out []result
	for _, msg := range r.messages(events.StreamResults, subject) {
		meta, _ := msg.Metadata()
		kind := msg.Subject()[len(msg.Subject())-len(lastToken(msg.Subject())):]
		var v any
		switch kind {
		case "ScriptStarted":
			v = &events.ScriptStarted{}
		case "ScriptOutput":
			v = &events.ScriptOutput{}
		case "ScriptFinished":
			v = &events.ScriptFinished{}
		default:
			continue
		}
		if err := json.Unmarshal(msg.Data(), v); err != nil {
			r.t.Fatal(err)
		}
		out = append(out, result{seq: meta.Sequence.Stream, kind: kind, v: v})
	}
	return out
}

func lastToken(subject string) string {
	for i := len(subject) - 1; i >= 0; i-- {
		if subject[i] == '.' {
			return subject[i+1:]
		}
	}
	return subject
}

// output puts a script's chunks of one stream back together, checking
// that they follow each other without gaps.
func output(t testing.TB, rs []result, stream string) (data []byte, truncated bool) {
	t.Helper()
	for _, r := range rs {
		o, ok := r.v.(*events.ScriptOutput)
		if !ok || o.Stream != stream {
			continue
		}
		if o.Truncated {
			truncated = true
			continue
		}
		if truncated {
			t.Fatalf("%s: a chunk after the truncation marker", stream)
		}
		if o.Offset != int64(len(data)) {
			t.Fatalf("%s: chunk at offset %d after %d bytes", stream, o.Offset, len(data))
		}
		data = append(data, o.Data...)
	}
	return data, truncated
}

// object reads a whole output from the output bucket.
func (r *rig) object(name string) []byte {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	obj, err := r.env.JS.ObjectStore(ctx, events.OutputBucket)
	if err != nil {
		r.t.Fatal(err)
	}
	res, err := obj.Get(ctx, name)
	if err != nil {
		r.t.Fatalf("object %s: %v", name, err)
	}
	defer res.Close()
	data, err := io.ReadAll(res)
	if err != nil {
		r.t.Fatal(err)
	}
	return data
}

// pending is how many plans wait in server's queue, unacknowledged ones
// included.
func (r *rig) pending(server string) uint64 {
	r.t.Helper()
	name, _ := executor.ConsumerName(server)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := r.env.JS.Consumer(ctx, events.StreamExec, name)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return 0
	}
	if err != nil {
		r.t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		r.t.Fatal(err)
	}
	return info.NumPending + uint64(info.NumAckPending)
}

// eventually polls cond (bounded) until it holds.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 60s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func uuidOf(t testing.TB, s string) uuid.UUID {
	t.Helper()
	id, err := uuid.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// hangingPlans queues on server a script that starts a child and hangs
// past its 1s timeout, then a script that must run after it. The child
// would create the returned marker after 3s unless the kill reaches it.
func (r *rig) hangingPlans(server string) (hang, after events.PlanScript, marker string) {
	r.t.Helper()
	marker = filepath.Join(r.t.TempDir(), "child-survived")
	hang = script("hang", fmt.Sprintf("(sleep 3; touch %s) &\nsleep 600\n", marker), "1s")
	r.send(server, hang)
	after = script("after", "echo next", "1m")
	r.send(server, after)
	return hang, after, marker
}

// timedOut checks what hangingPlans queued: the hung script ended TIMEOUT,
// the next one ran, and the child died with the hung one.
func (r *rig) timedOut(server string, hang, after events.PlanScript, marker string) {
	r.t.Helper()
	if fin := r.finished(server, hang.ID); fin.State != events.StateTimeout || fin.Reason != "ran past 1s" || fin.ExitCode != -1 {
		r.t.Fatalf("hang: %+v", fin)
	}
	if fin := r.finished(server, after.ID); fin.State != events.StateSuccess {
		r.t.Fatalf("after: %+v", fin)
	}
	time.Sleep(2500 * time.Millisecond)
	if _, err := os.Stat(marker); err == nil {
		r.t.Fatal("a child of the timed-out script survived the kill")
	}
}
