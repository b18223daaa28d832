package services

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/orchestra-fleet/orchestra/events"
)

// Orders of a custom command's ranks.
const (
	OrderAsc  = "asc"
	OrderDesc = "desc"
)

// RunRequest asks for a command on a site.
type RunRequest struct {
	Site      string   `json:"-"`
	Command   string   `json:"command"`          // start, stop, status, update, restart or run
	Custom    string   `json:"custom,omitempty"` // the custom command of a run
	Order     string   `json:"order,omitempty"`  // asc (default) or desc, of a run
	Keepgoing bool     `json:"keepgoing,omitempty"`
	Services  []string `json:"services,omitempty"`
	DryRun    bool     `json:"dry_run,omitempty"`

	CorrelationID string `json:"-"`
}

// RunResult is a run as it was requested: its id and phases. A dry run
// has no id: nothing was appended.
type RunResult struct {
	Run      string            `json:"run,omitempty"`
	Site     string            `json:"site"`
	Command  string            `json:"command"`
	DryRun   bool              `json:"dry_run,omitempty"`
	Sequence uint64            `json:"sequence"`
	Phases   []events.RunPhase `json:"phases"`
}

// RequestRun starts a command on a site, or with DryRun works out its
// steps and runs nothing. One run at a time per site: a command while
// another runs is a conflict naming the run in progress; it is not queued.
func (s *Service) RequestRun(ctx context.Context, p Principal, req RunRequest) (RunResult, error) {
	if !p.Can(RoleOperator) {
		return RunResult{}, Errorf(EFORBIDDEN, "running site commands needs the operator role; this token (%s) is %s", p.Name, p.Role)
	}
	if err := req.validate(); err != nil {
		return RunResult{}, err
	}
	return serialized(ctx, s, func() (RunResult, error) {
		s.mu.RLock()
		site, ok := s.state.sites[req.Site]
		active, busy := s.state.active[req.Site]
		var busyWith string
		if busy {
			busyWith = s.state.runs[active].Describe()
		}
		pos := s.state.position(events.Aggregate{Type: events.AggSiteRun, ID: req.Site})
		var phases []events.RunPhase
		var err error
		if ok {
			phases, err = planRun(site.value, s.state.servers, req)
		}
		seq := s.state.Seq()
		s.mu.RUnlock()
		switch {
		case !ok:
			return RunResult{}, Errorf(ENOTFOUND, "site %s does not exist", req.Site)
		case err != nil:
			return RunResult{}, err
		}
		res := RunResult{Site: req.Site, Command: req.Command, DryRun: req.DryRun, Sequence: seq, Phases: phases}
		if req.DryRun {
			return res, nil
		}
		if busy {
			return RunResult{}, Errorf(ECONFLICT, "site %s is running %s; wait for it to end or cancel it (orchestra run cancel %s)", req.Site, busyWith, active)
		}
		id, err := uuid.NewV7()
		if err != nil {
			return RunResult{}, Errorf(EINTERNAL, "new run id: %v", err)
		}
		for i := range phases {
			for j := range phases[i].Steps {
				st := &phases[i].Steps[j]
				st.Script = events.ScriptID(id, st.Server, st.Label)
			}
		}
		ev := &events.RunRequested{Run: id, Site: req.Site, Command: req.Command, Custom: req.Custom, Order: req.Order,
			Keepgoing: req.Keepgoing, Services: req.Services, Phases: phases, MaxFailures: -1}
		if req.Command == events.CommandUpdate {
			ev.Strategy = site.value.Update.Strategy
			if ev.Strategy == StrategyRolling && !req.Keepgoing {
				ev.MaxFailures = site.value.Update.MaxFailures
			}
		}
		u, err := NewUnit(events.Meta{Actor: p.Name, CorrelationID: req.CorrelationID}, s.cfg.Now())
		if err != nil {
			return RunResult{}, err
		}
		agg := events.Aggregate{Type: events.AggSiteRun, ID: req.Site}
		u.Expect(agg, pos)
		if err := u.Add(agg, ev); err != nil {
			return RunResult{}, invalid(err)
		}
		at, err := s.commit(ctx, u, []events.Payload{ev})
		if err != nil {
			return RunResult{}, err
		}
		res.Run, res.Sequence = id.String(), at.Last
		return res, nil
	})
}

