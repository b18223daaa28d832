package events

import (
	"time"

	"github.com/google/uuid"
)

// Supervise is a step that acts on a supervised process instead of
// running a script: the executor of a local server starts, stops or asks
// after one instance of a service's run command.
type Supervise struct {
	Action  string `json:"action"` // start | stop | status
	Site    string `json:"site"`
	Service string `json:"service"`
	Index   int    `json:"index"`
	// Scale is the service's instances on the server: a start also stops
	// the instances at or beyond it (scaling down).
	Scale   int      `json:"scale"`
	Command string   `json:"command"` // run by /bin/sh -c
	Dir     string   `json:"dir,omitempty"`
	Env     []string `json:"env"` // KEY=value, INSTANCE and PORT included
	Port    int      `json:"port,omitempty"`
	// Restart is on-failure (default), always or never; MaxRestarts
	// bounds the restarts in a row (0: unbounded).
	Restart     string        `json:"restart"`
	MaxRestarts int           `json:"max_restarts,omitempty"`
	Grace       time.Duration `json:"grace_ns"` // between SIGTERM and SIGKILL
}

// Supervise actions.
const (
	SuperviseStart  = "start"
	SuperviseStop   = "stop"
	SuperviseStatus = "status"
)

// Restart policies of a supervised process.
const (
	RestartOnFailure = "on-failure"
	RestartAlways    = "always"
	RestartNever     = "never"
)

// InstanceStarted: a supervised process started (again, when Restarts >
// 0: how many times its supervisor restarted it).
type InstanceStarted struct {
	Site     string    `json:"site"`
	Service  string    `json:"service"`
	Server   string    `json:"server"`
	Index    int       `json:"index"`
	PID      int       `json:"pid"`
	Port     int       `json:"port,omitempty"`
	Restarts int       `json:"restarts"`
	Run      uuid.UUID `json:"run,omitzero"`
}

func (InstanceStarted) EventType() Type { return Type{"InstanceStarted", 1} }

// InstanceExited: a supervised process ended: stopped on purpose
// (Stopped), or exited on its own with ExitCode (-1 when killed by
// Signal), then restarted after Backoff unless Restarting is false.
type InstanceExited struct {
	Site       string        `json:"site"`
	Service    string        `json:"service"`
	Server     string        `json:"server"`
	Index      int           `json:"index"`
	PID        int           `json:"pid"`
	ExitCode   int           `json:"exit_code"`
	Signal     string        `json:"signal,omitempty"`
	Stopped    bool          `json:"stopped"`
	Restarting bool          `json:"restarting"`
	Backoff    time.Duration `json:"backoff_ns,omitempty"`
}

func (InstanceExited) EventType() Type { return Type{"InstanceExited", 1} }
