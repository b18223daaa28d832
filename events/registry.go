package events

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"time"

	"github.com/google/uuid"
)

// Registry knows the event types a process may write and read. It is built
// explicitly from a list of payload prototypes (usually Catalog()); there is
// no package-level registration.
type Registry struct {
	types map[string]registered
}

type registered struct {
	version int
	payload reflect.Type // the struct type behind the prototype pointer
}

// NewRegistry registers each prototype, a pointer to a payload struct.
// Duplicate names, bad names and non-pointer prototypes are errors.
func NewRegistry(prototypes ...Payload) (*Registry, error) {
	r := &Registry{types: make(map[string]registered, len(prototypes))}
	for _, p := range prototypes {
		t := p.EventType()
		if err := validateTypeName(t.Name); err != nil {
			return nil, err
		}
		if t.Version < 1 {
			return nil, fmt.Errorf("event type %s: version %d, want ≥ 1", t.Name, t.Version)
		}
		rt := reflect.TypeOf(p)
		if rt.Kind() != reflect.Pointer || rt.Elem().Kind() != reflect.Struct {
			return nil, fmt.Errorf("event type %s: prototype must be a pointer to a struct, not %s", t.Name, rt)
		}
		if _, dup := r.types[t.Name]; dup {
			return nil, fmt.Errorf("event type %s registered twice", t.Name)
		}
		r.types[t.Name] = registered{version: t.Version, payload: rt.Elem()}
	}
	return r, nil
}

// Check reports whether the registry can write (and later read) e's type.
func (r *Registry) Check(e Envelope) error {
	reg, ok := r.types[e.Type]
	if !ok {
		return &UnknownTypeError{Type: e.Type}
	}
	if e.Version < 1 || e.Version > reg.version {
		return &UnknownTypeError{Type: e.Type, Version: e.Version}
	}
	return nil
}

