// Package planbus carries plans to the servers' queues and the planner's
// records to RESULTS, on JetStream. It implements projections.Outbox.
package planbus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/gateway"
	"github.com/orchestra-fleet/orchestra/infra/streams"
	"github.com/orchestra-fleet/orchestra/projections"
)

// Headers of a plan message besides Nats-Msg-Id.
const (
	HeaderUnit     = "Orchestra-Unit"
	HeaderSequence = "Orchestra-Sequence" // EVENTS sequence of the unit's last event
)

// markKey is the key of the planner's mark in streams.PlannerBucket.
const markKey = "published"

// headroom is what a plan message leaves of the connection's max payload
// for its headers.
const headroom = 1 << 10

// Bus is the JetStream outbox of the planner.
type Bus struct {
	js      jetstream.JetStream
	exec    jetstream.Stream
	results jetstream.Stream
	kv      jetstream.KeyValue
	rev     uint64 // revision of the mark this process last read or wrote
}

var _ projections.Outbox = (*Bus)(nil)

// New opens the bus on the provisioned streams and bucket.
func New(ctx context.Context, js jetstream.JetStream) (*Bus, error) {
	exec, err := js.Stream(ctx, events.StreamExec)
	if err != nil {
		return nil, fmt.Errorf("planbus: stream %s: %w", events.StreamExec, err)
	}
	results, err := js.Stream(ctx, events.StreamResults)
	if err != nil {
		return nil, fmt.Errorf("planbus: stream %s: %w", events.StreamResults, err)
	}
	kv, err := js.KeyValue(ctx, streams.PlannerBucket)
	if err != nil {
		return nil, fmt.Errorf("planbus: bucket %s: %w", streams.PlannerBucket, err)
	}
	return &Bus{js: js, exec: exec, results: results, kv: kv}, nil
}

// Mark implements projections.Outbox.
func (b *Bus) Mark(ctx context.Context) (uint64, error) {
	e, err := b.kv.Get(ctx, markKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		b.rev = 0
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read the planner's mark: %w", err)
	}
	seq, err := strconv.ParseUint(string(e.Value()), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("the planner's mark %q: %w", e.Value(), err)
	}
	b.rev = e.Revision()
	return seq, nil
}

// Marked is how far the active planner, in whichever process, has
// published: the mark as stored, read without taking part in its
// compare-and-set.
func (b *Bus) Marked(ctx context.Context) (uint64, error) {
	e, err := b.kv.Get(ctx, markKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read the planner's mark: %w", err)
	}
	return strconv.ParseUint(string(e.Value()), 10, 64)
}

// SetMark implements projections.Outbox with a compare-and-set on the
// mark's revision.
func (b *Bus) SetMark(ctx context.Context, seq uint64) error {
	val := []byte(strconv.FormatUint(seq, 10))
	var rev uint64
	var err error
	if b.rev == 0 {
		rev, err = b.kv.Create(ctx, markKey, val)
	} else {
		rev, err = b.kv.Update(ctx, markKey, val, b.rev)
	}
	var apiErr *jetstream.APIError
	if errors.Is(err, jetstream.ErrKeyExists) || errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
		return fmt.Errorf("another planner published meanwhile (the mark moved past revision %d); this one stops", b.rev)
	}
	if err != nil {
		return fmt.Errorf("move the planner's mark to %d: %w", seq, err)
	}
	b.rev = rev
	return nil
}

// Published implements projections.Outbox. It reads the last message on
// the subject; when that is not a plan, the answer is 0.
func (b *Bus) Published(ctx context.Context, server string) (uint64, error) {
	subject := events.SubjectExec
	if server != "" {
		var err error
		if subject, err = events.ExecSubject(server); err != nil {
			return 0, err
		}
	}
	msg, err := streams.LastMsg(ctx, b.js, b.exec, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("last plan on %s: %w", subject, err)
	}
	// A message without the header is not a plan (someone published it by
	// hand): it says nothing about what was planned.
	seq, _ := strconv.ParseUint(msg.Header.Get(HeaderSequence), 10, 64)
	return seq, nil
}

// MaxPlan implements projections.Outbox.
func (b *Bus) MaxPlan() int {
	return int(b.js.Conn().MaxPayload()) - headroom
}

