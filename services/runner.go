package services

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"github.com/google/uuid"

	"github.com/orchestra-fleet/orchestra/events"
)

// StepBus carries a run's steps to their servers' queues and reads how
// they ended. infra/siterunner implements it on JetStream.
type StepBus interface {
	// Send queues steps of a phase of run: one plan per server, on the same
	// queues as the model's plans, and a record of each step.
	Send(ctx context.Context, run *events.RunRequested, phase int, steps []events.RunStep) error
	// Finished returns how a step's script last ended, if it has.
	Finished(ctx context.Context, step events.RunStep) (events.ScriptFinished, bool, error)
	// Revoke ends the steps that have not started as REVOKED; a step that
	// has started is left to finish.
	Revoke(ctx context.Context, run *events.RunRequested, steps []events.RunStep) error
}

// Runner carries out site runs: a process manager whose state is the
// run's events (in the write model) and its steps' results, so a runner
// started again resumes where the last one stopped. Each phase's steps are
// sent once the previous phase ended; a phase that ends with a failure ends
// the run unless it keeps going.
type Runner struct {
	svc *Service
	bus StepBus
	log *slog.Logger

	mu      sync.Mutex                          // one advance at a time
	results map[uuid.UUID]events.ScriptFinished // ended steps of phases not finished yet
	sent    map[uuid.UUID]int                   // the phase of each run this process sent or checked
	revoked map[uuid.UUID]bool                  // runs whose queued steps this process revoked
}

// NewRunner returns a runner of svc's runs.
func NewRunner(svc *Service, bus StepBus, log *slog.Logger) *Runner {
	return &Runner{svc: svc, bus: bus, log: log, results: map[uuid.UUID]events.ScriptFinished{},
		sent: map[uuid.UUID]int{}, revoked: map[uuid.UUID]bool{}}
}

// Resume advances every run not over: after a start, the runs a runner
// stopped in the middle of.
func (r *Runner) Resume(ctx context.Context) error {
	r.svc.mu.RLock()
	ids := make([]uuid.UUID, 0, len(r.svc.state.runs))
	for id := range r.svc.state.runs {
		ids = append(ids, id)
	}
	r.svc.mu.RUnlock()
	for _, id := range ids {
		if err := r.Advance(ctx, id); err != nil {
			return err
		}
	}
	return nil
}

// Requested advances the run of site, if one is not over: called for
// every event of the site's runs.
func (r *Runner) Requested(ctx context.Context, site string) error {
	r.svc.mu.RLock()
	id, ok := r.svc.state.active[site]
	r.svc.mu.RUnlock()
	if !ok {
		return nil
	}
	return r.Advance(ctx, id)
}

// Result takes a script's end: when it is a step of a run not over, the
// run advances.
func (r *Runner) Result(ctx context.Context, fin events.ScriptFinished) error {
	r.svc.mu.RLock()
	_, ok := r.svc.state.runs[fin.Unit]
	r.svc.mu.RUnlock()
	if !ok {
		return nil
	}
	r.mu.Lock()
	if prev, seen := r.results[fin.ID]; !seen || fin.Attempt >= prev.Attempt {
		r.results[fin.ID] = fin
	}
	r.mu.Unlock()
	return r.Advance(ctx, fin.Unit)
}

// progress is a copy of the run's progress, nil once it is over.
func (r *Runner) progress(id uuid.UUID) *RunProgress {
	r.svc.mu.RLock()
	defer r.svc.mu.RUnlock()
	if p, ok := r.svc.state.runs[id]; ok {
		return p.clone()
	}
	return nil
}

// Advance takes run id as far as it can go now: it ends phases whose steps
// all ended, starts the next, and ends the run.
func (r *Runner) Advance(ctx context.Context, id uuid.UUID) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		p := r.progress(id)
		if p == nil {
			r.forget(id)
			return nil
		}
		switch {
		case p.Phase >= 0 && !p.phaseDone(p.Phase):
			out, err := r.outcomes(ctx, p)
			if err != nil || out == nil {
				return err // nil: steps still running
			}
			if ok, err := r.append(ctx, p, &events.RunPhaseFinished{Run: id, Site: p.Req.Site, Phase: p.Phase, Outcomes: out}); !ok {
				if err != nil {
					return err
				}
				continue // cancelled or moved on meanwhile: look again
			}
			for _, o := range out {
				delete(r.results, o.Script)
			}
		case p.Phase+1 < len(p.Req.Phases) && !p.Cancelled && !p.failedOut():
			next := p.Phase + 1
			steps := p.eligible(next)
			if ok, err := r.append(ctx, p, &events.RunPhaseStarted{Run: id, Phase: next, Steps: steps}); !ok {
				if err != nil {
					return err
				}
				continue // cancelled or moved on meanwhile: look again
			}
			if len(steps) > 0 {
				if err := r.bus.Send(ctx, &p.Req, next, pick(p.Req.Phases[next].Steps, steps)); err != nil {
					delete(r.sent, id) // the next look sends what is missing
					return err
				}
			}
			r.sent[id] = next
		default:
			if ok, err := r.append(ctx, p, p.finish()); !ok && err != nil {
				return err
			}
		}
	}
}