func (r *RunRequest) validate() error {
	if err := validateName("site", r.Site); err != nil {
		return err
	}
	if err := oneOf("command", r.Command, events.CommandStart, events.CommandStop, events.CommandStatus,
		events.CommandUpdate, events.CommandRestart, events.CommandRun); err != nil {
		return err
	}
	switch {
	case r.Command == events.CommandRun:
		if err := validateIdent("custom", r.Custom); err != nil {
			return err
		}
		if r.Order == "" {
			r.Order = OrderAsc
		}
		if err := oneOf("order", r.Order, OrderAsc, OrderDesc); err != nil {
			return err
		}
	case r.Custom != "":
		return FieldErrorf(EINVALID, "custom", "names a custom command, which only the run command takes")
	case r.Order != "":
		return FieldErrorf(EINVALID, "order", "applies to a custom command (run) only: the other commands have their own order")
	}
	for i, name := range r.Services {
		if err := validateIdent(fmt.Sprintf("services[%d]", i), name); err != nil {
			return err
		}
	}
	return nil
}

// planRun works out a command's phases on site with servers as they are.
func planRun(site events.Site, servers map[string]versioned[events.Server], req RunRequest) ([]events.RunPhase, error) {
	byName := make(map[string]events.Server, len(servers))
	for name, v := range servers {
		byName[name] = v.value
	}
	var chosen []events.SiteService
	for i, name := range req.Services {
		j := slices.IndexFunc(site.Services, func(s events.SiteService) bool { return s.Name == name })
		if j < 0 {
			return nil, FieldErrorf(EINVALID, fmt.Sprintf("services[%d]", i), "site %s has no service %q", site.Name, name)
		}
	}
	for _, svc := range site.Services {
		if len(req.Services) > 0 && !slices.Contains(req.Services, svc.Name) {
			continue
		}
		chosen = append(chosen, svc)
		for _, srv := range ServiceServers(svc, byName) {
			s, ok := byName[srv]
			switch {
			case !ok || !s.Active:
				return nil, Errorf(ECONFLICT, "service %s of site %s runs on server %s, which is inactive; activate it or take it out of the site", svc.Name, site.Name, srv)
			case svc.Run != "" && s.Method != MethodLocal:
				return nil, Errorf(ECONFLICT, "service %s of site %s has a run command, which only a local server supervises, and server %s is %s", svc.Name, site.Name, srv, s.Method)
			}
		}
	}
	b := phaseBuilder{site: site, servers: byName}
	asc := ranks(chosen)
	desc := slices.Clone(asc)
	slices.Reverse(desc)
	switch req.Command {
	case events.CommandStart:
		b.ranked(chosen, asc, "start")
	case events.CommandStop:
		b.ranked(chosen, desc, "stop")
	case events.CommandRestart:
		b.ranked(chosen, desc, "stop")
		b.ranked(chosen, asc, "start")
	case events.CommandStatus:
		b.add(0, "status", 0, chosen, nil)
	case events.CommandUpdate:
		if site.Update.Strategy == StrategyRolling {
			b.rolling(chosen, asc, max(site.Update.Batch, 1))
			break
		}
		b.ranked(chosen, desc, "stop")
		for _, r := range asc {
			for _, c := range []string{"install", "configure", "start"} {
				b.ranked(chosen, []int{r}, c)
			}
		}
	case events.CommandRun:
		order := asc
		if req.Order == OrderDesc {
			order = desc
		}
		b.ranked(chosen, order, req.Custom)
	}
	if len(b.phases) == 0 {
		what := req.Command
		if req.Command == events.CommandRun {
			what = req.Custom
		}
		return nil, FieldErrorf(EINVALID, "command", "nothing to run: no service of site %s (of those chosen) defines a %s command", site.Name, what)
	}
	return b.phases, nil
}

// ranks are the distinct ranks of services, ascending.
func ranks(services []events.SiteService) []int {
	var out []int
	for _, s := range services {
		if !slices.Contains(out, s.Rank) {
			out = append(out, s.Rank)
		}
	}
	slices.Sort(out)
	return out
}

