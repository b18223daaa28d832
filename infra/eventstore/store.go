// Package eventstore implements services.EventStore on NATS JetStream.
//
// A unit of one event is a plain publish with compare-and-set on its
// aggregate; a larger unit is one JetStream atomic batch, in which the first
// event of every aggregate carries that aggregate's expectation. Every
// message carries the event id as Nats-Msg-Id, so a retried unit is
// recognised rather than written twice.
package eventstore

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/services"
)

// DefaultMaxUnitEvents is nats-server's default limit on the messages of
// one atomic batch, and so on the events of one unit of work.
const DefaultMaxUnitEvents = 1000

// Server error codes the store reacts to.
const (
	codeWrongLastSeq        = 10071 // expectation failed
	codeWrongLastSeqConst   = 10164 // expectation failed (replicated streams) or subject busy in another batch
	codeDuplicateInBatch    = 10201 // a batch message id was seen before: the unit is a retry
	codeDuplicateInProcess  = 10158 // the same message id is being stored right now
	codeBatchIncomplete     = 10176 // the server abandoned the batch
	codeBatchTooManyInflght = 10210 // too many open batches: back off
)

// Config of a Store.
type Config struct {
	JetStream jetstream.JetStream
	Registry  *events.Registry
	// MaxUnitEvents must not exceed the server's max_batch_size; units with
	// more events are refused before anything is sent.
	MaxUnitEvents int
	// Retries bounds how often Append re-sends a unit after a transient
	// refusal (another batch holding one of its aggregates, too many open
	// batches). Default 8.
	Retries int
}

// Store is the JetStream event store.
type Store struct {
	js      jetstream.JetStream
	stream  jetstream.Stream
	reg     *events.Registry
	maxUnit int
	retries int
}

var _ services.EventStore = (*Store)(nil)

// New opens the store on the EVENTS stream, which must already exist
// (streams.Provision).
func New(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.JetStream == nil || cfg.Registry == nil {
		return nil, errors.New("eventstore: JetStream and Registry are required")
	}
	if cfg.MaxUnitEvents <= 0 {
		cfg.MaxUnitEvents = DefaultMaxUnitEvents
	}
	if cfg.Retries <= 0 {
		cfg.Retries = 8
	}
	st, err := cfg.JetStream.Stream(ctx, events.StreamEvents)
	if err != nil {
		return nil, fmt.Errorf("eventstore: open stream %s: %w", events.StreamEvents, err)
	}
	return &Store{js: cfg.JetStream, stream: st, reg: cfg.Registry, maxUnit: cfg.MaxUnitEvents, retries: cfg.Retries}, nil
}

// Append commits u atomically. See services.EventStore.
func (s *Store) Append(ctx context.Context, u *services.Unit) (services.Appended, error) {
	if err := u.Validate(); err != nil {
		return services.Appended{}, err
	}
	if n := u.Len(); n > s.maxUnit {
		return services.Appended{}, services.Errorf(services.ETOOLARGE,
			"unit of work %s has %d events; one atomic commit holds at most %d: split the change into several units", u.ID, n, s.maxUnit)
	}
	envs := u.Envelopes()
	plan, err := s.encode(u, envs)
	if err != nil {
		return services.Appended{}, err
	}
	for attempt := 0; ; attempt++ {
		first, err := s.publish(ctx, plan)
		if err == nil {
			return services.Appended{First: first, Last: first + uint64(len(envs)) - 1}, nil
		}
		var apiErr *jetstream.APIError
		if !errors.As(err, &apiErr) {
			return services.Appended{}, fmt.Errorf("append unit %s: %w", u.ID, err)
		}
		switch apiErr.ErrorCode {
		case codeWrongLastSeq, codeWrongLastSeqConst, codeDuplicateInBatch, codeDuplicateInProcess:
			first, stored, err := s.stored(ctx, plan)
			if err != nil {
				return services.Appended{}, err
			}
			if stored {
				return services.Appended{First: first, Last: first + uint64(len(envs)) - 1}, nil
			}
			conflict, err := s.conflict(ctx, plan)
			if err != nil {
				return services.Appended{}, err
			}
			if conflict != nil {
				return services.Appended{}, conflict
			}
			// Every expectation holds now: another batch held one of our
			// aggregates while we published. Try again.
		case codeBatchIncomplete, codeBatchTooManyInflght:
		default:
			return services.Appended{}, fmt.Errorf("append unit %s: %w", u.ID, err)
		}
		if attempt >= s.retries {
			return services.Appended{}, services.Errorf(services.EUNAVAILABLE, "append unit %s: still refused after %d attempts: %v", u.ID, attempt+1, err)
		}
		if err := sleep(ctx, time.Duration(1<<attempt)*time.Millisecond); err != nil {
			return services.Appended{}, fmt.Errorf("append unit %s: %w", u.ID, err)
		}
	}
}

