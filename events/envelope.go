// Package events is Orchestra's event catalog: the envelope every event
// travels in, the registry of event types and their payloads, the codec that
// maps envelopes to JetStream messages and back, and the subject names.
package events

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"
)

// Aggregate names one consistency boundary of the model: every event belongs
// to exactly one, and the event store guards each with its last sequence.
type Aggregate struct {
	Type string `json:"type"` // "server", "backend", … (ValidateIdent)
	ID   string `json:"id"`   // any name (ValidateName); encoded into a subject token
}

func (a Aggregate) String() string { return a.Type + "/" + a.ID }

// Validate reports why a is not a valid aggregate, naming the field.
func (a Aggregate) Validate() error {
	if err := ValidateIdent("aggregate.type", a.Type); err != nil {
		return err
	}
	return ValidateName("aggregate.id", a.ID)
}

// Envelope is one event with everything needed to route, order, correlate
// and audit it. Payload is the type's JSON document, decoded on demand with
// Registry.Payload.
type Envelope struct {
	ID            uuid.UUID       `json:"id"`
	Type          string          `json:"type"`
	Version       int             `json:"version"`
	Aggregate     Aggregate       `json:"aggregate"`
	Unit          uuid.UUID       `json:"unit"`
	UnitIndex     int             `json:"unit_index"`
	UnitSize      int             `json:"unit_size"`
	CorrelationID string          `json:"correlation_id,omitempty"`
	CausationID   string          `json:"causation_id,omitempty"`
	Actor         string          `json:"actor,omitempty"`
	Time          time.Time       `json:"time"`
	Payload       json.RawMessage `json:"payload"`
	// Sequence is the event's position in the EVENTS stream; zero until the
	// event has been read back from the store.
	Sequence uint64 `json:"sequence,omitempty"`
}

// Type identifies an event type and the version of its payload schema.
type Type struct {
	Name    string
	Version int
}

// Payload is implemented by every event payload struct of the catalog.
type Payload interface {
	EventType() Type
}

// Meta is what the caller of a change knows about it: who made it and why.
type Meta struct {
	Actor         string
	CorrelationID string
	CausationID   string
}

// Validate checks the metadata values that travel in message headers.
func (m Meta) Validate() error {
	for _, f := range []struct{ field, value string }{
		{"actor", m.Actor}, {"correlation_id", m.CorrelationID}, {"causation_id", m.CausationID},
	} {
		if f.value == "" {
			continue
		}
		if err := ValidateName(f.field, f.value); err != nil {
			return err
		}
	}
	return nil
}

// New wraps payload p in a fresh envelope for aggregate agg: a time-ordered
// (v7) id, the payload's type and version, and the given time. Unit fields are
// filled in when the event joins a unit of work.
func New(agg Aggregate, p Payload, meta Meta, at time.Time) (Envelope, error) {
	if err := agg.Validate(); err != nil {
		return Envelope{}, err
	}
	if err := meta.Validate(); err != nil {
		return Envelope{}, err
	}
	t := p.EventType()
	data, err := json.Marshal(p)
	if err != nil {
		return Envelope{}, fmt.Errorf("encode %s payload: %w", t.Name, err)
	}
	id, err := uuid.NewV7()
	if err != nil {
		return Envelope{}, fmt.Errorf("new event id: %w", err)
	}
	return Envelope{
		ID:            id,
		Type:          t.Name,
		Version:       t.Version,
		Aggregate:     agg,
		CorrelationID: meta.CorrelationID,
		CausationID:   meta.CausationID,
		Actor:         meta.Actor,
		Time:          at.UTC(),
		Payload:       data,
	}, nil
}

// FieldError says which input was wrong and why. Every validation failure in
// the catalog is one; services reports it as an invalid-input error.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

// UnknownTypeError is met when a message names an event type, or a version of
// it, that this registry does not know (for instance an event written by a
// newer Orchestra, read during replay by an older one).
type UnknownTypeError struct {
	Type    string
	Version int
}

func (e *UnknownTypeError) Error() string {
	if e.Version > 0 {
		return fmt.Sprintf("unknown event type %s version %d", e.Type, e.Version)
	}
	return fmt.Sprintf("unknown event type %q", e.Type)
}
