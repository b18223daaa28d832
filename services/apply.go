package services

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/orchestra-fleet/orchestra/events"
)

// MaxObjects bounds one apply: it is one unit of work, and a unit holds at
// most this many events.
const MaxObjects = 1000

// ApplyRequest is one unit of work: objects to save or delete together.
type ApplyRequest struct {
	Objects []Object
	// Single makes errors name fields as in a single-object document
	// ("match") instead of a list ("objects[3].match").
	Single        bool
	CorrelationID string
}

// ApplyResult says what a unit of work did.
type ApplyResult struct {
	// Unit is the unit's id; empty when nothing changed.
	Unit string `json:"unit,omitempty"`
	// Sequence is the stream sequence after the change (the unit's last
	// event, or the write model's position when nothing changed). Reads
	// that pass it see the change.
	Sequence uint64         `json:"sequence"`
	Objects  []ObjectResult `json:"objects"`
}

// ObjectResult is what happened to one object of an apply.
type ObjectResult struct {
	Kind    string   `json:"kind"`
	Name    string   `json:"name"`
	Result  string   `json:"result"` // created | configured | unchanged | deleted | absent
	Version uint64   `json:"version"`
	Changed []string `json:"changed,omitempty"`
}

// Results of an object in an apply.
const (
	Created    = "created"
	Configured = "configured"
	Unchanged  = "unchanged"
	Deleted    = "deleted"
	Absent     = "absent"
)

// DecodeApply decodes a POST /v1/apply body: {"objects": [document, …]}.
func DecodeApply(data []byte) (ApplyRequest, error) {
	var body struct {
		Objects []json.RawMessage `json:"objects"`
	}
	if err := decodeStrict(data, &body); err != nil {
		return ApplyRequest{}, err
	}
	if len(body.Objects) > MaxObjects {
		return ApplyRequest{}, FieldErrorf(ETOOLARGE, "objects", "has %d objects; one apply holds at most %d", len(body.Objects), MaxObjects)
	}
	req := ApplyRequest{Objects: make([]Object, len(body.Objects))}
	for i, raw := range body.Objects {
		o, err := DecodeObject(raw)
		if err != nil {
			return ApplyRequest{}, at(i, false, Ref{}, err)
		}
		req.Objects[i] = o
	}
	return req, nil
}

// at places err, about object i, in the request: its field gains the
// objects[i] prefix (unless single) and its message names the object.
func at(i int, single bool, ref Ref, err error) error {
	var e *Error
	if !errors.As(err, &e) {
		return err
	}
	out := *e
	if !single {
		out.Field = strings.TrimSuffix(fmt.Sprintf("objects[%d].%s", i, e.Field), ".")
	}
	if ref.Name != "" {
		out.Message = ref.String() + ": " + e.Message
	}
	return &out
}

// Apply saves and deletes req's objects as one unit of work, all or nothing.
// An object equal to what is stored writes no event; a unit with no event is
// not appended.
func (s *Service) Apply(ctx context.Context, p Principal, req ApplyRequest) (ApplyResult, error) {
	if len(req.Objects) == 0 {
		return ApplyResult{}, FieldErrorf(EINVALID, "objects", "is empty: nothing to apply")
	}
	if len(req.Objects) > MaxObjects {
		return ApplyResult{}, FieldErrorf(ETOOLARGE, "objects", "has %d objects; one apply holds at most %d", len(req.Objects), MaxObjects)
	}
	drafts, err := s.prepare(p, req)
	if err != nil {
		return ApplyResult{}, err
	}
	return serialized(ctx, s, func() (ApplyResult, error) { return s.applyOnce(ctx, p, req, drafts) })
}

// draft is one object of an apply after the checks that need no state.
type draft struct {
	obj      Object
	ref      Ref
	server   events.Server
	backend  events.Backend
	route    events.Route
	resource resourceDraft
	site     events.Site
}

// prepare validates every object on its own and checks the caller may change
// it and that no object appears twice.
func (s *Service) prepare(p Principal, req ApplyRequest) ([]draft, error) {
	drafts := make([]draft, len(req.Objects))
	seen := make(map[Ref]int, len(req.Objects))
	for i, o := range req.Objects {
		d, err := s.normalize(o)
		if err != nil {
			return nil, at(i, req.Single, namedRef(o), err)
		}
		if need := roleToChange(d.ref.Kind); !p.Can(need) {
			return nil, at(i, req.Single, d.ref, Errorf(EFORBIDDEN, "changing a %s needs the %s role; this token (%s) is %s", d.ref.Kind, need, p.Name, p.Role))
		}
		if j, dup := seen[d.ref]; dup {
			return nil, at(i, req.Single, d.ref, Errorf(EINVALID, "appears twice in one apply (also objects[%d])", j))
		}
		seen[d.ref] = i
		drafts[i] = d
	}
	return drafts, nil
}