// Send implements projections.Outbox: every message is published at once
// and then every acknowledgement awaited.
func (b *Bus) Send(ctx context.Context, plans []events.Plan, records []events.Result) error {
	futures := make([]jetstream.PubAckFuture, 0, len(plans)+len(records))
	publish := func(subject, id string, header nats.Header, v any) error {
		data, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("encode %s: %w", subject, err)
		}
		if header == nil {
			header = nats.Header{}
		}
		header.Set(jetstream.MsgIDHeader, id)
		f, err := b.js.PublishMsgAsync(&nats.Msg{Subject: subject, Header: header, Data: data})
		if err != nil {
			return fmt.Errorf("publish %s: %w", subject, err)
		}
		futures = append(futures, f)
		return nil
	}
	for _, p := range plans {
		subject, err := events.ExecSubject(p.Server)
		if err != nil {
			return err
		}
		h := nats.Header{HeaderUnit: {p.Unit.String()}, HeaderSequence: {strconv.FormatUint(p.Sequence, 10)}}
		if err := publish(subject, p.MsgID(), h, p); err != nil {
			return err
		}
	}
	for _, r := range records {
		subject, id, err := recordSubject(r)
		if err != nil {
			return err
		}
		if err := publish(subject, id, nil, r); err != nil {
			return err
		}
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return fmt.Errorf("publish %s: %w", f.Msg().Subject, err)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// recordSubject is where a record goes and its message id.
func recordSubject(r events.Result) (subject, id string, err error) {
	switch r := r.(type) {
	case *events.ScriptPlanned:
		subject, err = events.ScriptSubject(r.Server, r.ID, r.ResultType())
		return subject, r.ID.String() + "." + r.ResultType(), err
	case *events.UnitPlanned:
		return events.UnitSubject(r.Unit, r.ResultType()), r.Unit.String() + "." + r.ResultType(), nil
	}
	return "", "", fmt.Errorf("planbus: no subject for a %T", r)
}

// Script returns the planner's record of a script.
func (b *Bus) Script(ctx context.Context, id uuid.UUID) (events.ScriptPlanned, error) {
	var rec events.ScriptPlanned
	msg, err := streams.LastMsg(ctx, b.js, b.results, events.ScriptFilter(id, rec.ResultType()))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return rec, fmt.Errorf("script %s: %w", id, projections.ErrNotFound)
	}
	if err != nil {
		return rec, fmt.Errorf("script %s: %w", id, err)
	}
	if err := json.Unmarshal(msg.Data, &rec); err != nil {
		return rec, fmt.Errorf("script %s: %w", id, err)
	}
	return rec, nil
}

// DecodeResult decodes a message of RESULTS by the result type its subject
// ends with, and checks that it is about what its subject says: the
// script's id and server (orchestra.res.<server>.<id>.<type>), or the
// unit's id (orchestra.unit.<id>.UnitPlanned). An agent may publish only
// under its own server, so a payload naming another server or script is
// refused rather than folded into their logs.
func DecodeResult(subject string, data []byte) (events.Result, error) {
	parts := strings.Split(subject, ".")
	var r events.Result
	switch parts[len(parts)-1] {
	case "ScriptPlanned":
		r = &events.ScriptPlanned{}
	case "UnitPlanned":
		r = &events.UnitPlanned{}
	case "ScriptStarted":
		r = &events.ScriptStarted{}
	case "ScriptOutput":
		r = &events.ScriptOutput{}
	case "ScriptFinished":
		r = &events.ScriptFinished{}
	default:
		return nil, fmt.Errorf("%s: not a result subject", subject)
	}
	if err := json.Unmarshal(data, r); err != nil {
		return nil, fmt.Errorf("%s: %w", subject, err)
	}
	if err := matchSubject(parts, r); err != nil {
		return nil, fmt.Errorf("%s: %w", subject, err)
	}
	return r, nil
}

// matchSubject checks that r is about what the parts of its subject name.
func matchSubject(parts []string, r events.Result) error {
	if u, ok := r.(*events.UnitPlanned); ok {
		if len(parts) != 4 || parts[1] != "unit" || parts[2] != u.Unit.String() {
			return fmt.Errorf("the record is about unit %s", u.Unit)
		}
		return nil
	}
	if len(parts) != 5 || parts[1] != "res" {
		return errors.New("not a script's subject")
	}
	server, err := events.ParseToken(parts[2])
	if err != nil {
		return err
	}
	// A script's id is derived from its unit, server and backend, so a
	// result that names them all is bound to its server: one published
	// under another server's subject cannot pass for it. Output names
	// only the script; the fold checks it against the script's log.
	var id, unit uuid.UUID
	var named, backend string
	switch r := r.(type) {
	case *events.ScriptPlanned:
		id, unit, named, backend = r.ID, r.Unit, r.Server, r.Backend
	case *events.ScriptStarted:
		id, unit, named, backend = r.ID, r.Unit, r.Server, r.Backend
	case *events.ScriptOutput:
		id, named = r.ID, server
	case *events.ScriptFinished:
		id, unit, named, backend = r.ID, r.Unit, r.Server, r.Backend
	}
	if parts[3] != id.String() {
		return fmt.Errorf("the result is about script %s", id)
	}
	if named != server {
		return fmt.Errorf("the result names server %q", named)
	}
	if _, output := r.(*events.ScriptOutput); !output && id != events.ScriptID(unit, server, backend) {
		return fmt.Errorf("script %s is not the script of backend %q on server %q in unit %s", id, backend, server, unit)
	}
	return nil
}

