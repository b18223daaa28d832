package projections

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"text/template"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/services"
)

// Actions every backend may define; others are custom.
const (
	ActionSave   = "save"
	ActionDelete = "delete"
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
// for a delete). Server, when set, is the only server it may go to (a sync).
type Operation struct {
	Backend  string
	Action   string
	Resource events.Resource
	Server   string

	// The resource's attributes decoded, once for every route and script
	// the operation meets (templates and matches only read them).
	attrs    map[string]any
	attrsErr error
}

// MarshalJSON shows an operation as {backend, action, resource: "type/name"}.
func (o Operation) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Backend  string `json:"backend"`
		Action   string `json:"action"`
		Resource string `json:"resource"`
		Server   string `json:"server,omitempty"`
	}{o.Backend, o.Action, services.ResourceName(o.Resource.Type, o.Resource.Name), o.Server})
}

// Ref names the operation.
func (o Operation) Ref() events.OperationRef {
	return events.OperationRef{Backend: o.Backend, Action: o.Action, Type: o.Resource.Type, Name: o.Resource.Name}
}

// key identifies what merges: saves and deletes of one resource by one
// backend merge; a custom action merges only with itself.
func (o Operation) key() string {
	k := o.Backend + "\x00" + services.ResourceName(o.Resource.Type, o.Resource.Name) + "\x00" + o.Server
	if o.Action != ActionSave && o.Action != ActionDelete {
		k += "\x00" + o.Action
	}
	return k
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
//     delete of the main resource is pending;
//   - a custom action is that action for every backend of the resource's
//     type that defines it;
//   - a sync of a server is a save, for that server only, of every resource
//     of every backend with an active route to it;
//   - a retry is each logged operation again, with the resource's current
//     state; operations whose resource or backend is gone are left out.
func (m *PlanModel) Collect(unit []events.Payload) []Operation {
	c := collector{pending: map[string]int{}}
	for _, p := range unit {
		switch p := p.(type) {
		case *events.ResourceSaved:
			_, existed := m.resources[services.ResourceName(p.Resource.Type, p.Resource.Name)]
			m.Evolve(p)
			m.changed(&c, p.Resource, p.Changed, !existed, false)
		case *events.ResourceDeleted:
			old, ok := m.resources[services.ResourceName(p.Type, p.Name)]
			m.Evolve(p)
			if ok {
				m.changed(&c, old, nil, false, true)
			}
		case *events.ResourceActionRequested:
			res, ok := m.resources[services.ResourceName(p.Type, p.Name)]
			for _, b := range m.sortedBackends() {
				if _, defined := b.Actions[p.Action]; ok && defined && b.Type == p.Type {
					c.add(Operation{Backend: b.Name, Action: p.Action, Resource: res})
				}
			}
		case *events.ServerSyncRequested:
			m.sync(&c, p.Server, p.Backend)
		case *events.ScriptRetryRequested:
			for _, ref := range p.Operations {
				res, ok := m.resources[services.ResourceName(ref.Type, ref.Name)]
				b, bok := m.backends[ref.Backend]
				if _, defined := b.Actions[ref.Action]; ok && bok && defined && b.Type == ref.Type && ref.Action != ActionDelete {
					c.add(Operation{Backend: ref.Backend, Action: ref.Action, Resource: res})
				}
			}
		default:
			m.Evolve(p)
		}
	}
	return c.ops
}

// collector gathers a unit's operations and merges them.
type collector struct {
	ops     []Operation
	pending map[string]int // key → index in ops
}

func (c *collector) add(op Operation) {
	if i, ok := c.pending[op.key()]; ok {
		if c.ops[i].Action == ActionDelete && op.Action != ActionDelete {
			return // the main resource goes; saving it is moot
		}
		c.ops = slices.Delete(c.ops, i, i+1)
		for k, j := range c.pending {
			if j > i {
				c.pending[k] = j - 1
			}
		}
	}
	c.pending[op.key()] = len(c.ops)
	c.ops = append(c.ops, op)
}

// changed adds the operations a saved (created or not) or deleted resource
// calls for.
func (m *PlanModel) changed(c *collector, res events.Resource, fields []string, created, deleted bool) {
	for _, b := range m.sortedBackends() {
		if b.Type == res.Type {
			switch {
			case deleted:
				c.add(Operation{Backend: b.Name, Action: ActionDelete, Resource: res})
			case created || !allIgnored(fields, b.IgnoreFields):
				c.add(Operation{Backend: b.Name, Action: ActionSave, Resource: res})
			}
		}
		for _, rel := range b.Related {
			if rel.Type != res.Type {
				continue
			}
			main, ok := m.resources[services.ResourceName(b.Type, attrString(res.Attrs, rel.Field))]
			if ok {
				c.add(Operation{Backend: b.Name, Action: ActionSave, Resource: main})
			}
		}
	}
}

// sync adds a save, for server only, of every resource of every backend
// (or only backend) with an active route to it, by backend and resource.
func (m *PlanModel) sync(c *collector, server, backend string) {
	for _, b := range m.sortedBackends() {
		rt, ok := m.routes[services.RouteName(b.Name, server)]
		if !ok || !rt.Active || backend != "" && b.Name != backend {
			continue
		}
		if _, ok := b.Actions[ActionSave]; !ok {
			continue
		}
		for _, name := range slices.Sorted(maps.Keys(m.resources)) {
			if res := m.resources[name]; res.Type == b.Type {
				c.add(Operation{Backend: b.Name, Action: ActionSave, Resource: res, Server: server})
			}
		}
	}
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
	Async      bool        `json:"async"`
	Operations []Operation `json:"operations"`
	Text       string      `json:"script,omitempty"`
	Shown      string      `json:"-"` // Text with secrets masked, when it has secrets and the renderer shows
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
	// Show also renders scripts with secrets masked, into Script.Shown.
	Show bool
	// MaxScript bounds a script's size (default DefaultMaxScript); a
	// script that outgrows it is an ERROR.
	MaxScript int
}

// Plan routes ops with m's routes and renders one plan per server: one
// script per backend, backends by name, each the backend's prepare, every
// operation's fragment in operation order, and its commit.
func (r Renderer) Plan(m *PlanModel, ops []Operation) UnitPlan {
	var plan UnitPlan
	perServer := map[string]map[string][]Operation{} // server → backend → ops
	async := map[string]bool{}                       // route → async
	for _, op := range ops {
		op.attrsErr = json.Unmarshal(op.Resource.Attrs, &op.attrs)
		b := m.backends[op.Backend]
		taken := false
		for _, name := range m.routesOf(op) {
			rt := m.routes[name]
			srv, ok := m.servers[rt.Server]
			if !ok {
				plan.Dropped = append(plan.Dropped, Dropped{Operation: op, Route: name, Reason: "route to server " + rt.Server + ", which does not exist"})
				continue
			}
			if !rt.Active || !srv.Active {
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
			async[name] = rt.Async
		}
		if !taken {
			plan.Dropped = append(plan.Dropped, Dropped{Operation: op, Reason: "no active route of backend " + op.Backend + " matches"})
		}
	}
	for _, name := range slices.Sorted(maps.Keys(perServer)) {
		sp := ServerPlan{Name: name, Server: m.servers[name]}
		for _, bname := range slices.Sorted(maps.Keys(perServer[name])) {
			s := r.render(m.backends[bname], sp.Server, perServer[name][bname])
			s.Async = async[services.RouteName(bname, name)]
			sp.Scripts = append(sp.Scripts, s)
		}
		plan.Servers = append(plan.Servers, sp)
	}
	return plan
}

// routesOf lists, by name, the routes op may take: every route of its
// backend, or the one to its server.
func (m *PlanModel) routesOf(op Operation) []string {
	if op.Server != "" {
		name := services.RouteName(op.Backend, op.Server)
		if _, ok := m.routes[name]; ok {
			return []string{name}
		}
		return nil
	}
	var out []string
	for name, rt := range m.routes {
		if rt.Backend == op.Backend {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
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
	m, err := matchers.get(reflect.TypeOf(r.Compiler).String()+"\x00"+src, func() (services.Matcher, error) { return r.Compiler.Compile(src) })
	if err != nil {
		return false, fmt.Errorf("match: %w", err)
	}
	ok, err := m.Match(services.MatchInput{
		Resource: services.MatchResource{Type: op.Resource.Type, Name: op.Resource.Name, Attrs: op.attrs, Labels: op.Resource.Labels},
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

// DefaultMaxScript bounds a rendered script when the renderer sets no bound.
const DefaultMaxScript = 512 << 10

// errScriptTooLarge stops a render that outgrows the bound.
var errScriptTooLarge = errors.New("script too large")

// scriptBuffer is a script being rendered; writes beyond max fail, so a
// template that would produce too much stops early.
type scriptBuffer struct {
	bytes.Buffer
	max int
}

func (b *scriptBuffer) Write(p []byte) (int, error) {
	if b.Len()+len(p) > b.max {
		return 0, errScriptTooLarge
	}
	return b.Buffer.Write(p)
}

// render makes one backend's script for srv. When r.Show is set and an
// operation has secrets, the script is rendered a second time with the
// secrets masked, into Shown.
func (r Renderer) render(b events.Backend, srv events.Server, ops []Operation) Script {
	s := Script{Backend: b.Name, Executable: b.Executable, Timeout: b.Timeout, Operations: ops, State: events.StateReceived}
	text, err := r.text(b, srv, ops, r.Sealer)
	switch {
	case errors.Is(err, errNothing):
		s.State, s.Reason = events.StateNothing, err.Error()
		return s
	case errors.Is(err, errScriptTooLarge):
		s.State, s.Reason = events.StateError, fmt.Sprintf("backend %s: the script outgrows %d bytes; apply fewer resources at a time", b.Name, r.maxScript())
		return s
	case err != nil:
		s.State, s.Reason = events.StateError, err.Error()
		return s
	}
	s.Text = text
	if r.Show && slices.ContainsFunc(ops, func(op Operation) bool { return len(op.Resource.Secrets) > 0 }) {
		// Masking changes the length, so the shown text gets its own
		// verdict: one that outgrows the bound is not shown, but the
		// script still runs.
		switch s.Shown, err = r.text(b, srv, ops, masked{}); {
		case errors.Is(err, errScriptTooLarge):
			s.Shown = fmt.Sprintf("# the script, with its secrets masked, outgrows %d bytes and is not shown\n", r.maxScript())
		case err != nil:
			s.State, s.Reason, s.Text = events.StateError, err.Error(), ""
		}
	}
	return s
}

// errNothing: no operation has an action of the backend.
var errNothing = errors.New("no operation has an action of this backend")

func (r Renderer) maxScript() int {
	if r.MaxScript > 0 {
		return r.MaxScript
	}
	return DefaultMaxScript
}

// text renders the script, opening secrets with sealer.
func (r Renderer) text(b events.Backend, srv events.Server, ops []Operation, sealer services.Sealer) (string, error) {
	out := &scriptBuffer{max: r.maxScript()}
	if err := r.fragment(out, b, "prepare", b.Prepare, DefaultPrepare, scriptData(b, srv)); err != nil {
		return "", err
	}
	content := false
	for _, op := range ops {
		src, ok := b.Actions[op.Action]
		if !ok {
			continue
		}
		data, err := templateData(op, srv, sealer)
		if err != nil {
			return "", err
		}
		content = true
		if _, err := fmt.Fprintf(out, "\n# %s %s\n", op.Action, services.ShellQuote(services.ResourceName(op.Resource.Type, op.Resource.Name))); err != nil {
			return "", err
		}
		if err := writeVars(out, data); err != nil {
			return "", err
		}
		if err := r.fragment(out, b, "actions."+op.Action, src, "", data); err != nil {
			return "", err
		}
	}
	if !content {
		return "", errNothing
	}
	if err := r.fragment(out, b, "commit", b.Commit, DefaultCommit, scriptData(b, srv)); err != nil {
		return "", err
	}
	return out.String(), nil
}

// fragment renders one fragment (or def when it is empty) into out.
func (r Renderer) fragment(out *scriptBuffer, b events.Backend, field, src, def string, data map[string]any) error {
	if src == "" {
		_, err := out.Write([]byte(def))
		return err
	}
	t, err := parsed(field, src)
	if err != nil {
		return fmt.Errorf("backend %s, %s: %w", b.Name, field, err)
	}
	if err := t.Execute(out, data); err != nil {
		if errors.Is(err, errScriptTooLarge) {
			return err
		}
		return fmt.Errorf("backend %s, %s: %s", b.Name, field, strings.TrimPrefix(err.Error(), "template: "))
	}
	if by := out.Bytes(); len(by) > 0 && by[len(by)-1] != '\n' {
		_, err = out.Write([]byte{'\n'})
	}
	return err
}

// memo caches what is computed from a source text (a parsed fragment, a
// compiled match), so a backend's fragments and a route's match are made
// once, not once per operation. What it holds must be safe for concurrent
// use; it is emptied when it grows past maxMemo.
type memo[T any] struct {
	mu sync.Mutex
	m  map[string]T
}

const maxMemo = 1024

func (c *memo[T]) get(key string, make func() (T, error)) (T, error) {
	c.mu.Lock()
	v, ok := c.m[key]
	c.mu.Unlock()
	if ok {
		return v, nil
	}
	v, err := make()
	if err != nil {
		return v, err
	}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= maxMemo {
		c.m = map[string]T{}
	}
	c.m[key] = v
	c.mu.Unlock()
	return v, nil
}

var (
	templates memo[*template.Template]
	matchers  memo[services.Matcher]
)

func parsed(field, src string) (*template.Template, error) {
	return templates.get(field+"\x00"+src, func() (*template.Template, error) {
		t, err := services.ParseFragment(field, src)
		if err != nil {
			return nil, err
		}
		return t.Option("missingkey=zero"), nil
	})
}

// templateData is the template data of an operation, its secrets opened
// with sealer.
func templateData(op Operation, srv events.Server, sealer services.Sealer) (map[string]any, error) {
	if op.attrsErr != nil {
		return nil, fmt.Errorf("attributes of %s: %w", op.Resource.Name, op.attrsErr)
	}
	ref := services.ResourceName(op.Resource.Type, op.Resource.Name)
	secrets := make(map[string]any, len(op.Resource.Secrets))
	for k, sealed := range op.Resource.Secrets {
		plain, err := sealer.Open(sealed, ref+"#"+k)
		if err != nil {
			return nil, fmt.Errorf("secret %s of %s: %w", k, ref, err)
		}
		secrets[k] = plain
	}
	labels := map[string]any{}
	for k, v := range op.Resource.Labels {
		labels[k] = v
	}
	return map[string]any{
		"name": op.Resource.Name, "type": op.Resource.Type, "action": op.Action,
		"attrs": op.attrs, "labels": labels, "secrets": secrets, "server": serverData(srv),
	}, nil
}

// scriptData is the template data of a backend's prepare and commit: the
// server and the backend's name.
func scriptData(b events.Backend, srv events.Server) map[string]any {
	return map[string]any{"server": serverData(srv), "backend": b.Name}
}

func serverData(srv events.Server) map[string]any {
	labels := make(map[string]any, len(srv.Labels))
	for k, v := range srv.Labels {
		labels[k] = v
	}
	return map[string]any{"name": srv.Name, "address": srv.Address, "labels": labels}
}

// writeVars assigns the operation's values to shell variables at the top of
// its block, each quoted: ORC_NAME, ORC_TYPE, ORC_ACTION, ORC_ATTR_<key>
// and ORC_SECRET_<key> (attribute and secret keys are shell names).
func writeVars(out io.Writer, data map[string]any) error {
	if _, err := fmt.Fprintf(out, "ORC_NAME=%s ORC_TYPE=%s ORC_ACTION=%s\n",
		services.ShellQuote(data["name"]), services.ShellQuote(data["type"]), services.ShellQuote(data["action"])); err != nil {
		return err
	}
	for _, group := range []struct {
		prefix string
		values map[string]any
	}{{"ORC_ATTR_", data["attrs"].(map[string]any)}, {"ORC_SECRET_", data["secrets"].(map[string]any)}} {
		for _, k := range slices.Sorted(maps.Keys(group.values)) {
			if varName.MatchString(k) {
				if _, err := fmt.Fprintf(out, "%s%s=%s\n", group.prefix, k, services.ShellQuote(group.values[k])); err != nil {
					return err
				}
			}
		}
	}
	return nil
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
