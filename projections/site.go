package projections

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/services"
)

// Tables of the site state read model, kept in the model read model.
const (
	TableSites = "sites"
	// TableRuns holds one summary per run, grouped by site.
	TableRuns = "runs"
	// TableRunEvents holds every event of every run, grouped by run: a
	// run's view is their fold (RunViewOf).
	TableRunEvents = "run_events"
	// TableInstanceState holds what the last start, stop or status said
	// of each instance; TableInstanceLast the last command it ran. Both
	// are grouped by site and keyed <site>/<service>/<server>/<index>.
	TableInstanceState = "instance_state"
	TableInstanceLast  = "instance_last"
	// TableSiteDeletions holds, per site name, the sequence it was last
	// deleted at: instance rows at or below it are a former site's.
	TableSiteDeletions = "site_deletions"
)

// SiteView is a site as the API shows it: webhook secrets masked.
type SiteView struct {
	Kind string `json:"kind"`
	events.Site
	Version uint64 `json:"version"`
}

// RunSummary is a run in a listing.
type RunSummary struct {
	Run       uuid.UUID  `json:"run"`
	Site      string     `json:"site"`
	Command   string     `json:"command"`
	State     string     `json:"state"`
	Requested time.Time  `json:"requested"`
	Finished  *time.Time `json:"finished,omitempty"`
	Succeeded int        `json:"succeeded"`
	Failed    int        `json:"failed"`
	Revoked   int        `json:"revoked"`
	Actor     string     `json:"actor,omitempty"`
}

// RunEvent is one stored event of a run.
type RunEvent struct {
	Type    string          `json:"type"`
	Time    time.Time       `json:"time"`
	Actor   string          `json:"actor,omitempty"`
	Payload json.RawMessage `json:"payload"`
}

// InstanceState is what is known of one instance of a service: running,
// stopped, failed or unknown, since when, and by which command.
type InstanceState struct {
	Service  string    `json:"service"`
	Server   string    `json:"server"`
	Index    int       `json:"index"`
	State    string    `json:"state"`
	Since    time.Time `json:"since,omitzero"`
	Command  string    `json:"command,omitempty"`
	Script   uuid.UUID `json:"script,omitzero"`
	ExitCode int       `json:"exit_code"`
	Run      uuid.UUID `json:"run,omitzero"`
	// Of a supervised instance: its process, port and restarts.
	PID      int `json:"pid,omitempty"`
	Port     int `json:"port,omitempty"`
	Restarts int `json:"restarts,omitempty"`
}

// InstanceKey is an instance's key in the instance tables.
func InstanceKey(site, service, server string, index int) string {
	return fmt.Sprintf("%s/%s/%s/%d", site, service, server, index)
}

