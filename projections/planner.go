package projections

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"sync"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/services"
)

// Actions every backend may define; others are custom.
const (
	ActionSave   = "save"
	ActionDelete = "delete"
)

// Script states the planner decides (DESIGN.md §2).
const (
	StateReceived = "RECEIVED" // planned, to be sent to the server
	StateNothing  = "NOTHING"  // no action content: not sent, counts as success
	StateError    = "ERROR"    // could not be rendered; the reason is recorded
)

// Default prepare and commit of a backend that has none.
const (
	DefaultPrepare = "set -e\nset -o pipefail\nexit_code=0\n"
	DefaultCommit  = "exit $exit_code\n"
)

// PlanModel is the model as the planner sees it, folded from the log: what
// each backend serves, where its routes go, and every resource's last state.
// Evolve is its only mutator and does no I/O.
type PlanModel struct {
	servers   map[string]events.Server
	backends  map[string]events.Backend
	routes    map[string]events.Route
	resources map[string]events.Resource
}

// NewPlanModel returns the model of an empty log.
func NewPlanModel() *PlanModel {
	return &PlanModel{
		servers:   map[string]events.Server{},
		backends:  map[string]events.Backend{},
		routes:    map[string]events.Route{},
		resources: map[string]events.Resource{},
	}
}

// Evolve folds one event's payload into m.
func (m *PlanModel) Evolve(p events.Payload) {
	switch p := p.(type) {
	case *events.ServerSaved:
		m.servers[p.Server.Name] = p.Server
	case *events.ServerDeleted:
		delete(m.servers, p.Name)
	case *events.BackendSaved:
		m.backends[p.Backend.Name] = p.Backend
	case *events.BackendDeleted:
		delete(m.backends, p.Name)
	case *events.RouteSaved:
		m.routes[services.RouteName(p.Route.Backend, p.Route.Server)] = p.Route
	case *events.RouteDeleted:
		delete(m.routes, services.RouteName(p.Backend, p.Server))
	case *events.ResourceSaved:
		m.resources[services.ResourceName(p.Resource.Type, p.Resource.Name)] = p.Resource
	case *events.ResourceDeleted:
		delete(m.resources, services.ResourceName(p.Type, p.Name))
	}
}

// Operation is what must happen because of a change: a backend's action on
// a resource, with the resource's state to render it from (its last state,
// for a delete).
type Operation struct {
	Backend  string
	Action   string
	Resource events.Resource
}

// MarshalJSON shows an operation as {backend, action, resource: "type/name"}.
func (o Operation) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Backend  string `json:"backend"`
		Action   string `json:"action"`
		Resource string `json:"resource"`
	}{o.Backend, o.Action, services.ResourceName(o.Resource.Type, o.Resource.Name)})
}

func (o Operation) key() string {
	return o.Backend + "\x00" + services.ResourceName(o.Resource.Type, o.Resource.Name)
}

// Collect folds one unit of work's payloads, in unit order, into m and
// returns the operations they call for:
//
//   - a save of a resource is a save for every backend serving its type,
//     except a backend for which every changed field is ignored;
//   - a delete is a delete, and cancels a save of the same resource
//     pending in the unit;
//   - repeated saves are one save with the latest state, at the place of
//     the last;
//   - a change of a resource of a related type is a save of the main
//     resource it names (even when the related one was deleted), unless a
//     delete of the main resource is pending.
func (m *PlanModel) Collect(unit []events.Payload) []Operation {
	var ops []Operation
	pending := map[string]int{} // key → index in ops
	add := func(op Operation) {
		if i, ok := pending[op.key()]; ok {
			if ops[i].Action == ActionDelete && op.Action != ActionDelete {
				return // the main resource goes; saving it is moot
			}
			ops = slices.Delete(ops, i, i+1)
			for k, j := range pending {
				if j > i {
					pending[k] = j - 1
				}
			}
		}
		pending[op.key()] = len(ops)
		ops = append(ops, op)
	}
	for _, p := range unit {
		var res events.Resource
		var changed []string
		deleted, created := false, false
		switch p := p.(type) {
		case *events.ResourceSaved:
			_, existed := m.resources[services.ResourceName(p.Resource.Type, p.Resource.Name)]
			res, changed, created = p.Resource, p.Changed, !existed
		case *events.ResourceDeleted:
			old, ok := m.resources[services.ResourceName(p.Type, p.Name)]
			if !ok {
				m.Evolve(p)
				continue
			}
			res, deleted = old, true
		default:
			m.Evolve(p)
			continue
		}
		m.Evolve(p)
		for _, b := range m.sortedBackends() {
			if b.Type == res.Type {
				switch {
				case deleted:
					add(Operation{Backend: b.Name, Action: ActionDelete, Resource: res})
				case created || !allIgnored(changed, b.IgnoreFields):
					add(Operation{Backend: b.Name, Action: ActionSave, Resource: res})
				}
			}
			for _, rel := range b.Related {
				if rel.Type != res.Type {
					continue
				}
				main, ok := m.resources[services.ResourceName(b.Type, attrString(res.Attrs, rel.Field))]
				if ok {
					add(Operation{Backend: b.Name, Action: ActionSave, Resource: main})
				}
			}
		}
	}
	return ops
}

