package notify

import (
	"fmt"
	"strings"
	"time"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/projections"
)

// Events reported, as the X-Orchestra-Event header and the "event" field
// of a webhook's body name them.
const (
	EventRunFinished  = "run.finished"
	EventScriptFailed = "script.failed"
)

// runPayload is the body of a run.finished webhook.
type runPayload struct {
	Event string             `json:"event"`
	Run   events.RunFinished `json:"run"`
}

// scriptPayload is the body of a script.failed webhook.
type scriptPayload struct {
	Event  string                `json:"event"`
	Script projections.ScriptLog `json:"script"`
}

// runSubject is "[site:<site>] <command> - <STATE>".
func runSubject(r events.RunFinished) string {
	return fmt.Sprintf("[site:%s] %s - %s", r.Site, r.Command, r.State)
}

// runText is the body of a run's email.
func runText(r events.RunFinished) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Run:      %s\n", r.Run)
	fmt.Fprintf(&b, "Site:     %s\n", r.Site)
	fmt.Fprintf(&b, "Command:  %s\n", r.Command)
	fmt.Fprintf(&b, "State:    %s\n", r.State)
	fmt.Fprintf(&b, "Started:  %s\n", r.Started.UTC().Format(time.RFC3339))
	fmt.Fprintf(&b, "Steps:    %d succeeded, %d failed, %d revoked\n", r.Succeeded, r.Failed, r.Revoked)
	if r.Reason != "" {
		fmt.Fprintf(&b, "Reason:   %s\n", r.Reason)
	}
	if len(r.Failures) > 0 {
		b.WriteString("\nFailures:\n")
		for _, f := range r.Failures {
			fmt.Fprintf(&b, "  %s#%d on %s: %s %s exit %d\n", f.Service, f.Index, f.Server, f.Command, f.State, f.ExitCode)
		}
		if more := r.Failed - len(r.Failures); more > 0 {
			fmt.Fprintf(&b, "  … and %d more\n", more)
		}
	}
	return b.String()
}

// scriptSubject is "[orchestra] <backend> <STATE> on <server>".
func scriptSubject(fin events.ScriptFinished) string {
	return fmt.Sprintf("[orchestra] %s %s on %s", fin.Backend, fin.State, fin.Server)
}

// separator parts the sections of a script's report.
const separator = "\n~ ~ ~ ~ ~ ~ ~ ~ ~ ~ ~ ~ ~ ~ ~ ~ ~ ~ ~ ~ ~ ~ ~ ~ ~ ~ ~ ~ ~ ~ ~ ~ ~ ~ ~ ~ ~ ~ ~ ~\n\n"

// scriptText is the body of a failed script's email, after
// django-orchestra's report: what ran where, how it ended, the
// operations, then stderr, stdout and the script. logErr says why the
// log could not be read; the report is sent without it.
func scriptText(fin events.ScriptFinished, log projections.ScriptLog, logErr error) string {
	var head strings.Builder
	fmt.Fprintf(&head, "Server:    %s\n", fin.Server)
	fmt.Fprintf(&head, "Backend:   %s\n", fin.Backend)
	fmt.Fprintf(&head, "State:     %s\n", fin.State)
	fmt.Fprintf(&head, "Script:    %s (attempt %d, unit %s)\n", fin.ID, fin.Attempt, fin.Unit)
	sections := []string{head.String(), fmt.Sprintf("[EXIT CODE] %d\n", fin.ExitCode)}
	if fin.Reason != "" {
		sections = append(sections, "[REASON]\n"+fin.Reason+"\n")
	}
	if logErr != nil {
		sections = append(sections, fmt.Sprintf("[LOG]\nThe script's log is unavailable: %v\n", logErr))
		return strings.Join(sections, separator)
	}
	var ops strings.Builder
	for _, op := range log.Operations {
		fmt.Fprintf(&ops, "%s %s %s\n", op.Action, op.Type, op.Name)
	}
	return strings.Join(append(sections,
		"[OPERATIONS]\n"+ops.String(),
		output("STDERR", log.Stderr, log.StderrBytes),
		output("STDOUT", log.Stdout, log.StdoutBytes),
		"[SCRIPT]\n"+log.Script,
	), separator)
}

// output is a section with the tail of a stream that wrote total bytes.
func output(name, tail string, total int64) string {
	if int64(len(tail)) < total {
		return fmt.Sprintf("[%s] (the last %d of %d bytes)\n%s", name, len(tail), total, tail)
	}
	return "[" + name + "]\n" + tail
}