// unitPlan is a unit ready to send: one message per event, and the
// expectation of each aggregate in the order the unit first touches them.
type unitPlan struct {
	msgs   []events.Message
	guards []guard
}

type guard struct {
	agg      events.Aggregate
	filter   string
	expected uint64
	index    int // the unit's first event of agg
	eventID  string
}

func (s *Store) encode(u *services.Unit, envs []events.Envelope) (unitPlan, error) {
	maxPayload := int(s.js.Conn().MaxPayload())
	plan := unitPlan{msgs: make([]events.Message, len(envs))}
	seen := make(map[events.Aggregate]bool)
	for i, e := range envs {
		m, err := s.reg.Encode(e)
		if err != nil {
			return unitPlan{}, fmt.Errorf("events[%d] (%s of %s): %w", i, e.Type, e.Aggregate, err)
		}
		if !seen[e.Aggregate] {
			seen[e.Aggregate] = true
			filter, err := events.AggregateFilter(e.Aggregate)
			if err != nil {
				return unitPlan{}, err
			}
			expected, _ := u.Expected(e.Aggregate)
			plan.guards = append(plan.guards, guard{agg: e.Aggregate, filter: filter, expected: expected, index: i, eventID: e.ID.String()})
			m.Header[jetstream.ExpectedLastSubjSeqHeader] = []string{strconv.FormatUint(expected, 10)}
			m.Header[jetstream.ExpectedLastSubjSeqSubjHeader] = []string{filter}
		}
		if size := messageSize(m); size > maxPayload {
			return unitPlan{}, &services.Error{Code: services.ETOOLARGE, Field: fmt.Sprintf("events[%d]", i),
				Message: fmt.Sprintf("%s of %s is %d bytes; the NATS server accepts at most %d", e.Type, e.Aggregate, size, maxPayload)}
		}
		plan.msgs[i] = m
	}
	plan.msgs[0].Header[jetstream.ExpectedStreamHeader] = []string{events.StreamEvents}
	return plan, nil
}

// messageSize is what the server counts against max_payload: headers as
// sent ("NATS/1.0\r\n", "Key: value\r\n" each, "\r\n") plus the body.
func messageSize(m events.Message) int {
	n := len("NATS/1.0\r\n\r\n") + len(m.Data)
	for k, vs := range m.Header {
		for _, v := range vs {
			n += len(k) + len(": \r\n") + len(v)
		}
	}
	return n
}

// publish sends the plan once and returns the stream sequence of its first
// event.
func (s *Store) publish(ctx context.Context, plan unitPlan) (uint64, error) {
	msgs := make([]*nats.Msg, len(plan.msgs))
	for i, m := range plan.msgs {
		h := make(nats.Header, len(m.Header)+3)
		for k, v := range m.Header {
			h[k] = v
		}
		msgs[i] = &nats.Msg{Subject: m.Subject, Header: h, Data: m.Data}
	}
	if len(msgs) == 1 {
		ack, err := s.js.PublishMsg(ctx, msgs[0])
		if err != nil {
			return 0, err
		}
		return ack.Sequence, nil
	}
	ack, err := jetstreamext.PublishMsgBatch(ctx, s.js, msgs)
	if err != nil {
		return 0, err
	}
	return ack.Sequence - uint64(len(msgs)) + 1, nil
}

// stored tells whether the plan's unit is already in the log (a retry), and
// where. The unit's first event is the first event of its first aggregate,
// so it is the first message of that aggregate after its expected version.
func (s *Store) stored(ctx context.Context, plan unitPlan) (uint64, bool, error) {
	g := plan.guards[0]
	msg, err := s.stream.GetMsg(ctx, g.expected+1, jetstream.WithGetMsgSubject(g.filter))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("check for a retried unit: %w", err)
	}
	if msg.Header.Get(events.HeaderMsgID) != g.eventID {
		return 0, false, nil
	}
	return msg.Sequence, true, nil
}

// conflict finds the first aggregate whose version is not the expected one.
func (s *Store) conflict(ctx context.Context, plan unitPlan) (*services.ConflictError, error) {
	for _, g := range plan.guards {
		actual, err := s.version(ctx, g.filter)
		if err != nil {
			return nil, err
		}
		if actual != g.expected {
			return &services.ConflictError{Aggregate: g.agg, Expected: g.expected, Actual: actual}, nil
		}
	}
	return nil, nil
}

