package events

import (
	"strconv"
	"time"

	"github.com/google/uuid"
)

// Requests: events that ask the planner for work without changing the
// model. Each is the only event of its unit.

// ResourceActionRequested: run a backend's custom action on a resource. It
// reaches only the backends of the resource's type that define the action.
type ResourceActionRequested struct {
	Type   string `json:"type"`
	Name   string `json:"name"`
	Action string `json:"action"`
}

func (ResourceActionRequested) EventType() Type { return Type{"ResourceActionRequested", 1} }

// ServerSyncRequested: regenerate a server from the model, a save for every
// resource routed to it (of one backend when Backend is set).
type ServerSyncRequested struct {
	Server  string `json:"server"`
	Backend string `json:"backend,omitempty"`
}

func (ServerSyncRequested) EventType() Type { return Type{"ServerSyncRequested", 1} }

// ScriptRetryRequested: plan a logged script's operations once more, with
// the resources' current state and routes worked out again.
type ScriptRetryRequested struct {
	Script     uuid.UUID      `json:"script"`
	Operations []OperationRef `json:"operations"`
}

func (ScriptRetryRequested) EventType() Type { return Type{"ScriptRetryRequested", 1} }

// OperationRef names an operation: a backend's action on a resource.
type OperationRef struct {
	Backend string `json:"backend"`
	Action  string `json:"action"`
	Type    string `json:"type"`
	Name    string `json:"name"`
}

// Plan is what one unit of work runs on one server: the body of a message
// on the server's subject of the EXEC stream. Script texts hold secrets in
// the clear, for the server to use; everything recorded on RESULTS has them
// masked.
type Plan struct {
	Unit     uuid.UUID    `json:"unit"`
	Sequence uint64       `json:"sequence"` // EVENTS sequence of the unit's last event
	Server   string       `json:"server"`
	Time     time.Time    `json:"time"` // when the unit was committed
	Scripts  []PlanScript `json:"scripts"`
	// Site and Phase are set on the plans of a site run, whose Unit is the
	// run: one plan per server for each phase.
	Site  string `json:"site,omitempty"`
	Phase int    `json:"phase,omitempty"`
}

// MsgID is the plan's Nats-Msg-Id: PlanID, and the phase of a run's.
func (p Plan) MsgID() string {
	if p.Site != "" {
		return PlanID(p.Unit, p.Server) + "#" + strconv.Itoa(p.Phase)
	}
	return PlanID(p.Unit, p.Server)
}

// PlanScript is one backend's script of a plan.
type PlanScript struct {
	ID         uuid.UUID      `json:"id"`
	Backend    string         `json:"backend"`
	Executable string         `json:"executable"`
	Timeout    string         `json:"timeout,omitempty"`
	Async      bool           `json:"async"`
	Operations []OperationRef `json:"operations"`
	Script     string         `json:"script"`
	// Supervise, when set, makes the step act on a supervised process;
	// Script then only describes it.
	Supervise *Supervise `json:"supervise,omitempty"`
}

// PlanID is a plan's Nats-Msg-Id: the unit and the server, so a plan
// published twice is stored once.
func PlanID(unit uuid.UUID, server string) string { return unit.String() + "@" + server }

// ScriptID is the id of the script of backend in the plan of unit for
// server. It is derived, not drawn, so planning a unit again yields the
// same ids.
func ScriptID(unit uuid.UUID, server, backend string) uuid.UUID {
	return uuid.NewSHA1(unit, []byte(server+"\x00"+backend))
}

// Results are facts about scripts and units, published on RESULTS. They are
// not aggregate events: their subject says what they are about.

// Result is implemented by every payload published on RESULTS.
type Result interface {
	ResultType() string
}

// ScriptPlanned records one script of a unit's plan: RECEIVED when it was
// sent to its server, NOTHING when it had no action content, ERROR when it
// could not be rendered. Script is the text with every secret masked.
type ScriptPlanned struct {
	ID         uuid.UUID      `json:"id"`
	Unit       uuid.UUID      `json:"unit"`
	Sequence   uint64         `json:"sequence"`
	Server     string         `json:"server"`
	Backend    string         `json:"backend"`
	Operations []OperationRef `json:"operations"`
	State      string         `json:"state"`
	Reason     string         `json:"reason,omitempty"`
	Script     string         `json:"script,omitempty"`
	Time       time.Time      `json:"time"`
}

func (ScriptPlanned) ResultType() string { return "ScriptPlanned" }

// UnitPlanned records how a unit of work was planned: its scripts, and the
// operations no route took or whose match failed.
type UnitPlanned struct {
	Unit       uuid.UUID       `json:"unit"`
	Sequence   uint64          `json:"sequence"`
	Operations int             `json:"operations"`
	Scripts    []ScriptSummary `json:"scripts"`
	Dropped    []DroppedOp     `json:"dropped"`
	Time       time.Time       `json:"time"`
}

func (UnitPlanned) ResultType() string { return "UnitPlanned" }

// ScriptSummary is a script as a unit's record lists it. Async scripts
// come from async routes: an apply does not wait for them.
type ScriptSummary struct {
	ID      uuid.UUID `json:"id"`
	Server  string    `json:"server"`
	Backend string    `json:"backend"`
	State   string    `json:"state"`
	Async   bool      `json:"async,omitempty"`
}

// DroppedOp is an operation no route took (Route empty), or that a route's
// match failed on.
type DroppedOp struct {
	Operation OperationRef `json:"operation"`
	Route     string       `json:"route,omitempty"`
	Reason    string       `json:"reason"`
}