// applySite returns the rows of the site and run events, ok false for
// other events.
func applySite(e events.Envelope, p events.Payload) ([]Row, bool, error) {
	v := e.Sequence
	var rows []Row
	var err error
	switch p := p.(type) {
	case *events.SiteSaved:
		rows, err = put(TableSites, p.Site.Name, "", v, SiteView{services.KindSite, services.ViewSite(p.Site), v})
	case *events.SiteDeleted:
		rows = del(TableSites, p.Name)
		// The instances' rows stay, keyed by name: a site made again under
		// the name ignores those older than its deletion.
		var r []Row
		if r, err = put(TableSiteDeletions, p.Name, "", v, struct {
			Deleted uint64 `json:"deleted"`
		}{v}); err == nil {
			rows = append(rows, r...)
		}
	case *events.RunRequested:
		rows, err = put(TableRuns, p.Run.String(), p.Site, v, RunSummary{Run: p.Run, Site: p.Site, Command: p.Command,
			State: events.RunRunning, Requested: e.Time, Actor: e.Actor})
		if err == nil {
			rows, err = runEvent(rows, e, p.Run, p)
		}
	case *events.RunPhaseStarted:
		rows, err = runEvent(nil, e, p.Run, p)
	case *events.RunCancelRequested:
		rows, err = runEvent(nil, e, p.Run, p)
	case *events.RunPhaseFinished:
		rows, err = runEvent(nil, e, p.Run, p)
		for _, o := range p.Outcomes {
			if err != nil || o.Command == "" {
				continue // left out of a rolling batch: nothing ran
			}
			if o.State == events.StateRevoked {
				continue
			}
			key := InstanceKey(p.Site, o.Service, o.Server, o.Index)
			is := InstanceState{Service: o.Service, Server: o.Server, Index: o.Index, State: o.Instance, Since: o.Ended,
				Command: o.Command, Script: o.Script, ExitCode: o.ExitCode, Run: p.Run}
			var r []Row
			if r, err = put(TableInstanceLast, key, p.Site, v, is); err == nil {
				rows = append(rows, r...)
			}
			if o.Instance != "" && err == nil {
				if r, err = put(TableInstanceState, key, p.Site, v, is); err == nil {
					rows = append(rows, r...)
				}
			}
		}
	case *events.InstanceStarted:
		rows, err = put(TableInstanceState, InstanceKey(p.Site, p.Service, p.Server, p.Index), p.Site, v, InstanceState{
			Service: p.Service, Server: p.Server, Index: p.Index, State: events.InstanceRunning, Since: e.Time,
			PID: p.PID, Port: p.Port, Restarts: p.Restarts})
	case *events.InstanceExited:
		st := InstanceState{Service: p.Service, Server: p.Server, Index: p.Index, State: events.InstanceStopped, Since: e.Time, ExitCode: p.ExitCode}
		if !p.Stopped && (p.Restarting || p.ExitCode != 0 || p.Signal != "") {
			st.State = events.InstanceFailed
		}
		rows, err = put(TableInstanceState, InstanceKey(p.Site, p.Service, p.Server, p.Index), p.Site, v, st)
	case *events.RunFinished:
		done := e.Time
		rows, err = put(TableRuns, p.Run.String(), p.Site, v, RunSummary{Run: p.Run, Site: p.Site, Command: p.Command, State: p.State,
			Requested: p.Started, Finished: &done, Succeeded: p.Succeeded, Failed: p.Failed, Revoked: p.Revoked, Actor: p.Actor})
		if err == nil {
			rows, err = runEvent(rows, e, p.Run, p)
		}
	default:
		return nil, false, nil
	}
	return rows, true, err
}

func runEvent(rows []Row, e events.Envelope, run uuid.UUID, p events.Payload) ([]Row, error) {
	raw, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	r, err := put(TableRunEvents, fmt.Sprintf("%s/%020d", run, e.Sequence), run.String(), e.Sequence,
		RunEvent{Type: e.Type, Time: e.Time, Actor: e.Actor, Payload: raw})
	return append(rows, r...), err
}

// RunView is a run as GET /v1/runs/{id} shows it: its request, each
// phase with its steps' states, and how it ended.
type RunView struct {
	Run       uuid.UUID   `json:"run"`
	Site      string      `json:"site"`
	Command   string      `json:"command"`
	Custom    string      `json:"custom,omitempty"`
	Keepgoing bool        `json:"keepgoing"`
	Services  []string    `json:"services,omitempty"`
	Strategy  string      `json:"strategy,omitempty"`
	State     string      `json:"state"`
	Cancelled bool        `json:"cancelled,omitempty"`
	Actor     string      `json:"actor,omitempty"`
	Requested time.Time   `json:"requested"`
	Finished  *time.Time  `json:"finished,omitempty"`
	Reason    string      `json:"reason,omitempty"`
	Succeeded int         `json:"succeeded"`
	Failed    int         `json:"failed"`
	Revoked   int         `json:"revoked"`
	Phases    []PhaseView `json:"phases"`
}

// PhaseView is one phase of a run.
type PhaseView struct {
	Rank     int        `json:"rank"`
	Command  string     `json:"command"`
	Group    int        `json:"group,omitempty"`
	State    string     `json:"state"` // PENDING, RUNNING, SUCCESS, FAILURE or REVOKED
	Started  *time.Time `json:"started,omitempty"`
	Finished *time.Time `json:"finished,omitempty"`
	Steps    []StepView `json:"steps"`
}

