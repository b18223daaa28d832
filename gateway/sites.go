package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/google/uuid"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/projections"
	"github.com/orchestra-fleet/orchestra/services"
)

// siteCommand runs a command on a site: 202 with the run and its phases,
// or 200 with the phases of a dry run. A command while another runs on the
// site is a 409 naming the run in progress; commands are not queued.
func (a *api) siteCommand(w http.ResponseWriter, r *http.Request, p services.Principal) error {
	body, err := readBody(r)
	if err != nil {
		return err
	}
	var req services.RunRequest
	if err := services.DecodeJSON(body, &req); err != nil {
		return err
	}
	req.Site = r.PathValue("name")
	req.CorrelationID = correlation(r)
	res, err := a.svc.RequestRun(r.Context(), p, req)
	if err != nil {
		return err
	}
	status := http.StatusAccepted
	if res.DryRun {
		status = http.StatusOK
	}
	writeRequest(w, status, res.Sequence, res)
	return nil
}

// runID is the run id in the path.
func runID(r *http.Request) (uuid.UUID, error) {
	id, err := uuid.Parse(r.PathValue("id"))
	if err != nil {
		return id, services.FieldErrorf(services.EINVALID, "id", "%q is not a run id (a UUID)", r.PathValue("id"))
	}
	return id, nil
}

// cancelRun revokes a run's steps not yet started.
func (a *api) cancelRun(w http.ResponseWriter, r *http.Request, p services.Principal) error {
	id, err := runID(r)
	if err != nil {
		return err
	}
	if err := optionalBody(r, &struct{}{}); err != nil {
		return err
	}
	seq, err := a.svc.CancelRun(r.Context(), p, id)
	if err != nil {
		return err
	}
	writeRequest(w, http.StatusAccepted, seq, map[string]any{"run": id, "sequence": seq})
	return nil
}

// listRuns lists run summaries, of one site with ?site=.
func (a *api) listRuns(w http.ResponseWriter, r *http.Request, _ services.Principal) error {
	q, err := params(r, "site", "limit", "after", "sequence")
	if err != nil {
		return err
	}
	return a.listRows(w, r, projections.TableRuns, q.Get("site"))
}

// run shows one run: its phases and steps, the running phase's steps with
// their live state from the script logs.
func (a *api) run(w http.ResponseWriter, r *http.Request, _ services.Principal) error {
	id, err := runID(r)
	if err != nil {
		return err
	}
	if err := a.awaitRead(r); err != nil {
		return err
	}
	v, err := a.runView(r.Context(), id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, v)
	return nil
}

func (a *api) runView(ctx context.Context, id uuid.UUID) (projections.RunView, error) {
	var evs []projections.RunEvent
	err := a.eachRow(ctx, projections.TableRunEvents, id.String(), func(row projections.Row) error {
		var e projections.RunEvent
		if err := json.Unmarshal(row.Doc, &e); err != nil {
			return fmt.Errorf("run event %s: %w", row.Key, err)
		}
		evs = append(evs, e)
		return nil
	})
	if err != nil {
		return projections.RunView{}, err
	}
	if len(evs) == 0 {
		return projections.RunView{}, services.Errorf(services.ENOTFOUND, "run %s does not exist", id)
	}
	v, err := projections.RunViewOf(evs)
	if err != nil || a.logs == nil || v.Finished != nil {
		return v, err
	}
	if err := a.logs.CatchUp(ctx); err != nil {
		return v, err
	}
	for i := range v.Phases {
		ph := &v.Phases[i]
		if ph.State != projections.StateRunning {
			continue
		}
		for j := range ph.Steps {
			st := &ph.Steps[j]
			if st.State != events.StateReceived {
				continue
			}
			l, err := a.logs.Script(ctx, st.Script)
			if errors.Is(err, projections.ErrNotFound) {
				continue
			}
			if err != nil {
				return v, err
			}
			st.State, st.ExitCode, st.Started, st.Ended = l.State, l.ExitCode, l.Started, l.Finished
		}
	}
	return v, nil
}

// eachRow calls fn with every row of table in group, in key order.
func (a *api) eachRow(ctx context.Context, table, group string, fn func(projections.Row) error) error {
	after := ""
	for {
		rows, err := a.rows.List(ctx, projections.Query{Table: table, Group: group, After: after, Limit: 500})
		if err != nil {
			return err
		}
		for _, row := range rows {
			if err := fn(row); err != nil {
				return err
			}
		}
		if len(rows) < 500 {
			return nil
		}
		after = rows[len(rows)-1].Key
	}
}