type phaseBuilder struct {
	site    events.Site
	servers map[string]events.Server
	phases  []events.RunPhase
	groups  int
}

// ranked adds one phase of command per rank, in the order given.
func (b *phaseBuilder) ranked(services []events.SiteService, order []int, command string) {
	for _, r := range order {
		var in []events.SiteService
		for _, s := range services {
			if s.Rank == r {
				in = append(in, s)
			}
		}
		b.add(r, command, 0, in, nil)
	}
}

// rolling adds, rank by rank and service by service, batches of at most
// batch servers: each stopped, installed, configured, started and checked.
func (b *phaseBuilder) rolling(services []events.SiteService, order []int, batch int) {
	for _, r := range order {
		for _, svc := range services {
			if svc.Rank != r {
				continue
			}
			servers := ServiceServers(svc, b.servers)
			for chunk := range slices.Chunk(servers, batch) {
				b.groups++
				for _, c := range []string{"stop", "install", "configure", "start", "status"} {
					b.add(r, c, b.groups, []events.SiteService{svc}, chunk)
				}
			}
		}
	}
}

// add adds a phase of command for every instance of services that defines
// it (on only servers, when given); a phase without steps is left out.
func (b *phaseBuilder) add(rank int, command string, group int, services []events.SiteService, only []string) {
	ph := events.RunPhase{Rank: rank, Command: command, Group: group}
	for _, svc := range services {
		text := commandText(svc, command)
		supervised := text == "" && svc.Run != "" && slices.Contains([]string{"start", "stop", "status"}, command)
		if text == "" && !supervised {
			continue
		}
		servers := only
		if servers == nil {
			servers = ServiceServers(svc, b.servers)
		}
		for _, srv := range servers {
			for i := range svc.Scale {
				st := events.RunStep{Label: events.StepLabel(b.site.Name, svc.Name, i, command), Service: svc.Name, Server: srv, Index: i,
					Command: command, Timeout: svc.Timeout}
				if supervised {
					st.Supervise = supervise(b.site.Name, srv, svc, i, command)
					st.Text = fmt.Sprintf("# supervised: %s %s#%d on %s\n# %s\n", command, svc.Name, i, srv, svc.Run)
				} else {
					st.Text = stepScript(b.site.Name, srv, svc, i, command, text)
				}
				ph.Steps = append(ph.Steps, st)
			}
		}
	}
	if len(ph.Steps) > 0 {
		b.phases = append(b.phases, ph)
	}
}

// supervise is the supervise step of one instance of svc's run command.
func supervise(site, server string, svc events.SiteService, index int, action string) *events.Supervise {
	env := []string{"ORCHESTRA_SITE=" + site, "ORCHESTRA_SERVICE=" + svc.Name, "ORCHESTRA_SERVER=" + server,
		"INSTANCE=" + strconv.Itoa(index)}
	port := 0
	if svc.Port > 0 {
		port = svc.Port + index
		env = append(env, "PORT="+strconv.Itoa(port))
	}
	for _, k := range slices.Sorted(maps.Keys(svc.Env)) {
		env = append(env, k+"="+svc.Env[k])
	}
	restart := svc.Restart
	if restart == "" {
		restart = events.RestartOnFailure
	}
	grace, _ := time.ParseDuration(svc.Grace) // checked when saved; 0 is the default
	return &events.Supervise{Action: action, Site: site, Service: svc.Name, Index: index, Scale: svc.Scale, Command: svc.Run,
		Dir: svc.Dir, Env: env, Port: port, Restart: restart, MaxRestarts: svc.MaxRestarts, Grace: grace}
}

// commandText is svc's command called name, "" when it defines none.
func commandText(svc events.SiteService, name string) string {
	switch name {
	case "install":
		return svc.Install
	case "configure":
		return svc.Configure
	case "start":
		return svc.Start
	case "stop":
		return svc.Stop
	case "status":
		return svc.Status
	}
	return svc.Commands[name]
}

