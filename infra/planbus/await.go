package planbus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/gateway"
	"github.com/orchestra-fleet/orchestra/infra/streams"
)

// Progress is how far the planner has got (projections.Dispatcher).
type Progress interface {
	WaitFor(ctx context.Context, seq uint64) error
}

// ActivePlanner is the progress of whichever process plans: this one's
// planner, or, while another process is the active one, the mark it
// publishes.
type ActivePlanner struct {
	Local Progress
	Bus   *Bus
}

// WaitFor implements Progress: it returns once the local planner or the
// shared mark has reached seq.
func (a ActivePlanner) WaitFor(ctx context.Context, seq uint64) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	local := make(chan error, 1)
	go func() { local <- a.Local.WaitFor(ctx, seq) }()
	for {
		if m, err := a.Bus.Marked(ctx); err == nil && m >= seq {
			return nil
		}
		select {
		case err := <-local:
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Results implements gateway.Results on the planner's unit records and the
// executors' results.
type Results struct {
	Bus     *Bus
	Planner Progress
}

var _ gateway.Results = Results{}

// Await implements gateway.Results.
func (r Results) Await(ctx context.Context, unit uuid.UUID, seq uint64) ([]gateway.ScriptOutcome, error) {
	if err := r.Planner.WaitFor(ctx, seq); err != nil {
		return nil, fmt.Errorf("the planner did not reach sequence %d: %w", seq, err)
	}
	var rec events.UnitPlanned
	// From the leader: the record was stored a moment ago.
	msg, err := streams.LastMsg(ctx, r.Bus.js, r.Bus.results, events.UnitSubject(unit, rec.ResultType()))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil // nothing to run
	}
	if err != nil {
		return nil, fmt.Errorf("unit %s: %w", unit, err)
	}
	if err := json.Unmarshal(msg.Data, &rec); err != nil {
		return nil, fmt.Errorf("unit %s: %w", unit, err)
	}
	out := make([]gateway.ScriptOutcome, len(rec.Scripts))
	pending := map[uuid.UUID]int{}
	var subjects []string
	for i, s := range rec.Scripts {
		out[i] = gateway.ScriptOutcome{ID: s.ID, Server: s.Server, Backend: s.Backend, Async: s.Async, State: s.State}
		if s.Async || s.State != events.StateReceived {
			continue
		}
		subject, err := events.ScriptSubject(s.Server, s.ID, events.ScriptFinished{}.ResultType())
		if err != nil {
			return out, err
		}
		subjects = append(subjects, subject)
		pending[s.ID] = i
	}
	if len(pending) == 0 {
		return out, nil
	}
	// A consumer of the stream, not a subscription: a result being stored
	// while we look is neither delivered to a new subscription nor found
	// yet by a look-up, but a consumer of the last message per subject
	// sees it either way.
	cons, err := r.Bus.results.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: subjects, DeliverPolicy: jetstream.DeliverLastPerSubjectPolicy,
	})
	if err != nil {
		return out, fmt.Errorf("unit %s: %w", unit, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return out, fmt.Errorf("unit %s: %w", unit, err)
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	for len(pending) > 0 {
		m, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				return out, ctx.Err()
			}
			return out, fmt.Errorf("unit %s: %w", unit, err)
		}
		var fin events.ScriptFinished
		if json.Unmarshal(m.Data(), &fin) != nil {
			continue
		}
		if i, ok := pending[fin.ID]; ok {
			code := fin.ExitCode
			out[i].State, out[i].ExitCode, out[i].Reason = fin.State, &code, fin.Reason
			delete(pending, fin.ID)
		}
	}
	return out, nil
}

// LastResult is the sequence of the last message of RESULTS.
func (b *Bus) LastResult(ctx context.Context) (uint64, error) {
	info, err := b.results.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("results: %w", err)
	}
	return info.State.LastSeq, nil
}