// Sweep looks at every run not over as after a start: it reads again
// which steps ended and sends again those that did not. orchestra up
// sweeps now and then, so a run whose trigger was lost (a result taken by
// another process, a message given up on) still goes on.
func (r *Runner) Sweep(ctx context.Context) error {
	r.mu.Lock()
	clear(r.sent)
	r.mu.Unlock()
	return r.Resume(ctx)
}

// outcomes are the outcomes of the phase running, nil while a step has
// not ended. The first look after a start reads the results the runner
// may have missed, and sends again what may not have been sent; a
// cancelled run's steps not yet started are revoked.
func (r *Runner) outcomes(ctx context.Context, p *RunProgress) ([]events.StepOutcome, error) {
	id := p.Req.Run
	phase := p.Req.Phases[p.Phase]
	sent := pick(phase.Steps, p.Sent)
	if r.sent[id] != p.Phase || !r.sentKnown(id) {
		var missing []events.RunStep
		for _, st := range sent {
			if _, ok := r.results[st.Script]; ok {
				continue
			}
			fin, ok, err := r.bus.Finished(ctx, st)
			if err != nil {
				return nil, err
			}
			if ok {
				r.results[st.Script] = fin
			} else {
				missing = append(missing, st)
			}
		}
		if len(missing) > 0 && !p.Cancelled {
			if err := r.bus.Send(ctx, &p.Req, p.Phase, missing); err != nil {
				return nil, err
			}
		}
		r.sent[id] = p.Phase
	}
	if p.Cancelled && !r.revoked[id] {
		var queued []events.RunStep
		for _, st := range sent {
			if _, ok := r.results[st.Script]; !ok {
				queued = append(queued, st)
			}
		}
		if err := r.bus.Revoke(ctx, &p.Req, queued); err != nil {
			return nil, err
		}
		r.revoked[id] = true
	}
	out := make([]events.StepOutcome, len(phase.Steps))
	for i, st := range phase.Steps {
		if !slices.Contains(p.Sent, i) {
			out[i] = events.StepOutcome{State: events.StateRevoked, ExitCode: -1}
		} else if fin, ok := r.results[st.Script]; ok {
			out[i] = outcome(st.Command, phase.Group > 0, fin)
			if st.Supervise != nil && out[i].Instance != events.InstanceFailed {
				out[i].Instance = "" // its supervisor's events say it, with the process
			}
		} else {
			return nil, nil
		}
		out[i].Script, out[i].Service, out[i].Server, out[i].Index, out[i].Command = st.Script, st.Service, st.Server, st.Index, st.Command
	}
	return out, nil
}

// sentKnown reports whether this process has looked at run id's phase
// since it started.
func (r *Runner) sentKnown(id uuid.UUID) bool {
	_, ok := r.sent[id]
	return ok
}

// outcome is what a step's end means. A status step says whether its
// instance runs (exit 0) or is stopped (exit 3, as LSB); anything else
// failed. In a rolling batch the instance must be running.
func outcome(command string, rolling bool, fin events.ScriptFinished) events.StepOutcome {
	o := events.StepOutcome{State: fin.State, ExitCode: fin.ExitCode, Started: fin.Started, Ended: fin.Time}
	ok := fin.State == events.StateSuccess || fin.State == events.StateNothing
	if fin.State == events.StateRevoked {
		return o // it never ran: it says nothing of its instance
	}
	switch command {
	case "start":
		o.Instance = instanceState(ok, events.InstanceRunning)
	case "stop":
		o.Instance = instanceState(ok, events.InstanceStopped)
	case "status":
		switch {
		case ok:
			o.Instance = events.InstanceRunning
		case fin.State == events.StateFailure && fin.ExitCode == 3:
			o.Instance = events.InstanceStopped
			if !rolling {
				o.State = events.StateSuccess // the answer "stopped" is a status that worked
			}
		default:
			o.Instance = events.InstanceFailed
		}
	}
	return o
}

func instanceState(ok bool, good string) string {
	if ok {
		return good
	}
	return events.InstanceFailed
}

// failed reports whether a step's outcome counts as a failure.
func failed(o events.StepOutcome) bool {
	return o.State != events.StateSuccess && o.State != events.StateNothing && o.State != events.StateRevoked
}

func pick(steps []events.RunStep, idx []int) []events.RunStep {
	out := make([]events.RunStep, len(idx))
	for i, j := range idx {
		out[i] = steps[j]
	}
	return out
}

