package services

import (
	"context"
	"fmt"
	"iter"
	"time"

	"github.com/google/uuid"

	"github.com/orchestra-fleet/orchestra/events"
)

// EventStore is the append-only log the write side decides against.
// infra/eventstore implements it on JetStream; infra/eventstoretest is the
// acceptance suite every implementation passes.
type EventStore interface {
	// Append commits every event of u or none of them. Each aggregate in u is
	// guarded by its expectation; a stale one is a *ConflictError. Appending
	// the same unit again (same event ids) succeeds without writing twice.
	Append(ctx context.Context, u *Unit) (Appended, error)
	// Load returns one aggregate's events in order and its version: the
	// stream sequence of its last event, 0 when it has none.
	Load(ctx context.Context, agg events.Aggregate) (History, error)
	// Read yields every event from stream sequence from (1 = the start) up to
	// the end of the log as it was when Read was called, in commit order.
	Read(ctx context.Context, from uint64) iter.Seq2[events.Envelope, error]
}

// Appended says where a unit landed: its events hold the stream sequences
// First…Last, in unit order, with nothing between them.
type Appended struct {
	First, Last uint64
}

// History is one aggregate's events and its version.
type History struct {
	Events  []events.Envelope
	Version uint64
}

// Unit is a unit of work: the events of one API call or one apply, with the
// version each touched aggregate is expected to be at. It is committed as a
// whole or not at all.
type Unit struct {
	ID     uuid.UUID
	meta   events.Meta
	at     time.Time
	events []events.Envelope
	expect map[events.Aggregate]uint64
}

// NewUnit starts a unit of work made by meta's actor at time at.
func NewUnit(meta events.Meta, at time.Time) (*Unit, error) {
	if err := meta.Validate(); err != nil {
		return nil, err
	}
	id, err := uuid.NewV7()
	if err != nil {
		return nil, fmt.Errorf("new unit id: %w", err)
	}
	return &Unit{ID: id, meta: meta, at: at, expect: make(map[events.Aggregate]uint64)}, nil
}

// Expect guards agg: the unit commits only if agg's version is still
// version (0: agg must not exist yet).
func (u *Unit) Expect(agg events.Aggregate, version uint64) {
	u.expect[agg] = version
}

// Add appends an event for agg with payload p.
func (u *Unit) Add(agg events.Aggregate, p events.Payload) error {
	e, err := events.New(agg, p, u.meta, u.at)
	if err != nil {
		return err
	}
	e.Unit = u.ID
	e.UnitIndex = len(u.events)
	u.events = append(u.events, e)
	return nil
}

// Len is the number of events in the unit.
func (u *Unit) Len() int { return len(u.events) }

// Expected returns agg's expectation and whether the unit has one.
func (u *Unit) Expected(agg events.Aggregate) (uint64, bool) {
	v, ok := u.expect[agg]
	return v, ok
}

// Envelopes returns the unit's events, complete with the unit size.
func (u *Unit) Envelopes() []events.Envelope {
	out := make([]events.Envelope, len(u.events))
	for i, e := range u.events {
		e.UnitSize = len(u.events)
		out[i] = e
	}
	return out
}

// Validate checks the unit can be appended: it has events, and every
// aggregate it touches has exactly one expectation and no expectation is
// left without an event.
func (u *Unit) Validate() error {
	if len(u.events) == 0 {
		return Errorf(EINVALID, "unit of work %s has no events", u.ID)
	}
	touched := make(map[events.Aggregate]bool, len(u.expect))
	for i, e := range u.events {
		if _, ok := u.expect[e.Aggregate]; !ok {
			return FieldErrorf(EINVALID, fmt.Sprintf("events[%d]", i), "%s has no expected version in the unit", e.Aggregate)
		}
		touched[e.Aggregate] = true
	}
	for agg := range u.expect {
		if !touched[agg] {
			return Errorf(EINVALID, "unit of work %s expects a version of %s but has no event for it", u.ID, agg)
		}
	}
	return nil
}
