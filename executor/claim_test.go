package executor_test

import (
	"context"
	"testing"

	"github.com/google/uuid"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/executor"
	"github.com/orchestra-fleet/orchestra/infra/natstest"
)

// TestClaimFirstWins: a site step's start and its revoke both claim the
// script; whichever comes first stands, the other is refused.
func TestClaimFirstWins(t *testing.T) {
	env := natstest.Start(t)
	ctx := context.Background()
	for _, c := range []struct {
		name        string
		revokeFirst bool
	}{{"revoke, then start", true}, {"start, then revoke", false}} {
		t.Run(c.name, func(t *testing.T) {
			run := uuid.New()
			id := events.ScriptID(run, "box", "site:s/a#0 start")
			// The planner's record is there first, as in a run.
			rec := &events.ScriptPlanned{ID: id, Unit: run, Server: "box", Backend: "site:s/a#0 start", State: events.StateReceived}
			if ok, err := executor.Claim(ctx, env.JS, "box", id, rec, &events.ScriptStarted{}, id.String()+".planned"); err != nil || !ok {
				t.Fatalf("record: %v %v", ok, err)
			}
			revoke := func() (bool, error) {
				fin := &events.ScriptFinished{ID: id, Unit: run, Server: "box", Backend: rec.Backend, State: events.StateRevoked, ExitCode: -1}
				return executor.Claim(ctx, env.JS, "box", id, fin, &events.ScriptStarted{}, id.String()+".0.ScriptFinished")
			}
			start := func() (bool, error) {
				st := &events.ScriptStarted{ID: id, Unit: run, Server: "box", Backend: rec.Backend, Attempt: 1}
				return executor.Claim(ctx, env.JS, "box", id, st, &events.ScriptFinished{}, id.String()+".1.claim")
			}
			first, second := start, revoke
			if c.revokeFirst {
				first, second = revoke, start
			}
			if ok, err := first(); err != nil || !ok {
				t.Fatalf("the first claim: %v %v", ok, err)
			}
			if ok, err := second(); err != nil || ok {
				t.Fatalf("the second claim stood too: %v %v", ok, err)
			}
		})
	}
}
