package events_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/orchestra-fleet/orchestra/events"
)

func registry(t testing.TB) *events.Registry {
	t.Helper()
	r, err := events.NewRegistry(events.Catalog()...)
	if err != nil {
		t.Fatalf("catalog does not build a registry: %v", err)
	}
	return r
}

func TestToken(t *testing.T) {
	tests := []struct {
		name, token string
	}{
		{"web1", "web1"},
		{"db_primary-2", "db_primary-2"},
		{"web1.example.com", "web1=2Eexample=2Ecom"},
		{"a b", "a=20b"},
		{"a=b", "a=3Db"},
		{"*", "=2A"},
		{">", "=3E"},
		{"a/b\\c", "a=2Fb=5Cc"},
		{"café", "caf=C3=A9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok, err := events.Token(tt.name)
			if err != nil || tok != tt.token {
				t.Fatalf("Token(%q) = %q, %v; want %q", tt.name, tok, err, tt.token)
			}
			back, err := events.ParseToken(tok)
			if err != nil || back != tt.name {
				t.Fatalf("ParseToken(%q) = %q, %v; want %q", tok, back, err, tt.name)
			}
		})
	}
}

func TestTokenRefusesBadInput(t *testing.T) {
	for _, name := range []string{"", "tab\there", "nul\x00", "\xff\xfe", strings.Repeat("n", events.MaxNameLen+1)} {
		if _, err := events.Token(name); !isFieldError(err) {
			t.Errorf("Token(%q): %v, want a field error", name, err)
		}
	}
	// Tokens Token never produces: lower-case hex, an escaped plain byte,
	// a truncated escape, a raw dot or wildcard.
	for _, tok := range []string{"", "a=2e", "=41", "a=2", "a.b", "a*", "a=", "=0A"} {
		if _, err := events.ParseToken(tok); !isFieldError(err) {
			t.Errorf("ParseToken(%q): %v, want a field error", tok, err)
		}
	}
}

func isFieldError(err error) bool {
	var f *events.FieldError
	return errors.As(err, &f) && f.Field != "" && f.Reason != ""
}

func TestSubjects(t *testing.T) {
	agg := events.Aggregate{Type: events.AggServer, ID: "web1.example.com"}
	subj, err := events.EventSubject(agg, "ServerSaved")
	if err != nil || subj != "orchestra.evt.server.web1=2Eexample=2Ecom.ServerSaved" {
		t.Fatalf("EventSubject = %q, %v", subj, err)
	}
	filter, _ := events.AggregateFilter(agg)
	if filter != "orchestra.evt.server.web1=2Eexample=2Ecom.>" {
		t.Fatalf("AggregateFilter = %q", filter)
	}
	back, typ, err := events.ParseEventSubject(subj)
	if err != nil || back != agg || typ != "ServerSaved" {
		t.Fatalf("ParseEventSubject = %v %q %v", back, typ, err)
	}
	for _, bad := range []events.Aggregate{{Type: "Server", ID: "x"}, {Type: "", ID: "x"}, {Type: "server.x", ID: "x"}, {Type: "server", ID: ""}} {
		if _, err := events.EventSubject(bad, "ServerSaved"); !isFieldError(err) {
			t.Errorf("EventSubject(%+v): %v, want a field error", bad, err)
		}
	}
}

func TestRegistryRefusesBadCatalogs(t *testing.T) {
	if _, err := events.NewRegistry(&events.ServerSaved{}, &events.ServerSaved{}); err == nil {
		t.Error("duplicate type accepted")
	}
	if _, err := events.NewRegistry(badName{}); err == nil {
		t.Error("lower-case type name accepted")
	}
	if _, err := events.NewRegistry(valuePrototype{}); err == nil {
		t.Error("non-pointer prototype accepted")
	}
}

type badName struct{}

func (badName) EventType() events.Type { return events.Type{Name: "lower", Version: 1} }

type valuePrototype struct{}

func (valuePrototype) EventType() events.Type { return events.Type{Name: "Value", Version: 1} }

func sample(t testing.TB) events.Envelope {
	t.Helper()
	p := &events.ServerSaved{Server: events.Server{Name: "web1.example.com", Address: "10.0.0.5", Port: 22, Method: "ssh", Active: true}, Changed: []string{"address"}}
	e, err := events.New(events.Aggregate{Type: events.AggServer, ID: "web1.example.com"}, p,
		events.Meta{Actor: "admin", CorrelationID: "req-42", CausationID: "cmd-7"}, time.Date(2026, 11, 23, 10, 0, 0, 123456789, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	e.Unit = uuid.Must(uuid.NewV7())
	e.UnitIndex, e.UnitSize = 1, 3
	return e
}

func TestCodecRoundTrip(t *testing.T) {
	r := registry(t)
	e := sample(t)
	if e.ID.Version() != 7 {
		t.Fatalf("event id is UUID v%d, want v7", e.ID.Version())
	}
	m, err := r.Encode(e)
	if err != nil {
		t.Fatal(err)
	}
	if m.Header[events.HeaderMsgID][0] != e.ID.String() {
		t.Fatalf("Nats-Msg-Id = %v, want the event id", m.Header[events.HeaderMsgID])
	}
	got, err := r.Decode(m)
	if err != nil {
		t.Fatal(err)
	}
	if !equal(got, e) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, e)
	}
	p, err := r.Payload(got)
	if err != nil {
		t.Fatal(err)
	}
	if s := p.(*events.ServerSaved); s.Server.Address != "10.0.0.5" || s.Changed[0] != "address" {
		t.Fatalf("payload = %+v", s)
	}
}

