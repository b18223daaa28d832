package services_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/infra/eventstore"
	"github.com/orchestra-fleet/orchestra/infra/natstest"
	"github.com/orchestra-fleet/orchestra/infra/routeexpr"
	"github.com/orchestra-fleet/orchestra/infra/secrets"
	"github.com/orchestra-fleet/orchestra/services"
)

// admin, operator and viewer are principals of each role.
var (
	admin    = services.Principal{Name: "alice", Role: services.RoleAdmin}
	operator = services.Principal{Name: "oscar", Role: services.RoleOperator}
	viewer   = services.Principal{Name: "vera", Role: services.RoleViewer}
)

// harness is a real embedded JetStream server, an event store on it and a
// synced service.
type harness struct {
	env    *natstest.Env
	reg    *events.Registry
	store  *eventstore.Store
	sealer *secrets.Sealer
	svc    *services.Service
}

func newHarness(t testing.TB) *harness {
	t.Helper()
	h := &harness{env: natstest.Start(t)}
	var err error
	if h.reg, err = events.NewRegistry(events.Catalog()...); err != nil {
		t.Fatal(err)
	}
	if h.store, err = eventstore.New(context.Background(), eventstore.Config{JetStream: h.env.JS, Registry: h.reg}); err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i + 1)
	}
	if h.sealer, err = secrets.New(key); err != nil {
		t.Fatal(err)
	}
	h.svc = h.newService(t)
	return h
}

// newService returns another synced service over the same store, as a
// second process would have.
func (h *harness) newService(t testing.TB) *services.Service {
	t.Helper()
	svc, err := services.New(services.Config{Store: h.store, Registry: h.reg, Compiler: routeexpr.Compiler{}, Sealer: h.sealer})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	return svc
}

// lastSeq is the last sequence of the EVENTS stream.
func (h *harness) lastSeq(t testing.TB) uint64 {
	t.Helper()
	st, err := h.env.JS.Stream(context.Background(), events.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

// apply decodes docs (JSON documents) and applies them as admin.
func (h *harness) apply(t testing.TB, docs ...string) services.ApplyResult {
	t.Helper()
	res, err := h.applyAs(admin, docs...)
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	return res
}

func (h *harness) applyAs(p services.Principal, docs ...string) (services.ApplyResult, error) {
	return applyWith(h.svc, p, docs...)
}

func applyWith(svc *services.Service, p services.Principal, docs ...string) (services.ApplyResult, error) {
	req, err := services.DecodeApply([]byte(`{"objects": [` + strings.Join(docs, ",") + `]}`))
	if err != nil {
		return services.ApplyResult{}, err
	}
	return svc.Apply(context.Background(), p, req)
}

// payloads returns the payloads of every event from sequence from on.
func (h *harness) payloads(t testing.TB, from uint64) []events.Payload {
	t.Helper()
	var out []events.Payload
	for e, err := range h.store.Read(context.Background(), from) {
		if err != nil {
			t.Fatal(err)
		}
		p, err := h.reg.Payload(e)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

// lastPayload returns the payload of the stream's last event.
func lastPayload[T events.Payload](t testing.TB, h *harness) T {
	t.Helper()
	ps := h.payloads(t, h.lastSeq(t))
	if len(ps) != 1 {
		t.Fatalf("read %d events at the end of the log, want 1", len(ps))
	}
	p, ok := ps[0].(T)
	if !ok {
		t.Fatalf("last event is %T", ps[0])
	}
	return p
}

// wantError checks err is an *services.Error (or a conflict) with code, on
// field, and that its message holds every one of words.
func wantError(t testing.TB, err error, code, field string, words ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; want %s on %q", code, field)
	}
	if got := services.ErrorCode(err); got != code {
		t.Fatalf("ErrorCode = %q, want %q (err: %v)", got, code, err)
	}
	var e *services.Error
	if errors.As(err, &e) {
		if e.Field != field {
			t.Fatalf("Field = %q, want %q (err: %v)", e.Field, field, err)
		}
		if strings.TrimSpace(e.Message) == "" {
			t.Fatalf("empty message (err: %#v)", e)
		}
	} else if field != "" {
		t.Fatalf("err is %T, not *services.Error with field %q: %v", err, field, err)
	}
	for _, w := range words {
		if !strings.Contains(err.Error(), w) {
			t.Fatalf("error %q does not mention %q", err, w)
		}
	}
}

// doc renders a JSON document from fields.
func doc(t testing.TB, fields map[string]any) string {
	t.Helper()
	b, err := json.Marshal(fields)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Valid documents of each kind.
const (
	serverWeb1  = `{"kind":"Server","name":"web1","address":"10.0.0.1"}`
	backendWeb  = `{"kind":"Backend","name":"web","type":"vhost","actions":{"save":"echo {{.name}}"}}`
	routeWeb    = `{"kind":"Route","backend":"web","server":"web1"}`
	resourceWeb = `{"kind":"Resource","type":"vhost","name":"example.com","attrs":{"port":80}}`
)