func (m *PlanModel) sortedBackends() []events.Backend {
	out := make([]events.Backend, 0, len(m.backends))
	for _, name := range slices.Sorted(maps.Keys(m.backends)) {
		out = append(out, m.backends[name])
	}
	return out
}

// allIgnored reports whether every changed field is one the backend
// ignores ("labels" covers every label).
func allIgnored(changed, ignore []string) bool {
	if len(changed) == 0 || len(ignore) == 0 {
		return false
	}
	for _, c := range changed {
		if !slices.Contains(ignore, c) && !(strings.HasPrefix(c, "labels.") && slices.Contains(ignore, "labels")) {
			return false
		}
	}
	return true
}

// attrString is the string value of a resource attribute, "" when it is
// missing or not a string.
func attrString(attrs json.RawMessage, key string) string {
	var m map[string]json.RawMessage
	if json.Unmarshal(attrs, &m) != nil {
		return ""
	}
	var s string
	if json.Unmarshal(m[key], &s) != nil {
		return ""
	}
	return s
}

// Script is one backend's script for one server.
type Script struct {
	Backend    string      `json:"backend"`
	Executable string      `json:"executable"`
	Timeout    string      `json:"timeout"`
	Operations []Operation `json:"operations"`
	Text       string      `json:"script,omitempty"`
	State      string      `json:"state"`
	Reason     string      `json:"reason,omitempty"`
}

// ServerPlan is what one unit of work runs on one server.
type ServerPlan struct {
	Name    string        `json:"server"`
	Server  events.Server `json:"-"`
	Scripts []Script      `json:"scripts"`
}

// Dropped is an operation no route took, or a route whose match failed.
type Dropped struct {
	Operation Operation `json:"operation"`
	Route     string    `json:"route,omitempty"` // "" when no route matched
	Reason    string    `json:"reason"`
}

// UnitPlan is the plan of one unit of work.
type UnitPlan struct {
	Servers []ServerPlan `json:"plans"` // by server name
	Dropped []Dropped    `json:"dropped"`
}

// Renderer routes and renders operations. Compiler compiles route matches;
// Sealer opens secrets for the scripts.
type Renderer struct {
	Compiler services.MatchCompiler
	Sealer   services.Sealer
}

// Plan routes ops with m's routes and renders one plan per server: one
// script per backend, backends by name, each the backend's prepare, every
// operation's fragment in operation order, and its commit.
func (r Renderer) Plan(m *PlanModel, ops []Operation) UnitPlan {
	var plan UnitPlan
	perServer := map[string]map[string][]Operation{} // server → backend → ops
	for _, op := range ops {
		b := m.backends[op.Backend]
		taken := false
		for _, name := range slices.Sorted(maps.Keys(m.routes)) {
			rt := m.routes[name]
			srv, ok := m.servers[rt.Server]
			if rt.Backend != op.Backend || !rt.Active || !ok || !srv.Active {
				continue
			}
			match, err := r.match(rt, b, srv, op)
			if err != nil {
				plan.Dropped = append(plan.Dropped, Dropped{Operation: op, Route: name, Reason: err.Error()})
				continue
			}
			if !match {
				continue
			}
			taken = true
			if perServer[srv.Name] == nil {
				perServer[srv.Name] = map[string][]Operation{}
			}
			perServer[srv.Name][op.Backend] = append(perServer[srv.Name][op.Backend], op)
		}
		if !taken {
			plan.Dropped = append(plan.Dropped, Dropped{Operation: op, Reason: "no active route of backend " + op.Backend + " matches"})
		}
	}
	for _, name := range slices.Sorted(maps.Keys(perServer)) {
		sp := ServerPlan{Name: name, Server: m.servers[name]}
		for _, bname := range slices.Sorted(maps.Keys(perServer[name])) {
			sp.Scripts = append(sp.Scripts, r.render(m.backends[bname], sp.Server, perServer[name][bname]))
		}
		plan.Servers = append(plan.Servers, sp)
	}
	return plan
}

