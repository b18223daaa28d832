package eventstore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/infra/eventstore"
	"github.com/orchestra-fleet/orchestra/infra/eventstoretest"
	"github.com/orchestra-fleet/orchestra/infra/natstest"
	"github.com/orchestra-fleet/orchestra/services"
)

func newStore(t testing.TB, env *natstest.Env) *eventstore.Store {
	t.Helper()
	reg, err := events.NewRegistry(events.Catalog()...)
	if err != nil {
		t.Fatal(err)
	}
	s, err := eventstore.New(context.Background(), eventstore.Config{JetStream: env.JS, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestAcceptance(t *testing.T) {
	eventstoretest.Run(t, func(t *testing.T) (services.EventStore, int) {
		return newStore(t, natstest.Start(t)), eventstore.DefaultMaxUnitEvents
	})
}

func TestUnknownEventTypeDuringReplay(t *testing.T) {
	env := natstest.Start(t)
	s := newStore(t, env)
	ctx := context.Background()

	u, _ := services.NewUnit(events.Meta{}, time.Now())
	agg := events.Aggregate{Type: events.AggServer, ID: "web1"}
	u.Expect(agg, 0)
	if err := u.Add(agg, &events.ServerDeleted{Name: "web1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(ctx, u); err != nil {
		t.Fatal(err)
	}
	// A newer writer stored a type this registry does not know.
	reg, _ := events.NewRegistry(append(events.Catalog(), &future{})...)
	e, _ := events.New(agg, &future{}, events.Meta{}, time.Now())
	e.Unit, e.UnitSize = e.ID, 1
	m, err := reg.Encode(e)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.JS.PublishMsg(ctx, &nats.Msg{Subject: m.Subject, Header: m.Header, Data: m.Data}); err != nil {
		t.Fatal(err)
	}
	u2, _ := services.NewUnit(events.Meta{}, time.Now())
	u2.Expect(agg, 2)
	_ = u2.Add(agg, &events.ServerDeleted{Name: "web1"})
	if _, err := s.Append(ctx, u2); err != nil {
		t.Fatal(err)
	}

	var good int
	var unknown *events.UnknownTypeError
	for e, err := range s.Read(ctx, 1) {
		switch {
		case err == nil:
			good++
		case errors.As(err, &unknown):
			if e.Sequence != 2 || unknown.Type != "FutureThing" {
				t.Fatalf("unknown type error at sequence %d: %v", e.Sequence, err)
			}
		default:
			t.Fatalf("unexpected error: %v", err)
		}
	}
	if good != 2 || unknown == nil {
		t.Fatalf("replay: %d good events, unknown error %v; want 2 and an UnknownTypeError", good, unknown)
	}
	if services.ErrorCode(unknown) != services.EINVALID {
		t.Fatalf("ErrorCode(unknown type) = %s", services.ErrorCode(unknown))
	}
}

type future struct{}

func (future) EventType() events.Type { return events.Type{Name: "FutureThing", Version: 1} }

func TestStoreSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	env := natstest.StartAt(t, natsConfig(dir))
	s := newStore(t, env)
	u, _ := services.NewUnit(events.Meta{Actor: "restart"}, time.Now())
	for _, n := range []string{"a", "b", "c"} {
		agg := events.Aggregate{Type: events.AggServer, ID: n}
		u.Expect(agg, 0)
		_ = u.Add(agg, &events.ServerDeleted{Name: n})
	}
	want, err := s.Append(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	env.Stop()

	s = newStore(t, natstest.StartAt(t, natsConfig(dir)))
	var n int
	for e, err := range s.Read(context.Background(), 1) {
		if err != nil || e.Unit != u.ID {
			t.Fatalf("after restart: %v %+v", err, e)
		}
		n++
	}
	if n != 3 || want.Last != 3 {
		t.Fatalf("after restart: %d events (last %d), want 3", n, want.Last)
	}
}