func TestCodecRefusesBadEnvelopes(t *testing.T) {
	r := registry(t)
	tests := []struct {
		name   string
		mutate func(*events.Envelope)
		field  string
	}{
		{"nil id", func(e *events.Envelope) { e.ID = uuid.Nil }, "id"},
		{"nil unit", func(e *events.Envelope) { e.Unit = uuid.Nil }, "unit"},
		{"index past size", func(e *events.Envelope) { e.UnitIndex = 3 }, "unit_index"},
		{"zero time", func(e *events.Envelope) { e.Time = time.Time{} }, "time"},
		{"header injection in actor", func(e *events.Envelope) { e.Actor = "x\r\nNats-Msg-Id: y" }, "actor"},
		{"payload not an object", func(e *events.Envelope) { e.Payload = json.RawMessage(`[1]`) }, "payload"},
		{"payload not JSON", func(e *events.Envelope) { e.Payload = json.RawMessage(`{oops}`) }, "payload"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := sample(t)
			tt.mutate(&e)
			_, err := r.Encode(e)
			var f *events.FieldError
			if !errors.As(err, &f) || f.Field != tt.field {
				t.Fatalf("Encode: %v, want a field error on %q", err, tt.field)
			}
		})
	}
	e := sample(t)
	e.Type = "NoSuchEvent"
	var u *events.UnknownTypeError
	if _, err := r.Encode(e); !errors.As(err, &u) {
		t.Fatalf("Encode of an unknown type: %v", err)
	}
	e = sample(t)
	e.Version = 2
	if _, err := r.Encode(e); !errors.As(err, &u) || u.Version != 2 {
		t.Fatalf("Encode of a newer version: %v", err)
	}
}

func equal(a, b events.Envelope) bool {
	return a.ID == b.ID && a.Type == b.Type && a.Version == b.Version && a.Aggregate == b.Aggregate &&
		a.Unit == b.Unit && a.UnitIndex == b.UnitIndex && a.UnitSize == b.UnitSize &&
		a.CorrelationID == b.CorrelationID && a.CausationID == b.CausationID && a.Actor == b.Actor &&
		a.Time.Equal(b.Time) && string(a.Payload) == string(b.Payload)
}

// FuzzDecode feeds arbitrary messages to the decoder: it must never panic,
// and whatever it accepts must encode back to a message that decodes to the
// same envelope.
func FuzzDecode(f *testing.F) {
	r := registry(f)
	m, err := r.Encode(sample(f))
	if err != nil {
		f.Fatal(err)
	}
	h := m.Header
	f.Add(m.Subject, h[events.HeaderMsgID][0], h[events.HeaderVersion][0], h[events.HeaderUnit][0],
		h[events.HeaderUnitIndex][0], h[events.HeaderUnitSize][0], h[events.HeaderTime][0], h[events.HeaderActor][0], m.Data)
	f.Add("orchestra.evt.server.=2E.ServerDeleted", uuid.NewString(), "1", uuid.NewString(), "0", "1", "2026-01-01T00:00:00Z", "", []byte(`{"name":"."}`))
	f.Fuzz(func(t *testing.T, subject, id, version, unit, index, size, at, actor string, data []byte) {
		msg := events.Message{Subject: subject, Data: data, Header: map[string][]string{
			events.HeaderMsgID: {id}, events.HeaderVersion: {version}, events.HeaderUnit: {unit},
			events.HeaderUnitIndex: {index}, events.HeaderUnitSize: {size}, events.HeaderTime: {at}, events.HeaderActor: {actor},
		}}
		e, err := r.Decode(msg)
		if err != nil {
			return
		}
		m2, err := r.Encode(e)
		if err != nil {
			// Decode checks the payload's shape only; Encode also checks it
			// is valid JSON.
			if json.Valid(e.Payload) {
				t.Fatalf("decoded envelope does not encode: %v\n%+v", err, e)
			}
			return
		}
		e2, err := r.Decode(m2)
		if err != nil || !equal(e, e2) {
			t.Fatalf("encode∘decode is not stable: %v\n%+v\n%+v", err, e, e2)
		}
	})
}

// FuzzToken: every valid name round-trips and its token is a single subject
// token; ParseToken never panics and accepts only canonical tokens.
func FuzzToken(f *testing.F) {
	for _, s := range []string{"web1", "web1.example.com", "a=3Db", "=", "", "café", "a b*>"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if tok, err := events.Token(s); err == nil {
			if strings.ContainsAny(tok, ".*> \t\r\n/\\") || tok == "" {
				t.Fatalf("Token(%q) = %q is not a valid subject token", s, tok)
			}
			back, err := events.ParseToken(tok)
			if err != nil || back != s {
				t.Fatalf("ParseToken(Token(%q)) = %q, %v", s, back, err)
			}
		}
		if name, err := events.ParseToken(s); err == nil {
			if tok, _ := events.Token(name); tok != s {
				t.Fatalf("ParseToken accepted non-canonical %q (canonical %q)", s, tok)
			}
		}
	})
}
