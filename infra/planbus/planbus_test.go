package planbus_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/infra/natstest"
	"github.com/orchestra-fleet/orchestra/infra/planbus"
	"github.com/orchestra-fleet/orchestra/projections"
)

func newBus(t *testing.T, env *natstest.Env) *planbus.Bus {
	t.Helper()
	b, err := planbus.New(context.Background(), env.JS)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSendIsIdempotentAndFindable(t *testing.T) {
	env := natstest.Start(t)
	ctx := context.Background()
	bus := newBus(t, env)
	if seq, err := bus.Published(ctx, ""); err != nil || seq != 0 {
		t.Fatalf("Published on an empty queue = %d, %v; want 0", seq, err)
	}
	unit := uuid.New()
	server := "web1.example.com" // a name that is not a plain token
	script := events.ScriptID(unit, server, "nginx")
	plan := events.Plan{Unit: unit, Sequence: 7, Server: server, Scripts: []events.PlanScript{{ID: script, Backend: "nginx", Script: "true\n"}}}
	rec := &events.ScriptPlanned{ID: script, Unit: unit, Sequence: 7, Server: server, Backend: "nginx", State: "RECEIVED", Script: "true\n"}
	unitRec := &events.UnitPlanned{Unit: unit, Sequence: 7, Operations: 1}
	for range 2 {
		if err := bus.Send(ctx, []events.Plan{plan}, []events.Result{rec, unitRec}); err != nil {
			t.Fatal(err)
		}
	}
	for stream, want := range map[string]uint64{events.StreamExec: 1, events.StreamResults: 2} {
		st, err := env.JS.Stream(ctx, stream)
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs != want {
			t.Errorf("%s holds %d messages after sending twice, want %d", stream, info.State.Msgs, want)
		}
	}
	for _, s := range []string{server, ""} {
		if seq, err := bus.Published(ctx, s); err != nil || seq != 7 {
			t.Errorf("Published(%q) = %d, %v; want 7", s, seq, err)
		}
	}
	if seq, err := bus.Published(ctx, "other"); err != nil || seq != 0 {
		t.Errorf("Published(other) = %d, %v; want 0", seq, err)
	}
	got, err := bus.Script(ctx, script)
	if err != nil || got.Server != server || got.Backend != "nginx" || got.Unit != unit {
		t.Fatalf("Script = %+v, %v", got, err)
	}
	if _, err := bus.Script(ctx, uuid.New()); !errors.Is(err, projections.ErrNotFound) {
		t.Errorf("Script of an unknown id: %v, want ErrNotFound", err)
	}
}

func TestMarkFencesASecondPlanner(t *testing.T) {
	env := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, b := newBus(t, env), newBus(t, env)
	for _, bus := range []*planbus.Bus{a, b} {
		if m, err := bus.Mark(ctx); err != nil || m != 0 {
			t.Fatalf("Mark = %d, %v; want 0", m, err)
		}
	}
	if err := a.SetMark(ctx, 5); err != nil {
		t.Fatal(err)
	}
	if err := a.SetMark(ctx, 9); err != nil {
		t.Fatal(err)
	}
	if err := b.SetMark(ctx, 6); err == nil || !strings.Contains(err.Error(), "another planner") {
		t.Fatalf("a second planner moved the mark: %v", err)
	}
	if m, err := b.Mark(ctx); err != nil || m != 9 {
		t.Fatalf("Mark after the first planner = %d, %v; want 9", m, err)
	}
	if err := b.SetMark(ctx, 12); err != nil {
		t.Fatalf("after reading the mark the second planner may go on: %v", err)
	}
	if err := a.SetMark(ctx, 10); err == nil {
		t.Fatal("the first planner moved the mark after the second took over")
	}
}

func TestMaxPlanLeavesRoomForHeaders(t *testing.T) {
	env := natstest.Start(t)
	bus := newBus(t, env)
	if got, max := bus.MaxPlan(), int(env.Conn.MaxPayload()); got <= 0 || got >= max {
		t.Fatalf("MaxPlan = %d with a max payload of %d", got, max)
	}
}
