package events

import (
	"time"

	"github.com/google/uuid"
)

// Script log states (DESIGN.md §2).
const (
	StateReceived = "RECEIVED" // planned, queued for its server
	StateStarted  = "STARTED"  // running on its server
	StateSuccess  = "SUCCESS"  // exited 0
	StateFailure  = "FAILURE"  // exited non-zero
	StateTimeout  = "TIMEOUT"  // could not connect, or ran past its timeout; the reason says which
	StateError    = "ERROR"    // the method itself failed (authentication, host key, rendering); the reason says why
	StateAborted  = "ABORTED"  // lost mid-run too often; given up
	StateRevoked  = "REVOKED"  // cancelled before it started
	StateNothing  = "NOTHING"  // no action content: not sent, counts as success
)

// Output streams of a script.
const (
	Stdout = "stdout"
	Stderr = "stderr"
)

// ScriptStarted: an executor began one attempt of a script on its server.
type ScriptStarted struct {
	ID       uuid.UUID `json:"id"`
	Unit     uuid.UUID `json:"unit"`
	Server   string    `json:"server"`
	Backend  string    `json:"backend"`
	Attempt  int       `json:"attempt"`
	Executor string    `json:"executor"` // the method and the host that ran it
	// PID is the script's process group on its server, 0 when unknown: a
	// later attempt kills what is left of it.
	PID  int       `json:"pid,omitempty"`
	Time time.Time `json:"time"`
}

func (ScriptStarted) ResultType() string { return "ScriptStarted" }

// ScriptOutput is a chunk of a script's output, published while it is
// produced. Offset is where Data starts in its stream; chunks of one
// stream follow each other without gaps until Truncated, after which that
// stream's output is only in the object named by ScriptFinished.
type ScriptOutput struct {
	ID        uuid.UUID `json:"id"`
	Attempt   int       `json:"attempt"`
	Stream    string    `json:"stream"` // stdout or stderr
	Offset    int64     `json:"offset"`
	Data      []byte    `json:"data"`
	Truncated bool      `json:"truncated,omitempty"`
}

func (ScriptOutput) ResultType() string { return "ScriptOutput" }

// ScriptFinished: an attempt of a script ended, for good. Stdout and
// Stderr count every byte the script wrote; when more than the chunks
// carry, the whole output is in Object of the output bucket.
type ScriptFinished struct {
	ID       uuid.UUID     `json:"id"`
	Unit     uuid.UUID     `json:"unit"`
	Server   string        `json:"server"`
	Backend  string        `json:"backend"`
	Attempt  int           `json:"attempt"`
	State    string        `json:"state"`
	ExitCode int           `json:"exit_code"` // -1 when the script did not exit on its own
	Reason   string        `json:"reason,omitempty"`
	Started  time.Time     `json:"started"`
	Duration time.Duration `json:"duration_ns"`
	Stdout   int64         `json:"stdout_bytes"`
	Stderr   int64         `json:"stderr_bytes"`
	Object   string        `json:"object,omitempty"`
	Time     time.Time     `json:"time"`
}

func (ScriptFinished) ResultType() string { return "ScriptFinished" }