// SubjectServer is the server a script's subject on RESULTS names, "" for
// another subject.
func SubjectServer(subject string) string {
	parts := strings.Split(subject, ".")
	if len(parts) != 5 || parts[1] != "res" {
		return ""
	}
	server, _ := events.ParseToken(parts[2])
	return server
}

// FollowResults implements projections.ResultsSource: it calls fn with
// every result from sequence from on, in order, in batches of at most
// maxFollowBatch, following RESULTS live until ctx ends or fn fails. A
// message that is not a well-formed result carries why in its envelope.
// When RESULTS holds nothing from from on but has gone past it (retention
// removed everything), the first batch is one envelope with no result at
// its last sequence: the read models are up to date there.
func (b *Bus) FollowResults(ctx context.Context, from uint64, fn func([]projections.ResultEnvelope) error) error {
	from = max(from, 1)
	first, last, err := b.Bounds(ctx)
	if err != nil {
		return err
	}
	if first > last && last >= from {
		if err := fn([]projections.ResultEnvelope{{Sequence: last}}); err != nil {
			return err
		}
		from = last + 1
	}
	cons, err := b.consumer(ctx, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: from})
	if err != nil {
		return err
	}
	defer b.drop(cons)
	batch := make([]projections.ResultEnvelope, 0, maxFollowBatch)
	return read(ctx, cons, func(e projections.ResultEnvelope, pending uint64) error {
		batch = append(batch, e)
		if pending == 0 || len(batch) == maxFollowBatch {
			if err := fn(batch); err != nil {
				return err
			}
			batch = batch[:0]
		}
		return nil
	})
}

// readerIdle is how long the server keeps a reader's consumer once its
// reader is gone without deleting it (a crash).
const readerIdle = 10 * time.Second

// consumer makes an ordered consumer of RESULTS for one reader.
func (b *Bus) consumer(ctx context.Context, cfg jetstream.OrderedConsumerConfig) (jetstream.Consumer, error) {
	cfg.InactiveThreshold = readerIdle
	cons, err := b.results.OrderedConsumer(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("read results: %w", err)
	}
	return cons, nil
}

// drop deletes a reader's consumer on the server, which would otherwise
// keep it until readerIdle.
func (b *Bus) drop(cons jetstream.Consumer) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if info := cons.CachedInfo(); info != nil {
		_ = b.js.DeleteConsumer(ctx, events.StreamResults, info.Name) // gone already, or it expires
	}
}

// errDone ends a read early, without an error.
var errDone = errors.New("done")

// read calls fn with each result cons delivers, decoded, and the number
// of messages left after it, until ctx ends or fn fails (errDone ends it
// with no error).
func read(ctx context.Context, cons jetstream.Consumer, fn func(e projections.ResultEnvelope, pending uint64) error) error {
	it, err := cons.Messages(jetstream.PullMaxMessages(maxFollowBatch))
	if err != nil {
		return fmt.Errorf("read results: %w", err)
	}
	defer it.Stop()
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("read results: %w", err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("read results: %w", err)
		}
		r, err := DecodeResult(msg.Subject(), msg.Data())
		e := projections.ResultEnvelope{Sequence: meta.Sequence.Stream, Subject: msg.Subject(), Server: SubjectServer(msg.Subject()),
			Time: meta.Timestamp, Result: r, Err: err}
		if err := fn(e, meta.NumPending); errors.Is(err, errDone) {
			return nil
		} else if err != nil {
			return err
		}
	}
}

// maxFollowBatch bounds a FollowResults batch, and so a read-model
// transaction.
const maxFollowBatch = 500

var _ gateway.Feed = (*Bus)(nil)

// Bounds implements gateway.Feed.
func (b *Bus) Bounds(ctx context.Context) (first, last uint64, err error) {
	info, err := b.results.Info(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("results: %w", err)
	}
	first, last = info.State.FirstSeq, info.State.LastSeq
	if info.State.Msgs == 0 {
		first = last + 1
	}
	return first, last, nil
}

// Tail implements gateway.Feed with an ordered consumer: unlike a
// subscription, it neither misses a message stored while it starts nor
// sees one twice.
func (b *Bus) Tail(ctx context.Context, q gateway.TailQuery, fn func(gateway.TailItem) error) error {
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: q.Subjects, DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: max(q.From, 1)}
	if q.From == 0 && !q.Since.IsZero() {
		cfg.DeliverPolicy, cfg.OptStartSeq, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, 0, &q.Since
	}
	cons, err := b.consumer(ctx, cfg)
	if err != nil {
		return err
	}
	defer b.drop(cons)
	if !q.Follow {
		// The consumer's pending count says whether anything matches.
		info, err := cons.Info(ctx)
		if err != nil {
			return fmt.Errorf("tail results: %w", err)
		}
		if info.NumPending == 0 {
			return nil
		}
	}
	return read(ctx, cons, func(e projections.ResultEnvelope, pending uint64) error {
		if err := fn(gateway.TailItem{ResultEnvelope: e}); err != nil {
			return err
		}
		if !q.Follow && pending == 0 {
			return errDone
		}
		return nil
	})
}
