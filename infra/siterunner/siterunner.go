// Package siterunner runs site commands: it carries a services.Runner's
// steps to the servers' queues on JetStream, and feeds it the run events
// and script results through Watermill handlers.
package siterunner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/executor"
	"github.com/orchestra-fleet/orchestra/infra/planbus"
	"github.com/orchestra-fleet/orchestra/infra/streams"
	"github.com/orchestra-fleet/orchestra/infra/wmjet"
	"github.com/orchestra-fleet/orchestra/services"
)

// Executable runs every step's script.
const Executable = "/bin/sh"

// Bus implements services.StepBus: a phase's steps go to their servers'
// EXEC subjects as plans, the same queues as the model's plans, so one
// server's order holds across both.
type Bus struct {
	js      jetstream.JetStream
	plans   *planbus.Bus
	results jetstream.Stream
}

var _ services.StepBus = (*Bus)(nil)

// NewBus returns the step bus on the provisioned streams.
func NewBus(ctx context.Context, js jetstream.JetStream, plans *planbus.Bus) (*Bus, error) {
	results, err := js.Stream(ctx, events.StreamResults)
	if err != nil {
		return nil, fmt.Errorf("siterunner: stream %s: %w", events.StreamResults, err)
	}
	return &Bus{js: js, plans: plans, results: results}, nil
}

// Send implements services.StepBus: one plan per server, in step order,
// and a RECEIVED record of each step.
func (b *Bus) Send(ctx context.Context, run *events.RunRequested, phase int, steps []events.RunStep) error {
	now := time.Now().UTC()
	var plans []events.Plan
	at := map[string]int{}
	records := make([]events.Result, 0, len(steps))
	for _, st := range steps {
		i, ok := at[st.Server]
		if !ok {
			i = len(plans)
			at[st.Server] = i
			plans = append(plans, events.Plan{Unit: run.Run, Server: st.Server, Time: now, Site: run.Site, Phase: phase})
		}
		plans[i].Scripts = append(plans[i].Scripts, events.PlanScript{ID: st.Script, Backend: st.Label,
			Executable: Executable, Timeout: st.Timeout, Operations: []events.OperationRef{}, Script: st.Text, Supervise: st.Supervise})
		records = append(records, &events.ScriptPlanned{ID: st.Script, Unit: run.Run, Server: st.Server, Backend: st.Label,
			Operations: []events.OperationRef{}, State: events.StateReceived, Script: st.Text, Time: now})
	}
	return b.plans.Send(ctx, plans, records)
}

// Finished implements services.StepBus.
func (b *Bus) Finished(ctx context.Context, st events.RunStep) (events.ScriptFinished, bool, error) {
	var fin events.ScriptFinished
	ok, err := b.last(ctx, st, &fin)
	return fin, ok, err
}

func (b *Bus) last(ctx context.Context, st events.RunStep, v events.Result) (bool, error) {
	subject, err := events.ScriptSubject(st.Server, st.Script, v.ResultType())
	if err != nil {
		return false, err
	}
	msg, err := streams.LastMsg(ctx, b.js, b.results, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s: %w", subject, err)
	}
	if err := json.Unmarshal(msg.Data, v); err != nil {
		return false, fmt.Errorf("decode %s: %w", subject, err)
	}
	return true, nil
}

// Revoke implements services.StepBus: a step that has not started ends
// REVOKED (attempt 0), which its executor takes as done and skips. The
// revoke and the executor's start both claim the step (executor.Claim):
// a step the executor took up first runs, and ends as it ends.
func (b *Bus) Revoke(ctx context.Context, run *events.RunRequested, steps []events.RunStep) error {
	for _, st := range steps {
		fin := events.ScriptFinished{ID: st.Script, Unit: run.Run, Server: st.Server, Backend: st.Label, State: events.StateRevoked,
			ExitCode: -1, Reason: "cancelled before it started (orchestra run cancel)", Time: time.Now().UTC()}
		if _, err := executor.Claim(ctx, b.js, st.Server, st.Script, &fin, &events.ScriptStarted{}, st.Script.String()+".0."+fin.ResultType()); err != nil {
			return fmt.Errorf("revoke %s: %w", st.Script, err)
		}
	}
	return nil
}

// Consumers of the runner's handlers.
const (
	TopicRuns    = "site-runner-runs"
	TopicResults = "site-runner-results"
)

// Topics are the durable consumers the runner's handlers read: the events
// of every site's runs, and every script's end. They start with what is
// new when first made; a runner that starts resumes the runs not over
// from the write model (services.Runner.Resume).
func Topics(ackWait time.Duration) map[string]wmjet.Topic {
	consumer := func(name, filter string) jetstream.ConsumerConfig {
		return jetstream.ConsumerConfig{Durable: name, FilterSubject: filter, DeliverPolicy: jetstream.DeliverNewPolicy,
			AckPolicy: jetstream.AckExplicitPolicy, AckWait: ackWait, MaxAckPending: 1, MaxDeliver: -1}
	}
	return map[string]wmjet.Topic{
		TopicRuns:    {Stream: events.StreamEvents, Consumer: consumer(TopicRuns, "orchestra.evt."+events.AggSiteRun+".>")},
		TopicResults: {Stream: events.StreamResults, Consumer: consumer(TopicResults, "orchestra.res.*.*.ScriptFinished")},
	}
}

// Caught is how far the write model has folded the log.
type Caught interface {
	Seq() uint64
}

// AddHandlers adds the runner's handlers to r. A run event is handled
// once the write model holds it; both handlers advance the run concerned.
func AddHandlers(r *message.Router, sub message.Subscriber, runner *services.Runner, model Caught, log *slog.Logger) {
	r.AddConsumerHandler(TopicRuns, TopicRuns, sub, func(msg *message.Message) error {
		site, err := siteOf(msg.Metadata.Get(wmjet.MetadataSubject))
		if err != nil {
			log.Error("site runner: not a run event; skipped", "subject", msg.Metadata.Get(wmjet.MetadataSubject), "err", err)
			return nil
		}
		seq, _ := strconv.ParseUint(msg.Metadata.Get(wmjet.MetadataStreamSeq), 10, 64)
		if err := caughtUp(msg.Context(), model, seq); err != nil {
			return err
		}
		return runner.Requested(msg.Context(), site)
	})
	r.AddConsumerHandler(TopicResults, TopicResults, sub, func(msg *message.Message) error {
		var fin events.ScriptFinished
		if err := json.Unmarshal(msg.Payload, &fin); err != nil {
			return nil // not a result the runner can use; the read model reports it
		}
		return runner.Result(msg.Context(), fin)
	})
}

// siteOf is the site a run event's subject names:
// orchestra.evt.siterun.<site-token>.<Type>.
func siteOf(subject string) (string, error) {
	parts := strings.Split(subject, ".")
	if len(parts) != 5 {
		return "", fmt.Errorf("subject %q is not orchestra.evt.%s.<site>.<type>", subject, events.AggSiteRun)
	}
	return events.ParseToken(parts[3])
}

// caughtUp waits until model has folded the event at seq.
func caughtUp(ctx context.Context, model Caught, seq uint64) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	wait := 100 * time.Microsecond
	for model.Seq() < seq {
		select {
		case <-ctx.Done():
			return fmt.Errorf("the write model did not reach event %d (it is at %d)", seq, model.Seq())
		case <-time.After(wait):
		}
		wait = min(2*wait, 50*time.Millisecond)
	}
	return nil
}