// InstanceView is one instance of a site's service as GET
// /v1/sites/{name}/state shows it: its state, the last command it ran and
// that command's output.
type InstanceView struct {
	projections.InstanceState
	Rank     int    `json:"rank"`
	Last     string `json:"last,omitempty"`      // the last command run
	LastCode *int   `json:"last_exit,omitempty"` // and its exit code
	LastRun  string `json:"last_run,omitempty"`  // the run it belonged to
	Stdout   string `json:"stdout,omitempty"`    // the tail of its output
	Stderr   string `json:"stderr,omitempty"`
}

// SiteState is GET /v1/sites/{name}/state.
type SiteState struct {
	Site      string         `json:"site"`
	Run       *uuid.UUID     `json:"run,omitempty"` // the run in progress, if any
	Instances []InstanceView `json:"instances"`
}

// siteState shows every instance of a site's services: running, stopped,
// failed or unknown (no start, stop or status has said yet).
func (a *api) siteState(w http.ResponseWriter, r *http.Request, _ services.Principal) error {
	name := r.PathValue("name")
	if err := a.awaitRead(r); err != nil {
		return err
	}
	st, err := a.state(r.Context(), name)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, st)
	return nil
}

func (a *api) state(ctx context.Context, name string) (SiteState, error) {
	row, err := a.rows.Get(ctx, projections.TableSites, name)
	if errors.Is(err, projections.ErrNotFound) {
		return SiteState{}, services.Errorf(services.ENOTFOUND, "site %q does not exist", name)
	}
	if err != nil {
		return SiteState{}, err
	}
	var site projections.SiteView
	if err := json.Unmarshal(row.Doc, &site); err != nil {
		return SiteState{}, fmt.Errorf("site %s: %w", name, err)
	}
	servers := map[string]events.Server{}
	if err := a.eachRow(ctx, projections.TableServers, "", func(row projections.Row) error {
		var s projections.ServerView
		if err := json.Unmarshal(row.Doc, &s); err != nil {
			return fmt.Errorf("server %s: %w", row.Key, err)
		}
		servers[s.Name] = s.Server
		return nil
	}); err != nil {
		return SiteState{}, err
	}
	var deleted uint64 // rows of a former site of the name are older
	if row, err := a.rows.Get(ctx, projections.TableSiteDeletions, name); err == nil {
		deleted = row.Version
	} else if !errors.Is(err, projections.ErrNotFound) {
		return SiteState{}, err
	}
	known := map[string]projections.InstanceState{}
	last := map[string]projections.InstanceState{}
	for table, into := range map[string]map[string]projections.InstanceState{
		projections.TableInstanceState: known, projections.TableInstanceLast: last,
	} {
		if err := a.eachRow(ctx, table, name, func(row projections.Row) error {
			if row.Version <= deleted {
				return nil
			}
			var is projections.InstanceState
			if err := json.Unmarshal(row.Doc, &is); err != nil {
				return fmt.Errorf("instance %s: %w", row.Key, err)
			}
			into[row.Key] = is
			return nil
		}); err != nil {
			return SiteState{}, err
		}
	}
	out := SiteState{Site: name, Instances: []InstanceView{}}
	if id, ok := a.svc.ActiveRun(name); ok {
		out.Run = &id
	}
	for _, in := range services.Instances(site.Site, servers) {
		key := projections.InstanceKey(name, in.Service, in.Server, in.Index)
		v := InstanceView{Rank: in.Rank}
		v.InstanceState = known[key]
		v.Service, v.Server, v.Index = in.Service, in.Server, in.Index
		if v.State == "" {
			v.State = events.InstanceUnknown
		}
		if l, ok := last[key]; ok {
			code := l.ExitCode
			v.Last, v.LastCode, v.LastRun = l.Command, &code, l.Run.String()
			if a.logs != nil {
				if log, err := a.logs.Script(ctx, l.Script); err == nil {
					v.Stdout, v.Stderr = log.Stdout, log.Stderr
				}
			}
		}
		out.Instances = append(out.Instances, v)
	}
	return out, nil
}
