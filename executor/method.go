package executor

import (
	"context"
	"io"
	"time"

	"github.com/orchestra-fleet/orchestra/events"
)

// Job is one script to run on one server.
type Job struct {
	Server  events.Server
	Script  events.PlanScript
	Timeout time.Duration
	Stdout  io.Writer
	Stderr  io.Writer
	// Run names this attempt ("<script id>.<attempt>"); the script's
	// processes carry it in their environment as ORCHESTRA_RUN, so that a
	// later attempt can tell them from others.
	Run string
	// Started is called once the script runs, with the id of its process
	// group on the server (0 when the method could not learn it).
	Started func(pid int)
}

// RunEnv is the environment variable that names a script's run.
const RunEnv = "ORCHESTRA_RUN"

// Outcome is how a job ended: a state of DESIGN.md §2 (SUCCESS, FAILURE,
// TIMEOUT or ERROR), the exit code (-1 when the script did not exit on its
// own) and, unless it succeeded or failed by its exit code, the reason.
type Outcome struct {
	State    string
	ExitCode int
	Reason   string
}

// Method runs scripts on servers of one kind: over SSH, or on the
// executor's own host. Run returns when the script has ended; when ctx ends
// first, the script is killed and the outcome does not matter.
type Method interface {
	Run(ctx context.Context, j Job) Outcome
	// Kill kills process group pid on srv if it still belongs to run
	// (its leader's environment says so): what an earlier attempt left
	// running after its executor died.
	Kill(ctx context.Context, srv events.Server, pid int, run string) error
	// Name is what ScriptStarted records as the executor, e.g.
	// "ssh from host1" or "local on host1".
	Name() string
}

// exited is the outcome of a script that ran to its end with code.
func exited(code int) Outcome {
	if code == 0 {
		return Outcome{State: events.StateSuccess}
	}
	return Outcome{State: events.StateFailure, ExitCode: code}
}

// ranPast is the outcome of a script killed at its timeout.
func ranPast(d time.Duration) Outcome {
	return Outcome{State: events.StateTimeout, ExitCode: -1, Reason: "ran past " + d.String()}
}