// version is the stream sequence of the last message under filter, 0 if none.
func (s *Store) version(ctx context.Context, filter string) (uint64, error) {
	msg, err := s.stream.GetLastMsgForSubject(ctx, filter)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("last sequence of %s: %w", filter, err)
	}
	return msg.Sequence, nil
}

// Load returns agg's events and version.
func (s *Store) Load(ctx context.Context, agg events.Aggregate) (services.History, error) {
	filter, err := events.AggregateFilter(agg)
	if err != nil {
		return services.History{}, err
	}
	last, err := s.version(ctx, filter)
	if err != nil || last == 0 {
		return services.History{}, err
	}
	var h services.History
	for e, err := range s.read(ctx, filter, 1, last) {
		if err != nil {
			return services.History{}, fmt.Errorf("load %s: %w", agg, err)
		}
		h.Events = append(h.Events, e)
	}
	h.Version = last
	return h, nil
}

// Read replays the log from sequence from to its current end.
func (s *Store) Read(ctx context.Context, from uint64) iter.Seq2[events.Envelope, error] {
	return func(yield func(events.Envelope, error) bool) {
		info, err := s.stream.Info(ctx)
		if err != nil {
			yield(events.Envelope{}, fmt.Errorf("read events: %w", err))
			return
		}
		for e, err := range s.read(ctx, events.SubjectEvents, from, info.State.LastSeq) {
			if !yield(e, err) {
				return
			}
		}
	}
}

// read yields the events under filter with sequences from…last.
func (s *Store) read(ctx context.Context, filter string, from, last uint64) iter.Seq2[events.Envelope, error] {
	return func(yield func(events.Envelope, error) bool) {
		if from == 0 {
			from = 1
		}
		if last < from {
			return
		}
		cons, err := s.js.OrderedConsumer(ctx, events.StreamEvents, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{filter},
			DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
			OptStartSeq:    from,
		})
		if err != nil {
			yield(events.Envelope{}, fmt.Errorf("read events: %w", err))
			return
		}
		it, err := cons.Messages(jetstream.PullMaxMessages(replayBuffer(last - from + 1)))
		if err != nil {
			yield(events.Envelope{}, fmt.Errorf("read events: %w", err))
			return
		}
		defer it.Stop()
		for {
			msg, err := it.Next(jetstream.NextContext(ctx))
			if err != nil {
				yield(events.Envelope{}, fmt.Errorf("read events: %w", err))
				return
			}
			meta, err := msg.Metadata()
			if err != nil {
				yield(events.Envelope{}, fmt.Errorf("read events: %w", err))
				return
			}
			seq := meta.Sequence.Stream
			e, err := s.reg.Decode(events.Message{Subject: msg.Subject(), Header: msg.Headers(), Data: msg.Data()})
			if err != nil {
				err = fmt.Errorf("event at sequence %d: %w", seq, err)
			}
			e.Sequence = seq
			if !yield(e, err) || seq >= last {
				return
			}
		}
	}
}

// Follow calls fn with every event from sequence from on, in order, in
// batches: a batch ends where the consumer has nothing more pending or at
// maxFollowBatch events. It follows the log live until ctx ends or fn fails,
// and returns that error (ctx's error when ctx ended).
func (s *Store) Follow(ctx context.Context, from uint64, fn func([]events.Envelope) error) error {
	if from == 0 {
		from = 1
	}
	cons, err := s.js.OrderedConsumer(ctx, events.StreamEvents, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.SubjectEvents},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    from,
	})
	if err != nil {
		return fmt.Errorf("follow events: %w", err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(maxFollowBatch))
	if err != nil {
		return fmt.Errorf("follow events: %w", err)
	}
	defer it.Stop()
	batch := make([]events.Envelope, 0, maxFollowBatch)
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("follow events: %w", err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("follow events: %w", err)
		}
		e, err := s.reg.Decode(events.Message{Subject: msg.Subject(), Header: msg.Headers(), Data: msg.Data()})
		if err != nil {
			return fmt.Errorf("follow events: event at sequence %d: %w", meta.Sequence.Stream, err)
		}
		e.Sequence = meta.Sequence.Stream
		batch = append(batch, e)
		if meta.NumPending == 0 || len(batch) == maxFollowBatch {
			if err := fn(batch); err != nil {
				return err
			}
			batch = batch[:0]
		}
	}
}

// maxFollowBatch bounds a Follow batch, and so a read model transaction.
const maxFollowBatch = 500

// replayBuffer sizes the consumer's pre-fetch to the work: small reads do
// not pull more than they need, long replays keep the pipe full.
func replayBuffer(n uint64) int {
	return int(min(max(n, 16), 4096))
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