// normalize validates one object. A deletion needs only the fields that
// name the object.
func (s *Service) normalize(o Object) (draft, error) {
	d := draft{obj: o}
	var err error
	switch {
	case o.Server != nil && o.Delete:
		err = validateName("name", o.Server.Name)
	case o.Server != nil:
		d.server, err = o.Server.normalize()
	case o.Backend != nil && o.Delete:
		err = validateIdent("name", o.Backend.Name)
	case o.Backend != nil:
		d.backend, err = o.Backend.normalize(s.cfg.Compiler)
	case o.Route != nil && o.Delete:
		_, _, err = ParseRouteName(RouteName(o.Route.Backend, o.Route.Server))
	case o.Route != nil:
		d.route, err = o.Route.normalize(s.cfg.Compiler)
	case o.Resource != nil && o.Delete:
		if err = validateIdent("type", o.Resource.Type); err == nil {
			err = validateName("name", o.Resource.Name)
		}
	case o.Resource != nil:
		d.resource, err = o.Resource.normalize()
	case o.Site != nil && o.Delete:
		err = validateName("name", o.Site.Name)
	case o.Site != nil:
		d.site, err = o.Site.normalize()
	default:
		err = FieldErrorf(EINVALID, "kind", "%q is not a kind; use one of %s", o.Kind, kindList)
	}
	if err != nil {
		return draft{}, err
	}
	d.ref = o.Ref()
	return d, nil
}

// namedRef is o's Ref when the fields that name o are valid, so that an
// error about another of its fields can name the object; else the zero Ref.
func namedRef(o Object) Ref {
	var err error
	switch {
	case o.Server != nil:
		err = validateName("name", o.Server.Name)
	case o.Backend != nil:
		err = validateIdent("name", o.Backend.Name)
	case o.Route != nil:
		_, _, err = ParseRouteName(RouteName(o.Route.Backend, o.Route.Server))
	case o.Resource != nil:
		if err = validateIdent("type", o.Resource.Type); err == nil {
			err = validateName("name", o.Resource.Name)
		}
	case o.Site != nil:
		err = validateName("name", o.Site.Name)
	default:
		return Ref{}
	}
	if err != nil {
		return Ref{}
	}
	return o.Ref()
}

// change is the decision for one object.
type change struct {
	index   int
	ref     Ref
	deleted bool
	payload events.Payload // nil: nothing to write
	server  *events.Server // the saved value, for reference checks
	route   *events.Route
	site    *events.Site
	result  ObjectResult
}

// applyOnce decides every draft against the current state, checks the
// references of the whole unit, and commits it.
func (s *Service) applyOnce(ctx context.Context, p Principal, req ApplyRequest, drafts []draft) (ApplyResult, error) {
	d, err := s.decideUnit(p, req, drafts)
	if err != nil || d.unit.Len() == 0 {
		return d.result, err
	}
	appended, err := s.commit(ctx, d.unit, d.payloads)
	if err != nil {
		return ApplyResult{}, err
	}
	res := d.result
	res.Unit = d.unit.ID.String()
	res.Sequence = appended.Last
	for n, i := range d.written {
		if !d.changes[i].deleted {
			res.Objects[i].Version = appended.First + uint64(n)
		}
	}
	return res, nil
}

// Preview decides req as Apply would and returns what the unit of work
// would hold, appending nothing: the result and the payloads in unit order.
func (s *Service) Preview(ctx context.Context, p Principal, req ApplyRequest) (ApplyResult, []events.Payload, error) {
	if len(req.Objects) == 0 {
		return ApplyResult{}, nil, FieldErrorf(EINVALID, "objects", "is empty: nothing to plan")
	}
	drafts, err := s.prepare(p, req)
	if err != nil {
		return ApplyResult{}, nil, err
	}
	d, err := serialized(ctx, s, func() (decided, error) { return s.decideUnit(p, req, drafts) })
	return d.result, d.payloads, err
}

// decided is a unit of work decided and not yet committed.
type decided struct {
	result   ApplyResult
	unit     *Unit
	payloads []events.Payload
	changes  []change
	written  []int // index in changes of each event
}