// eligible lists the steps of phase i to send: all, but in a rolling batch
// not the instances that failed in the batch's earlier phases.
func (p *RunProgress) eligible(i int) []int {
	ph := p.Req.Phases[i]
	failedHere := map[string]bool{}
	if ph.Group > 0 {
		for j := range i {
			if p.Req.Phases[j].Group != ph.Group || !p.phaseDone(j) {
				continue
			}
			for k, o := range p.Outcomes[j] {
				if failed(o) || o.State == events.StateRevoked {
					failedHere[instanceKey(p.Req.Phases[j].Steps[k])] = true
				}
			}
		}
	}
	var out []int
	for k, st := range ph.Steps {
		if !failedHere[instanceKey(st)] {
			out = append(out, k)
		}
	}
	return out
}

func instanceKey(st events.RunStep) string {
	return fmt.Sprintf("%s/%s/%d", st.Service, st.Server, st.Index)
}

// failures counts the instances that failed in the finished phases.
func (p *RunProgress) failures() int {
	bad := map[string]bool{}
	for i, outs := range p.Outcomes {
		for k, o := range outs {
			if failed(o) {
				bad[instanceKey(p.Req.Phases[i].Steps[k])] = true
			}
		}
	}
	return len(bad)
}

// failedOut reports whether the run must stop at its failures: at the
// first without keepgoing, past max_failures in a rolling update.
func (p *RunProgress) failedOut() bool {
	n := p.failures()
	switch {
	case n == 0:
		return false
	case p.Req.Strategy == StrategyRolling && p.Req.Command == events.CommandUpdate:
		return p.Req.MaxFailures >= 0 && n > p.Req.MaxFailures
	case p.Req.Command == events.CommandStatus:
		return false // a status asks every instance
	}
	return !p.Req.Keepgoing
}

// finish is the run's end once no phase is left to start.
func (p *RunProgress) finish() *events.RunFinished {
	f := &events.RunFinished{Run: p.Req.Run, Site: p.Req.Site, Command: p.Req.Command, State: events.RunSuccess, Started: p.Started, Actor: p.Actor}
	for i, ph := range p.Req.Phases {
		for k := range ph.Steps {
			switch {
			case !p.phaseDone(i) || p.Outcomes[i][k].State == events.StateRevoked:
				f.Revoked++
			case failed(p.Outcomes[i][k]):
				f.Failed++
				if len(f.Failures) < events.MaxRunFailures {
					st, o := ph.Steps[k], p.Outcomes[i][k]
					f.Failures = append(f.Failures, events.StepFailure{Script: st.Script, Service: st.Service, Server: st.Server,
						Index: st.Index, Command: st.Command, State: o.State, ExitCode: o.ExitCode})
				}
			default:
				f.Succeeded++
			}
		}
	}
	switch {
	case f.Failed > 0:
		f.State = events.RunFailure
		f.Reason = fmt.Sprintf("%d step(s) failed", f.Failed)
		if f.Revoked > 0 {
			f.Reason += fmt.Sprintf("; %d not run", f.Revoked)
		}
	case p.Cancelled:
		f.State = events.RunRevoked
		f.Reason = fmt.Sprintf("cancelled; %d step(s) not run", f.Revoked)
	}
	return f
}

// append commits ev to the run's site, guarded by the version the runner
// read: a runner elsewhere that moved it first makes this a conflict. It
// reports whether ev was committed; when it was not, the run moved on
// meanwhile (a cancel, another runner), or err says why, and the next look
// at the run reads its steps' results again.
func (r *Runner) append(ctx context.Context, p *RunProgress, ev events.Payload) (bool, error) {
	agg := events.Aggregate{Type: events.AggSiteRun, ID: p.Req.Site}
	committed, err := serialized(ctx, r.svc, func() (bool, error) {
		r.svc.mu.RLock()
		pos := r.svc.state.position(agg)
		cur, ok := r.svc.state.runs[p.Req.Run]
		same := ok && cur.Phase == p.Phase && len(cur.Outcomes) == len(p.Outcomes) && cur.Cancelled == p.Cancelled
		r.svc.mu.RUnlock()
		if !same {
			return false, nil
		}
		_, _, err := r.svc.commitOne(ctx, System, agg, pos, ev)
		return err == nil, err
	})
	if !committed {
		delete(r.sent, p.Req.Run)
		if err != nil {
			return false, fmt.Errorf("run %s: %w", p.Req.Run, err)
		}
		return false, nil
	}
	if f, ok := ev.(*events.RunFinished); ok {
		r.log.Info("run ended", "run", f.Run, "site", f.Site, "command", f.Command, "state", f.State,
			"succeeded", f.Succeeded, "failed", f.Failed, "revoked", f.Revoked)
	}
	return true, nil
}

// forget drops what the runner keeps of a run that is over.
func (r *Runner) forget(id uuid.UUID) {
	delete(r.sent, id)
	delete(r.revoked, id)
	for script, fin := range r.results {
		if fin.Unit == id {
			delete(r.results, script)
		}
	}
}
