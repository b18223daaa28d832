package projections

import (
	"time"

	"github.com/google/uuid"

	"github.com/orchestra-fleet/orchestra/events"
)

// ScriptLog is one script's log: what the planner decided and what its
// latest attempt did, folded from the results about it (DESIGN.md §2).
type ScriptLog struct {
	ScriptEntry
	// Script is the text with every secret masked.
	Script string `json:"script,omitempty"`
	// Stdout and Stderr are the last TailBytes of each stream of the
	// latest attempt, as written (JSON shows invalid UTF-8 as U+FFFD);
	// the byte counts of the entry are whole.
	Stdout string `json:"stdout"`
	Stderr string `json:"stderr"`
	// Updated is when RESULTS stored the latest result folded into the
	// log: the log expires with it.
	Updated time.Time `json:"-"`
}

// ScriptEntry is a script's log without its text and output: what a
// listing shows.
type ScriptEntry struct {
	ID uuid.UUID `json:"id"`
	// Seq is the RESULTS sequence of the first result about the script:
	// listings are ordered by it, newest first.
	Seq         uint64                `json:"seq"`
	Unit        uuid.UUID             `json:"unit"`
	Server      string                `json:"server"`
	Backend     string                `json:"backend"`
	Operations  []events.OperationRef `json:"operations"`
	State       string                `json:"state"`
	Reason      string                `json:"reason,omitempty"`
	Attempt     int                   `json:"attempt"`
	ExitCode    *int                  `json:"exit_code,omitempty"`
	Executor    string                `json:"executor,omitempty"`
	Created     time.Time             `json:"created"`
	Started     *time.Time            `json:"started,omitempty"`
	Finished    *time.Time            `json:"finished,omitempty"`
	StdoutBytes int64                 `json:"stdout_bytes"`
	StderrBytes int64                 `json:"stderr_bytes"`
	// Truncated: the chunks stopped short of the whole output, which is
	// in Object of the output bucket when kept.
	Truncated bool   `json:"truncated,omitempty"`
	Object    string `json:"object,omitempty"`
}

// TailBytes is how much of each output stream a ScriptLog keeps.
const TailBytes = 64 << 10

// Fold adds one result about the script to its log. Results of an
// attempt older than the latest are ignored.
func (l *ScriptLog) Fold(r events.Result) {
	switch r := r.(type) {
	case *events.ScriptPlanned:
		l.ID, l.Unit, l.Server, l.Backend = r.ID, r.Unit, r.Server, r.Backend
		l.Operations, l.Script, l.Created = r.Operations, r.Script, r.Time
		if l.Attempt == 0 {
			l.State, l.Reason = r.State, r.Reason
		}
	case *events.ScriptStarted:
		if r.Attempt < l.Attempt {
			return
		}
		if r.Attempt > l.Attempt {
			l.Stdout, l.Stderr, l.StdoutBytes, l.StderrBytes, l.Truncated = "", "", 0, 0, false
			l.ExitCode, l.Finished, l.Reason = nil, nil, ""
		}
		l.first(r.Unit, r.Server, r.Backend, r.Time)
		started := r.Time
		l.Attempt, l.State, l.Executor, l.Started = r.Attempt, events.StateStarted, r.Executor, &started
	case *events.ScriptOutput:
		if r.Attempt != l.Attempt || l.Finished != nil {
			return // an older attempt's, or after the end (by hand)
		}
		if r.Truncated {
			l.Truncated = true
			return
		}
		if r.Stream == events.Stderr {
			l.Stderr = tail(l.Stderr + string(r.Data))
		} else {
			l.Stdout = tail(l.Stdout + string(r.Data))
		}
	case *events.ScriptFinished:
		if r.Attempt < l.Attempt {
			return
		}
		l.first(r.Unit, r.Server, r.Backend, r.Time)
		code, finished := r.ExitCode, r.Time
		l.Attempt, l.State, l.Reason, l.ExitCode, l.Finished = r.Attempt, r.State, r.Reason, &code, &finished
		l.StdoutBytes, l.StderrBytes, l.Object = r.Stdout, r.Stderr, r.Object
		if !r.Started.IsZero() {
			started := r.Started
			l.Started = &started
		}
	}
}

// first fills in what the planner's record will say, when a result about
// the script comes before it.
func (l *ScriptLog) first(unit uuid.UUID, server, backend string, t time.Time) {
	if l.Server == "" {
		l.Unit, l.Server, l.Backend = unit, server, backend
	}
	if l.Created.IsZero() {
		l.Created = t
	}
	if l.Operations == nil {
		l.Operations = []events.OperationRef{}
	}
}

// tail keeps the last TailBytes of s, cut at a character boundary.
func tail(s string) string {
	if len(s) <= TailBytes {
		return s
	}
	s = s[len(s)-TailBytes:]
	for i := 0; i < len(s) && i < 4; i++ {
		if s[i]&0xC0 != 0x80 { // not a continuation byte
			return s[i:]
		}
	}
	return s
}
