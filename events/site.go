package events

import (
	"strconv"
	"time"

	"github.com/google/uuid"
)

// Site is a set of services spread over servers that start in ascending
// rank and stop in descending rank (DESIGN.md §2).
type Site struct {
	Name     string        `json:"name"`
	Update   Update        `json:"update"`
	Notify   []Notify      `json:"notify,omitempty"`
	Services []SiteService `json:"services"`
}

// Update is how `site update` replaces a site's services: stop-all (stop
// every rank, then install, configure and start rank by rank) or rolling
// (rank by rank, Batch servers of a service at a time; the update ends
// once more than MaxFailures instances failed).
type Update struct {
	Strategy    string `json:"strategy"` // stop-all | rolling
	Batch       int    `json:"batch,omitempty"`
	MaxFailures int    `json:"max_failures,omitempty"`
}

// Notify is where a site's runs are reported: a webhook (signed with
// Secret, a sealed value) or an email address.
type Notify struct {
	Webhook string `json:"webhook,omitempty"`
	Secret  string `json:"secret,omitempty"`
	Email   string `json:"email,omitempty"`
}

// SiteService is one service of a site: where it runs, how many
// instances per server, and its commands.
type SiteService struct {
	Name      string            `json:"name"`
	Rank      int               `json:"rank"`
	Servers   []string          `json:"servers,omitempty"`
	Selector  map[string]string `json:"selector,omitempty"`
	Scale     int               `json:"scale"`
	Env       map[string]string `json:"env,omitempty"`
	Timeout   string            `json:"timeout,omitempty"`
	Install   string            `json:"install,omitempty"`
	Configure string            `json:"configure,omitempty"`
	Start     string            `json:"start,omitempty"`
	Stop      string            `json:"stop,omitempty"`
	Status    string            `json:"status,omitempty"`
	Run       string            `json:"run,omitempty"`
	Commands  map[string]string `json:"commands,omitempty"`
	// Of a supervised run command: its working directory, the port of
	// instance 0 (instance n gets Port+n as PORT), the restart policy
	// and the grace between SIGTERM and SIGKILL (default 10s).
	Dir         string `json:"dir,omitempty"`
	Port        int    `json:"port,omitempty"`
	Restart     string `json:"restart,omitempty"`
	MaxRestarts int    `json:"max_restarts,omitempty"`
	Grace       string `json:"grace,omitempty"`
}

// SiteSaved: a site was created or changed.
type SiteSaved struct {
	Site    Site     `json:"site"`
	Changed []string `json:"changed"`
}

func (SiteSaved) EventType() Type { return Type{"SiteSaved", 1} }

// SiteDeleted: a site was removed.
type SiteDeleted struct {
	Name string `json:"name"`
}

func (SiteDeleted) EventType() Type { return Type{"SiteDeleted", 1} }

// Site commands.
const (
	CommandStart   = "start"
	CommandStop    = "stop"
	CommandStatus  = "status"
	CommandUpdate  = "update"
	CommandRestart = "restart"
	CommandRun     = "run" // a custom command named by RunRequested.Custom
)

// Run states. A run that is not over is RUNNING.
const (
	RunRunning = "RUNNING"
	RunSuccess = "SUCCESS"
	RunFailure = "FAILURE"
	RunRevoked = "REVOKED" // cancelled
)

// RunStep is one command of one instance of a service, run on its server
// as one script of a plan. Script is its id: ScriptID(run, server, Label).
type RunStep struct {
	Script  uuid.UUID `json:"script"`
	Label   string    `json:"label"` // the script's backend in the logs
	Service string    `json:"service"`
	Server  string    `json:"server"`
	Index   int       `json:"index"`
	Command string    `json:"command"` // install, configure, start, stop, status or a custom command
	Text    string    `json:"text"`    // the script
	Timeout string    `json:"timeout,omitempty"`
	// Supervise is set on the start, stop and status steps of a service
	// with a run command: the server's executor supervises it.
	Supervise *Supervise `json:"supervise,omitempty"`
}

// RunPhase is a set of steps run at once, on their servers' queues; the
// next phase starts when every step of this one has ended. Group ties the
// phases of one rolling batch: an instance that failed in one is left out
// of the group's later phases.
type RunPhase struct {
	Rank    int       `json:"rank"`
	Command string    `json:"command"`
	Group   int       `json:"group,omitempty"`
	Steps   []RunStep `json:"steps"`
}