// match evaluates the route's match, the backend's default match when the
// route has none, or true.
func (r Renderer) match(rt events.Route, b events.Backend, srv events.Server, op Operation) (bool, error) {
	src := rt.Match
	if src == "" {
		src = b.DefaultMatch
	}
	if src == "" {
		return true, nil
	}
	m, err := r.Compiler.Compile(src)
	if err != nil {
		return false, fmt.Errorf("match: %w", err)
	}
	var attrs map[string]any
	_ = json.Unmarshal(op.Resource.Attrs, &attrs)
	ok, err := m.Match(services.MatchInput{
		Resource: services.MatchResource{Type: op.Resource.Type, Name: op.Resource.Name, Attrs: attrs, Labels: op.Resource.Labels},
		Server: services.MatchServer{Name: srv.Name, Address: srv.Address, Port: srv.Port, User: srv.User,
			Method: srv.Method, Labels: srv.Labels},
		Action: op.Action,
	})
	if err != nil {
		return false, fmt.Errorf("match failed at run time: %w", err)
	}
	return ok, nil
}

var varName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// render makes one backend's script for srv.
func (r Renderer) render(b events.Backend, srv events.Server, ops []Operation) Script {
	s := Script{Backend: b.Name, Executable: b.Executable, Timeout: b.Timeout, Operations: ops, State: StateReceived}
	fail := func(format string, args ...any) Script {
		s.State, s.Reason, s.Text = StateError, fmt.Sprintf(format, args...), ""
		return s
	}
	var out bytes.Buffer
	if err := r.fragment(&out, b, "prepare", b.Prepare, DefaultPrepare, nil); err != nil {
		return fail("%v", err)
	}
	content := false
	for _, op := range ops {
		src, ok := b.Actions[op.Action]
		if !ok {
			continue
		}
		data, err := r.data(op, srv)
		if err != nil {
			return fail("%v", err)
		}
		content = true
		fmt.Fprintf(&out, "\n# %s %s\n", op.Action, services.ShellQuote(services.ResourceName(op.Resource.Type, op.Resource.Name)))
		writeVars(&out, data)
		if err := r.fragment(&out, b, "actions."+op.Action, src, "", data); err != nil {
			return fail("%v", err)
		}
	}
	if !content {
		s.State, s.Reason = StateNothing, "no operation has an action of this backend"
		return s
	}
	if err := r.fragment(&out, b, "commit", b.Commit, DefaultCommit, nil); err != nil {
		return fail("%v", err)
	}
	s.Text = out.String()
	return s
}

// fragment renders one fragment (or def when it is empty) into out.
func (r Renderer) fragment(out *bytes.Buffer, b events.Backend, field, src, def string, data map[string]any) error {
	if src == "" {
		out.WriteString(def)
		return nil
	}
	t, err := services.ParseFragment(field, src)
	if err != nil {
		return fmt.Errorf("backend %s, %s: %w", b.Name, field, err)
	}
	if err := t.Option("missingkey=zero").Execute(out, data); err != nil {
		return fmt.Errorf("backend %s, %s: %s", b.Name, field, strings.TrimPrefix(err.Error(), "template: "))
	}
	if !strings.HasSuffix(out.String(), "\n") {
		out.WriteByte('\n')
	}
	return nil
}

