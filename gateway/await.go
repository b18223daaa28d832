package gateway

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/google/uuid"

	"github.com/orchestra-fleet/orchestra/services"
)

// Waiting for results: an apply answers once the scripts of its
// synchronous routes have finished (bounded), as django-orchestra's
// backends do; scripts of async routes are listed as queued.

// DefaultApplyWait bounds how long an apply waits for its scripts unless
// the request's ?wait= says otherwise.
const DefaultApplyWait = 30 * time.Second

// MaxApplyWait bounds ?wait=.
const MaxApplyWait = 10 * time.Minute

// Results tells what became of a unit's scripts.
type Results interface {
	// Await waits until the unit committed at seq is planned and its
	// synchronous scripts have finished, or ctx ends, and returns every
	// script of the unit as known then (nil when the unit runs nothing).
	Await(ctx context.Context, unit uuid.UUID, seq uint64) ([]ScriptOutcome, error)
}

// ScriptOutcome is one script of a unit as an apply reports it.
type ScriptOutcome struct {
	ID       uuid.UUID `json:"id"`
	Server   string    `json:"server"`
	Backend  string    `json:"backend"`
	Async    bool      `json:"async,omitempty"`
	State    string    `json:"state"`
	ExitCode *int      `json:"exit_code,omitempty"`
	Reason   string    `json:"reason,omitempty"`
}

// applyResult is an apply's answer: the objects, and when it waited, the
// scripts.
type applyResult struct {
	services.ApplyResult
	// Scripts are the unit's scripts; absent when the apply did not wait
	// (?wait=0, or nothing changed).
	Scripts []ScriptOutcome `json:"scripts,omitempty"`
	// Complete says whether every synchronous script finished in time.
	Complete *bool `json:"complete,omitempty"`
}

// applyWait is the request's ?wait=, or the default.
func (a *api) applyWait(r *http.Request) (time.Duration, error) {
	raw := r.URL.Query().Get("wait")
	if raw == "" {
		return max(a.wait, 0), nil
	}
	d, err := time.ParseDuration(raw)
	if err != nil {
		if n, nerr := strconv.Atoi(raw); nerr == nil {
			d, err = time.Duration(n)*time.Second, nil
		}
	}
	if err != nil || d < 0 || d > MaxApplyWait {
		return 0, services.FieldErrorf(services.EBADREQUEST, "wait", "%q is not a duration from 0s to %s (such as 30s)", raw, MaxApplyWait)
	}
	return d, nil
}

// await adds the unit's scripts to res, waiting at most d for the
// synchronous ones.
func (a *api) await(ctx context.Context, res *applyResult, d time.Duration) error {
	if a.results == nil || d == 0 || res.Unit == "" {
		return nil
	}
	unit, err := uuid.Parse(res.Unit)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	scripts, err := a.results.Await(ctx, unit, res.Sequence)
	complete := err == nil
	if err != nil && ctx.Err() == nil {
		return err
	}
	res.Scripts, res.Complete = scripts, &complete
	return nil
}