// stepScript is the script of one command of one instance: the
// environment, every value shell-quoted, then the command as written.
func stepScript(site, server string, svc events.SiteService, index int, command, text string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# site %s, service %s, instance %d: %s\n", site, svc.Name, index, command)
	fmt.Fprintf(&b, "export ORCHESTRA_SITE=%s ORCHESTRA_SERVICE=%s ORCHESTRA_SERVER=%s ORCHESTRA_COMMAND=%s INSTANCE=%d\n",
		ShellQuote(site), ShellQuote(svc.Name), ShellQuote(server), ShellQuote(command), index)
	for _, k := range slices.Sorted(maps.Keys(svc.Env)) {
		fmt.Fprintf(&b, "export %s=%s\n", k, ShellQuote(svc.Env[k]))
	}
	b.WriteString(text)
	if !strings.HasSuffix(text, "\n") {
		b.WriteByte('\n')
	}
	return b.String()
}

// CancelRun asks the runner to revoke a run's steps not yet started.
func (s *Service) CancelRun(ctx context.Context, p Principal, id uuid.UUID) (uint64, error) {
	if !p.Can(RoleOperator) {
		return 0, Errorf(EFORBIDDEN, "cancelling runs needs the operator role; this token (%s) is %s", p.Name, p.Role)
	}
	return serialized(ctx, s, func() (uint64, error) {
		s.mu.RLock()
		r, ok := s.state.runs[id]
		var site string
		var pos uint64
		if ok {
			site = r.Req.Site
			pos = s.state.position(events.Aggregate{Type: events.AggSiteRun, ID: site})
		}
		s.mu.RUnlock()
		if !ok {
			return 0, Errorf(ENOTFOUND, "run %s is not running (it does not exist or has ended)", id)
		}
		if r.Cancelled {
			return s.Seq(), nil
		}
		_, at, err := s.commitOne(ctx, p, events.Aggregate{Type: events.AggSiteRun, ID: site}, pos, &events.RunCancelRequested{Run: id})
		return at.Last, err
	})
}

// RunProgress is a run not over yet, as the write model knows it.
type RunProgress struct {
	Req     events.RunRequested
	Started time.Time
	Actor   string
	// Phase is the phase started last, -1 before the first; Sent the
	// indexes of its steps that were sent.
	Phase     int
	Sent      []int
	Outcomes  [][]events.StepOutcome // by phase, once finished
	Cancelled bool
}

// Describe names the run for messages: "start (run <id>, since <time>)".
func (r *RunProgress) Describe() string {
	what := r.Req.Command
	if r.Req.Custom != "" {
		what += " " + r.Req.Custom
	}
	return fmt.Sprintf("%s (run %s, since %s)", what, r.Req.Run, r.Started.UTC().Format(time.RFC3339))
}

func (r *RunProgress) evolve(p events.Payload) {
	switch p := p.(type) {
	case *events.RunPhaseStarted:
		r.Phase, r.Sent = p.Phase, p.Steps
	case *events.RunPhaseFinished:
		for len(r.Outcomes) <= p.Phase {
			r.Outcomes = append(r.Outcomes, nil)
		}
		r.Outcomes[p.Phase] = p.Outcomes
	case *events.RunCancelRequested:
		r.Cancelled = true
	}
}

func runOf(p events.Payload) uuid.UUID {
	switch p := p.(type) {
	case *events.RunPhaseStarted:
		return p.Run
	case *events.RunPhaseFinished:
		return p.Run
	case *events.RunCancelRequested:
		return p.Run
	}
	return uuid.Nil
}

// clone copies r so that the runner can read it without the lock.
func (r *RunProgress) clone() *RunProgress {
	c := *r
	c.Sent = slices.Clone(r.Sent)
	c.Outcomes = slices.Clone(r.Outcomes)
	return &c
}

// phaseDone reports whether phase i has finished.
func (r *RunProgress) phaseDone(i int) bool { return i < len(r.Outcomes) && r.Outcomes[i] != nil }

// ActiveRun is the run in progress on site, if any.
func (s *Service) ActiveRun(site string) (uuid.UUID, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	id, ok := s.state.active[site]
	return id, ok
}