// StepView is one step of a run. Its state is PENDING until its phase
// starts, then the state of its script.
type StepView struct {
	Script   uuid.UUID  `json:"script"`
	Service  string     `json:"service"`
	Server   string     `json:"server"`
	Index    int        `json:"index"`
	Command  string     `json:"command"`
	State    string     `json:"state"`
	ExitCode *int       `json:"exit_code,omitempty"`
	Started  *time.Time `json:"started,omitempty"`
	Ended    *time.Time `json:"ended,omitempty"`
	Instance string     `json:"instance,omitempty"`
}

// Phase and step states besides the script states.
const (
	StatePending = "PENDING"
	StateRunning = "RUNNING"
)

// RunViewOf folds a run's stored events, in order, into its view. Steps of
// the phase running show RECEIVED until live states are laid over them
// (the gateway reads them from the script logs).
func RunViewOf(evs []RunEvent) (RunView, error) {
	var v RunView
	for _, e := range evs {
		p, err := decodeRunEvent(e)
		if err != nil {
			return RunView{}, err
		}
		at := e.Time
		switch p := p.(type) {
		case *events.RunRequested:
			v = RunView{Run: p.Run, Site: p.Site, Command: p.Command, Custom: p.Custom, Keepgoing: p.Keepgoing, Services: p.Services,
				Strategy: p.Strategy, State: events.RunRunning, Actor: e.Actor, Requested: at}
			for _, ph := range p.Phases {
				pv := PhaseView{Rank: ph.Rank, Command: ph.Command, Group: ph.Group, State: StatePending}
				for _, st := range ph.Steps {
					pv.Steps = append(pv.Steps, StepView{Script: st.Script, Service: st.Service, Server: st.Server,
						Index: st.Index, Command: st.Command, State: StatePending})
				}
				v.Phases = append(v.Phases, pv)
			}
		case *events.RunPhaseStarted:
			if ph := v.phase(p.Phase); ph != nil {
				ph.State, ph.Started = StateRunning, &at
				for i := range ph.Steps {
					if slices.Contains(p.Steps, i) {
						ph.Steps[i].State = events.StateReceived
					}
				}
			}
		case *events.RunPhaseFinished:
			if ph := v.phase(p.Phase); ph != nil {
				ph.Finished, ph.State = &at, events.StateSuccess
				revoked := 0
				for i, o := range p.Outcomes {
					if i >= len(ph.Steps) {
						break
					}
					st := &ph.Steps[i]
					code := o.ExitCode
					st.State, st.ExitCode, st.Instance = o.State, &code, o.Instance
					st.Started, st.Ended = timePtr(o.Started), timePtr(o.Ended)
					switch st.State {
					case events.StateSuccess, events.StateNothing:
					case events.StateRevoked:
						revoked++
					default:
						ph.State = events.StateFailure
					}
				}
				if revoked == len(ph.Steps) {
					ph.State = events.StateRevoked
				}
			}
		case *events.RunCancelRequested:
			v.Cancelled = true
		case *events.RunFinished:
			v.State, v.Finished, v.Reason = p.State, &at, p.Reason
			v.Succeeded, v.Failed, v.Revoked = p.Succeeded, p.Failed, p.Revoked
			for i := range v.Phases {
				ph := &v.Phases[i]
				if ph.State != StatePending {
					continue
				}
				ph.State = events.StateRevoked
				for j := range ph.Steps {
					ph.Steps[j].State = events.StateRevoked
				}
			}
		}
	}
	return v, nil
}

func (v *RunView) phase(i int) *PhaseView {
	if i < 0 || i >= len(v.Phases) {
		return nil
	}
	return &v.Phases[i]
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func decodeRunEvent(e RunEvent) (events.Payload, error) {
	var p events.Payload
	switch e.Type {
	case "RunRequested":
		p = &events.RunRequested{}
	case "RunPhaseStarted":
		p = &events.RunPhaseStarted{}
	case "RunPhaseFinished":
		p = &events.RunPhaseFinished{}
	case "RunCancelRequested":
		p = &events.RunCancelRequested{}
	case "RunFinished":
		p = &events.RunFinished{}
	default:
		return nil, fmt.Errorf("run event of type %q", e.Type)
	}
	if err := json.Unmarshal(e.Payload, p); err != nil {
		return nil, fmt.Errorf("run event %s: %w", e.Type, err)
	}
	return p, nil
}