// Payload decodes e's payload into a new value of its registered type.
func (r *Registry) Payload(e Envelope) (Payload, error) {
	if err := r.Check(e); err != nil {
		return nil, err
	}
	v := reflect.New(r.types[e.Type].payload)
	dec := json.NewDecoder(bytes.NewReader(e.Payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v.Interface()); err != nil {
		return nil, &FieldError{Field: "payload", Reason: fmt.Sprintf("%s: %v", e.Type, err)}
	}
	return v.Interface().(Payload), nil
}

// Message is an event as JetStream stores it. Header has the shape of
// nats.Header, so conversion between them costs nothing.
type Message struct {
	Subject string
	Header  map[string][]string
	Data    []byte
}

// Header names of the wire format. The aggregate and the event type travel in
// the subject; the payload is the message body.
const (
	HeaderMsgID       = "Nats-Msg-Id" // the event id: JetStream de-duplicates on it
	HeaderVersion     = "Orchestra-Version"
	HeaderUnit        = "Orchestra-Unit"
	HeaderUnitIndex   = "Orchestra-Unit-Index"
	HeaderUnitSize    = "Orchestra-Unit-Size"
	HeaderTime        = "Orchestra-Time"
	HeaderActor       = "Orchestra-Actor"
	HeaderCorrelation = "Orchestra-Correlation"
	HeaderCausation   = "Orchestra-Causation"
)

// Encode validates e and turns it into a message. Nothing about e is trusted:
// a bad field is a *FieldError, an unregistered type an *UnknownTypeError.
func (r *Registry) Encode(e Envelope) (Message, error) {
	if err := r.Check(e); err != nil {
		return Message{}, err
	}
	if err := validateEnvelope(e); err != nil {
		return Message{}, err
	}
	if !isJSONObject(e.Payload) || !json.Valid(e.Payload) {
		return Message{}, &FieldError{Field: "payload", Reason: "must be a JSON object"}
	}
	subject, err := EventSubject(e.Aggregate, e.Type)
	if err != nil {
		return Message{}, err
	}
	h := make(map[string][]string, 9)
	h[HeaderMsgID] = []string{e.ID.String()}
	h[HeaderVersion] = []string{strconv.Itoa(e.Version)}
	h[HeaderUnit] = []string{e.Unit.String()}
	h[HeaderUnitIndex] = []string{strconv.Itoa(e.UnitIndex)}
	h[HeaderUnitSize] = []string{strconv.Itoa(e.UnitSize)}
	h[HeaderTime] = []string{e.Time.UTC().Format(time.RFC3339Nano)}
	setIf(h, HeaderActor, e.Actor)
	setIf(h, HeaderCorrelation, e.CorrelationID)
	setIf(h, HeaderCausation, e.CausationID)
	return Message{Subject: subject, Header: h, Data: e.Payload}, nil
}

// Decode turns a stored message back into an envelope, checking everything
// Encode guarantees. It never panics, whatever the input.
func (r *Registry) Decode(m Message) (Envelope, error) {
	agg, typ, err := ParseEventSubject(m.Subject)
	if err != nil {
		return Envelope{}, err
	}
	if err := validateTypeName(typ); err != nil {
		return Envelope{}, err
	}
	e := Envelope{Type: typ, Aggregate: agg, Payload: m.Data}
	if e.Version, err = headerInt(m.Header, HeaderVersion); err != nil {
		return Envelope{}, err
	}
	if err := r.Check(e); err != nil {
		return Envelope{}, err
	}
	if e.ID, err = headerUUID(m.Header, HeaderMsgID); err != nil {
		return Envelope{}, err
	}
	if e.Unit, err = headerUUID(m.Header, HeaderUnit); err != nil {
		return Envelope{}, err
	}
	if e.UnitIndex, err = headerInt(m.Header, HeaderUnitIndex); err != nil {
		return Envelope{}, err
	}
	if e.UnitSize, err = headerInt(m.Header, HeaderUnitSize); err != nil {
		return Envelope{}, err
	}
	ts := header(m.Header, HeaderTime)
	if e.Time, err = time.Parse(time.RFC3339Nano, ts); err != nil {
		return Envelope{}, &FieldError{Field: HeaderTime, Reason: fmt.Sprintf("%q is not an RFC 3339 time", ts)}
	}
	e.Actor = header(m.Header, HeaderActor)
	e.CorrelationID = header(m.Header, HeaderCorrelation)
	e.CausationID = header(m.Header, HeaderCausation)
	if err := validateEnvelope(e); err != nil {
		return Envelope{}, err
	}
	if !isJSONObject(m.Data) {
		return Envelope{}, &FieldError{Field: "payload", Reason: "must be a JSON object"}
	}
	return e, nil
}

func validateEnvelope(e Envelope) error {
	switch {
	case e.ID == uuid.Nil:
		return &FieldError{Field: "id", Reason: "must be set"}
	case e.Unit == uuid.Nil:
		return &FieldError{Field: "unit", Reason: "must be set"}
	case e.UnitSize < 1:
		return &FieldError{Field: "unit_size", Reason: fmt.Sprintf("is %d, want ≥ 1", e.UnitSize)}
	case e.UnitIndex < 0 || e.UnitIndex >= e.UnitSize:
		return &FieldError{Field: "unit_index", Reason: fmt.Sprintf("is %d, want 0 ≤ index < %d", e.UnitIndex, e.UnitSize)}
	case e.Time.IsZero():
		return &FieldError{Field: "time", Reason: "must be set"}
	}
	if err := e.Aggregate.Validate(); err != nil {
		return err
	}
	return Meta{Actor: e.Actor, CorrelationID: e.CorrelationID, CausationID: e.CausationID}.Validate()
}

// validateTypeName: an event type is a CamelCase identifier.
func validateTypeName(s string) error {
	if s == "" || len(s) > 64 || s[0] < 'A' || s[0] > 'Z' {
		return &FieldError{Field: "type", Reason: fmt.Sprintf("%q: an event type is CamelCase, starting with an upper-case letter, at most 64 bytes", s)}
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return &FieldError{Field: "type", Reason: fmt.Sprintf("%q: only letters and digits are allowed", s)}
		}
	}
	return nil
}

// isJSONObject is a cheap shape check used on the replay path; Payload does
// the full decode when a consumer needs the fields.
func isJSONObject(b []byte) bool {
	b = bytes.TrimSpace(b)
	return len(b) >= 2 && b[0] == '{' && b[len(b)-1] == '}'
}

func header(h map[string][]string, key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func setIf(h map[string][]string, key, value string) {
	if value != "" {
		h[key] = []string{value}
	}
}

func headerInt(h map[string][]string, key string) (int, error) {
	s := header(h, key)
	n, err := strconv.Atoi(s)
	if err != nil || strconv.Itoa(n) != s {
		return 0, &FieldError{Field: key, Reason: fmt.Sprintf("%q is not a decimal integer", s)}
	}
	return n, nil
}

func headerUUID(h map[string][]string, key string) (uuid.UUID, error) {
	s := header(h, key)
	id, err := uuid.Parse(s)
	if err != nil || id.String() != s {
		return uuid.Nil, &FieldError{Field: key, Reason: fmt.Sprintf("%q is not a canonical UUID", s)}
	}
	return id, nil
}