// RunRequested: an operator asked for a command on a site. The phases are
// worked out when it is asked, from the site and the servers of that
// moment; the runner carries them out one after the other.
type RunRequested struct {
	Run       uuid.UUID `json:"run"`
	Site      string    `json:"site"`
	Command   string    `json:"command"`
	Custom    string    `json:"custom,omitempty"` // the custom command of a "run"
	Order     string    `json:"order,omitempty"`  // asc | desc, of a "run"
	Keepgoing bool      `json:"keepgoing"`
	Services  []string  `json:"services,omitempty"` // empty: every service
	Strategy  string    `json:"strategy,omitempty"` // of an update
	// MaxFailures ends a rolling update once more instances failed; -1
	// when the run keeps going whatever fails.
	MaxFailures int        `json:"max_failures"`
	Phases      []RunPhase `json:"phases"`
}

func (RunRequested) EventType() Type { return Type{"RunRequested", 1} }

// RunPhaseStarted: the runner sent a phase's steps to their servers. Steps
// lists the indexes of the steps sent; the others were left out (an
// instance that failed earlier in its rolling batch) and count as REVOKED.
type RunPhaseStarted struct {
	Run   uuid.UUID `json:"run"`
	Phase int       `json:"phase"`
	Steps []int     `json:"steps"`
}

func (RunPhaseStarted) EventType() Type { return Type{"RunPhaseStarted", 1} }

// StepOutcome is how one step of a phase ended, and which step it is.
type StepOutcome struct {
	Script   uuid.UUID `json:"script"`
	Service  string    `json:"service"`
	Server   string    `json:"server"`
	Index    int       `json:"index"`
	Command  string    `json:"command"`
	State    string    `json:"state"` // a script state; REVOKED for a step left out
	ExitCode int       `json:"exit_code"`
	Started  time.Time `json:"started,omitzero"`
	Ended    time.Time `json:"ended,omitzero"`
	// Instance is what the step says of its instance: running, stopped
	// or failed; empty when the command says nothing of it.
	Instance string `json:"instance,omitempty"`
}

// RunPhaseFinished: every step of a phase ended. Outcomes follow the
// phase's steps.
type RunPhaseFinished struct {
	Run      uuid.UUID     `json:"run"`
	Site     string        `json:"site"`
	Phase    int           `json:"phase"`
	Outcomes []StepOutcome `json:"outcomes"`
}

func (RunPhaseFinished) EventType() Type { return Type{"RunPhaseFinished", 1} }

// RunCancelRequested: an operator asked to revoke a run's steps not yet
// started.
type RunCancelRequested struct {
	Run uuid.UUID `json:"run"`
}

func (RunCancelRequested) EventType() Type { return Type{"RunCancelRequested", 1} }

// RunFinished: a run ended. Revoked counts the steps never started.
type RunFinished struct {
	Run       uuid.UUID `json:"run"`
	Site      string    `json:"site"`
	Command   string    `json:"command"`
	State     string    `json:"state"`
	Succeeded int       `json:"succeeded"`
	Failed    int       `json:"failed"`
	Revoked   int       `json:"revoked"`
	Reason    string    `json:"reason,omitempty"`
	Started   time.Time `json:"started"`
	Actor     string    `json:"actor,omitempty"` // who asked for the run
	// Failures are the steps that failed, at most MaxRunFailures.
	Failures []StepFailure `json:"failures,omitempty"`
}

// MaxRunFailures bounds RunFinished.Failures.
const MaxRunFailures = 20

// StepFailure is a step of a run that failed.
type StepFailure struct {
	Script   uuid.UUID `json:"script"`
	Service  string    `json:"service"`
	Server   string    `json:"server"`
	Index    int       `json:"index"`
	Command  string    `json:"command"`
	State    string    `json:"state"`
	ExitCode int       `json:"exit_code"`
}

func (RunFinished) EventType() Type { return Type{"RunFinished", 1} }

// Instance states, as the site state read model shows them.
const (
	InstanceRunning = "running"
	InstanceStopped = "stopped"
	InstanceFailed  = "failed"
	InstanceUnknown = "unknown"
)

// NotificationAbandoned: a notification could not be delivered after
// every retry.
type NotificationAbandoned struct {
	ID      string `json:"id"`
	Target  string `json:"target"` // the webhook URL or the email address
	Subject string `json:"subject"`
	Reason  string `json:"reason"`
}

func (NotificationAbandoned) EventType() Type { return Type{"NotificationAbandoned", 1} }

// StepLabel is the backend a site step's script is logged under:
// "site:<site>/<service>#<index> <command>". Backend names are
// identifiers, so no backend has it.
func StepLabel(site, service string, index int, command string) string {
	return "site:" + site + "/" + service + "#" + strconv.Itoa(index) + " " + command
}