// data is the template data of an operation.
func (r Renderer) data(op Operation, srv events.Server) (map[string]any, error) {
	var attrs map[string]any
	if err := json.Unmarshal(op.Resource.Attrs, &attrs); err != nil {
		return nil, fmt.Errorf("attributes of %s: %w", op.Resource.Name, err)
	}
	ref := services.ResourceName(op.Resource.Type, op.Resource.Name)
	secrets := make(map[string]any, len(op.Resource.Secrets))
	for k, sealed := range op.Resource.Secrets {
		plain, err := r.Sealer.Open(sealed, ref+"#"+k)
		if err != nil {
			return nil, fmt.Errorf("secret %s of %s: %w", k, ref, err)
		}
		secrets[k] = plain
	}
	labels := map[string]any{}
	for k, v := range op.Resource.Labels {
		labels[k] = v
	}
	slabels := map[string]any{}
	for k, v := range srv.Labels {
		slabels[k] = v
	}
	return map[string]any{
		"name": op.Resource.Name, "type": op.Resource.Type, "action": op.Action,
		"attrs": attrs, "labels": labels, "secrets": secrets,
		"server": map[string]any{"name": srv.Name, "address": srv.Address, "labels": slabels},
	}, nil
}

// writeVars assigns the operation's values to shell variables at the top of
// its block, each quoted: ORC_NAME, ORC_TYPE, ORC_ACTION, ORC_ATTR_<key>
// and ORC_SECRET_<key> (attribute and secret keys are shell names).
func writeVars(out *bytes.Buffer, data map[string]any) {
	fmt.Fprintf(out, "ORC_NAME=%s ORC_TYPE=%s ORC_ACTION=%s\n",
		services.ShellQuote(data["name"]), services.ShellQuote(data["type"]), services.ShellQuote(data["action"]))
	for _, group := range []struct {
		prefix string
		values map[string]any
	}{{"ORC_ATTR_", data["attrs"].(map[string]any)}, {"ORC_SECRET_", data["secrets"].(map[string]any)}} {
		for _, k := range slices.Sorted(maps.Keys(group.values)) {
			if varName.MatchString(k) {
				fmt.Fprintf(out, "%s%s=%s\n", group.prefix, k, services.ShellQuote(group.values[k]))
			}
		}
	}
}

// Planner keeps a PlanModel current from the log and plans changes that are
// not yet in it (a dry run). Scripts it shows have every secret masked.
type Planner struct {
	progress
	reg      *events.Registry
	renderer Renderer

	mu    sync.RWMutex
	model *PlanModel
}

// NewPlanner returns a planner over an empty log.
func NewPlanner(reg *events.Registry, compiler services.MatchCompiler) *Planner {
	return &Planner{reg: reg, renderer: Renderer{Compiler: compiler, Sealer: masked{}}, model: NewPlanModel()}
}

// Observe folds one stored event; events already folded are skipped.
func (p *Planner) Observe(e events.Envelope) error {
	if e.Sequence <= p.Seq() {
		return nil
	}
	payload, err := p.reg.Payload(e)
	if err != nil {
		return fmt.Errorf("planner: event %d: %w", e.Sequence, err)
	}
	p.mu.Lock()
	p.model.Evolve(payload)
	p.mu.Unlock()
	p.moved(e.Sequence)
	return nil
}

// Preview plans unit, the payloads of a change not in the log, against the
// model once it has reached seq (or ctx's error).
func (p *Planner) Preview(ctx context.Context, seq uint64, unit []events.Payload) (UnitPlan, error) {
	if err := p.WaitFor(ctx, seq); err != nil {
		return UnitPlan{}, err
	}
	p.mu.RLock()
	m := &PlanModel{
		servers: maps.Clone(p.model.servers), backends: maps.Clone(p.model.backends),
		routes: maps.Clone(p.model.routes), resources: maps.Clone(p.model.resources),
	}
	p.mu.RUnlock()
	return p.renderer.Plan(m, m.Collect(unit)), nil
}

// masked opens every secret as services.Masked: what a shown script holds.
type masked struct{}

func (masked) Seal(string, string) (string, error) { return "", fmt.Errorf("masked: cannot seal") }
func (masked) Open(string, string) (string, error) { return services.Masked, nil }