// decideUnit decides every draft against the current state, checks the
// references of the whole unit, and builds the unit.
func (s *Service) decideUnit(p Principal, req ApplyRequest, drafts []draft) (decided, error) {
	s.mu.RLock()
	changes := make([]change, len(drafts))
	var err error
	for i, d := range drafts {
		if changes[i], err = s.decide(d); err != nil {
			s.mu.RUnlock()
			return decided{}, at(i, req.Single, d.ref, err)
		}
		changes[i].index = i
	}
	err = s.checkReferences(req, changes)
	seq := s.state.Seq()
	versions := make([]uint64, len(changes))
	for i, c := range changes {
		versions[i] = s.state.position(c.ref.Aggregate())
	}
	s.mu.RUnlock()
	if err != nil {
		return decided{}, err
	}

	u, err := NewUnit(events.Meta{Actor: p.Name, CorrelationID: req.CorrelationID}, s.cfg.Now())
	if err != nil {
		return decided{}, err
	}
	d := decided{unit: u, changes: changes, result: ApplyResult{Sequence: seq, Objects: make([]ObjectResult, len(changes))}}
	for i, c := range changes {
		d.result.Objects[i] = c.result
		if c.payload == nil {
			continue
		}
		u.Expect(c.ref.Aggregate(), versions[i])
		if err := u.Add(c.ref.Aggregate(), c.payload); err != nil {
			return decided{}, at(i, req.Single, c.ref, invalid(err))
		}
		d.payloads = append(d.payloads, c.payload)
		d.written = append(d.written, i)
	}
	return d, nil
}

// decide turns one draft into its change. The caller holds s.mu.
func (s *Service) decide(d draft) (change, error) {
	st := s.state
	cur := st.version(d.ref)
	c := change{ref: d.ref, result: ObjectResult{Kind: d.ref.Kind, Name: d.ref.Name, Version: cur}}
	if err := checkCondition(d.obj.Cond, cur); err != nil {
		return change{}, err
	}
	if d.obj.Delete {
		c.deleted = true
		if cur == 0 {
			c.result.Result = Absent
			return c, nil
		}
		c.result.Result = Deleted
		c.result.Version = 0
		switch d.ref.Kind {
		case KindServer:
			c.payload = &events.ServerDeleted{Name: d.ref.Name}
		case KindBackend:
			c.payload = &events.BackendDeleted{Name: d.ref.Name}
		case KindRoute:
			r := st.routes[d.ref.Name].value
			c.payload = &events.RouteDeleted{Backend: r.Backend, Server: r.Server}
		case KindResource:
			r := st.resources[d.ref.Name].value
			c.payload = &events.ResourceDeleted{Type: r.Type, Name: r.Name}
		case KindSite:
			if run, busy := st.active[d.ref.Name]; busy {
				return change{}, Errorf(ECONFLICT, "is running %s; wait for it to end or cancel it (orchestra run cancel %s)", st.runs[run].Describe(), run)
			}
			c.payload = &events.SiteDeleted{Name: d.ref.Name}
		}
		return c, nil
	}
	var changed []string
	switch d.ref.Kind {
	case KindServer:
		changed = serverChanges(st.servers[d.ref.Name].value, d.server)
		c.payload = &events.ServerSaved{Server: d.server, Changed: changed}
		c.server = &d.server
	case KindBackend:
		changed = backendChanges(st.backends[d.ref.Name].value, d.backend)
		c.payload = &events.BackendSaved{Backend: d.backend, Changed: changed}
	case KindRoute:
		changed = routeChanges(st.routes[d.ref.Name].value, d.route)
		c.payload = &events.RouteSaved{Route: d.route, Changed: changed}
		c.route = &d.route
	case KindResource:
		var old *events.Resource
		if v, ok := st.resources[d.ref.Name]; ok {
			old = &v.value
		}
		res, ch, err := d.resource.seal(s.cfg.Sealer, old)
		if err != nil {
			return change{}, err
		}
		changed = ch
		c.payload = &events.ResourceSaved{Resource: res, Changed: changed}
	case KindSite:
		var old *events.Site
		if v, ok := st.sites[d.ref.Name]; ok {
			old = &v.value
		}
		site, ch, err := sealSite(s.cfg.Sealer, d.site, old)
		if err != nil {
			return change{}, err
		}
		changed = ch
		c.payload = &events.SiteSaved{Site: site, Changed: changed}
		c.site = &site
	}
	switch {
	case cur == 0:
		c.result.Result = Created
		if len(changed) == 0 {
			changed = []string{} // a new object: the event says so with an empty list
		}
	case len(changed) == 0:
		c.result.Result = Unchanged
		c.payload = nil
	default:
		c.result.Result = Configured
	}
	c.result.Changed = changed
	return c, nil
}

// checkCondition enforces an If-Match / If-None-Match precondition.
func checkCondition(cond Condition, cur uint64) error {
	switch {
	case cond.MustNotBe && cur != 0:
		return Errorf(ECONFLICT, "already exists (version %d)", cur)
	case (cond.MustExist || cond.Version != 0) && cur == 0:
		return Errorf(ENOTFOUND, "does not exist")
	case cond.Version != 0 && cond.Version != cur:
		return FieldErrorf(ECONFLICT, "version", "is %d, but the object has changed since: it is at version %d; read it again and reapply", cond.Version, cur)
	}
	return nil
}

// referenceError is a route whose backend or server does not exist.
type referenceError struct{ err error }

func (e *referenceError) Error() string { return e.err.Error() }
func (e *referenceError) Unwrap() error { return e.err }

// checkReferences checks the unit as a whole: every saved route's backend
// and server exist once the unit is applied, and no deleted server or
// backend is still used by a route that stays. The caller holds s.mu.
func (s *Service) checkReferences(req ApplyRequest, changes []change) error {
	pending := make(map[Ref]*change, len(changes))
	for i := range changes {
		pending[changes[i].ref] = &changes[i]
	}
	exists := func(ref Ref) bool {
		if c, ok := pending[ref]; ok {
			return !c.deleted
		}
		return s.state.version(ref) != 0
	}
	for _, c := range changes {
		if c.route == nil {
			continue
		}
		for _, dep := range []struct{ field, kind, name string }{
			{"backend", KindBackend, c.route.Backend}, {"server", KindServer, c.route.Server},
		} {
			if !exists(Ref{dep.kind, dep.name}) {
				e := FieldErrorf(EINVALID, dep.field, "%s %q does not exist; create it first or in the same apply", strings.ToLower(dep.kind), dep.name)
				return &referenceError{at(c.index, req.Single, c.ref, e)}
			}
		}
	}
	for _, c := range changes {
		if c.site == nil {
			continue
		}
		for i, svc := range c.site.Services {
			for j, name := range svc.Servers {
				if !exists(Ref{KindServer, name}) {
					e := FieldErrorf(EINVALID, fmt.Sprintf("services[%d].servers[%d]", i, j), "server %q does not exist; create it first or in the same apply", name)
					return &referenceError{at(c.index, req.Single, c.ref, e)}
				}
			}
		}
	}
	// Routes and sites that remain once the unit is applied, by server
	// and backend.
	users := map[Ref][]string{}
	addSite := func(site events.Site) {
		for _, svc := range site.Services {
			for _, srv := range svc.Servers {
				ref := Ref{KindServer, srv}
				if name := fmt.Sprintf("site %q", site.Name); !slices.Contains(users[ref], name) {
					users[ref] = append(users[ref], name)
				}
			}
		}
	}
	for name, site := range s.state.sites {
		if _, touched := pending[Ref{KindSite, name}]; !touched {
			addSite(site.value)
		}
	}
	for _, c := range changes {
		if c.site != nil {
			addSite(*c.site)
		}
	}
	addRoute := func(name string, r events.Route) {
		users[Ref{KindServer, r.Server}] = append(users[Ref{KindServer, r.Server}], fmt.Sprintf("route %q", name))
		users[Ref{KindBackend, r.Backend}] = append(users[Ref{KindBackend, r.Backend}], fmt.Sprintf("route %q", name))
	}
	for name, r := range s.state.routes {
		if _, touched := pending[Ref{KindRoute, name}]; !touched {
			addRoute(name, r.value)
		}
	}
	for _, c := range changes {
		if c.route != nil {
			addRoute(c.ref.Name, *c.route)
		}
	}
	for _, c := range changes {
		if !c.deleted || c.payload == nil || (c.ref.Kind != KindServer && c.ref.Kind != KindBackend) {
			continue
		}
		if names := users[c.ref]; len(names) > 0 {
			slices.Sort(names)
			e := Errorf(ECONFLICT, "is still used by %s; delete them in the same apply (or change the sites)", strings.Join(names, ", "))
			return at(c.index, req.Single, c.ref, e)
		}
	}
	return nil
}

// kindRoles is the role needed to change each kind: operators manage
// resources, admins everything.
var kindRoles = map[string]string{
	KindServer: RoleAdmin, KindBackend: RoleAdmin, KindRoute: RoleAdmin, KindResource: RoleOperator,
	// A site's commands run on its servers as they are written.
	KindSite: RoleAdmin,
}

func roleToChange(kind string) string { return kindRoles[kind] }
