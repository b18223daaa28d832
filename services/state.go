package services

import (
	"github.com/google/uuid"

	"github.com/orchestra-fleet/orchestra/events"
)

// Kinds of model objects, as written in apply files and API documents.
const (
	KindServer   = "Server"
	KindBackend  = "Backend"
	KindRoute    = "Route"
	KindResource = "Resource"
)

// kindList names the kinds for messages.
const kindList = "Server, Backend, Route, Resource, Site"

// Ref names one model object: its kind and its name. A route is named
// "<backend>@<server>", a resource "<type>/<name>".
type Ref struct {
	Kind string `json:"kind"`
	Name string `json:"name"`
}

func (r Ref) String() string { return r.Kind + " " + r.Name }

// Aggregate is the event-store aggregate that holds r's events.
func (r Ref) Aggregate() events.Aggregate {
	return events.Aggregate{Type: aggregateTypes[r.Kind], ID: r.Name}
}

var aggregateTypes = map[string]string{
	KindServer:   events.AggServer,
	KindBackend:  events.AggBackend,
	KindRoute:    events.AggRoute,
	KindResource: events.AggResource,
	KindSite:     events.AggSite,
}

// RouteName is the name of the route from backend to server.
func RouteName(backend, server string) string { return backend + "@" + server }

// ResourceName is the name of the resource of type typ called name.
func ResourceName(typ, name string) string { return typ + "/" + name }

// versioned is a value and the stream sequence of the event that wrote it.
type versioned[T any] struct {
	value   T
	version uint64
}

// token is an API token as the write side knows it.
type token struct {
	role    string
	hash    string
	version uint64
}

// State is the write model: the current value and version of every model
// object and token, folded from the event log. It is what commands decide
// against. Evolve is its only mutator and does no I/O.
type State struct {
	seq       uint64
	servers   map[string]versioned[events.Server]
	backends  map[string]versioned[events.Backend]
	routes    map[string]versioned[events.Route]
	resources map[string]versioned[events.Resource]
	sites     map[string]versioned[events.Site]
	// runs are the runs not over yet, by id; active names each site's.
	runs   map[uuid.UUID]*RunProgress
	active map[string]uuid.UUID
	tokens map[string]token
	byHash map[string]string // token hash → token name
	// last is the sequence of each aggregate's last event, deletions
	// included: what the event store guards the aggregate with.
	last map[events.Aggregate]uint64
}

// NewState returns the state of an empty log.
func NewState() *State {
	return &State{
		servers:   make(map[string]versioned[events.Server]),
		backends:  make(map[string]versioned[events.Backend]),
		routes:    make(map[string]versioned[events.Route]),
		resources: make(map[string]versioned[events.Resource]),
		sites:     make(map[string]versioned[events.Site]),
		runs:      make(map[uuid.UUID]*RunProgress),
		active:    make(map[string]uuid.UUID),
		tokens:    make(map[string]token),
		byHash:    make(map[string]string),
		last:      make(map[events.Aggregate]uint64),
	}
}

// Seq is the stream sequence of the last event folded into s.
func (s *State) Seq() uint64 { return s.seq }

// Evolve folds one stored event into s. Events at or below Seq are skipped,
// so the same event may be offered twice (by the appender and by the log
// follower).
func (s *State) Evolve(e events.Envelope, p events.Payload) {
	if e.Sequence <= s.seq {
		return
	}
	v := e.Sequence
	switch p := p.(type) {
	case *events.ServerSaved:
		s.servers[p.Server.Name] = versioned[events.Server]{p.Server, v}
	case *events.ServerDeleted:
		delete(s.servers, p.Name)
	case *events.BackendSaved:
		s.backends[p.Backend.Name] = versioned[events.Backend]{p.Backend, v}
	case *events.BackendDeleted:
		delete(s.backends, p.Name)
	case *events.RouteSaved:
		s.routes[RouteName(p.Route.Backend, p.Route.Server)] = versioned[events.Route]{p.Route, v}
	case *events.RouteDeleted:
		delete(s.routes, RouteName(p.Backend, p.Server))
	case *events.ResourceSaved:
		s.resources[ResourceName(p.Resource.Type, p.Resource.Name)] = versioned[events.Resource]{p.Resource, v}
	case *events.ResourceDeleted:
		delete(s.resources, ResourceName(p.Type, p.Name))
	case *events.SiteSaved:
		s.sites[p.Site.Name] = versioned[events.Site]{p.Site, v}
	case *events.SiteDeleted:
		delete(s.sites, p.Name)
	case *events.RunRequested:
		s.runs[p.Run] = &RunProgress{Req: *p, Started: e.Time, Actor: e.Actor, Phase: -1}
		s.active[p.Site] = p.Run
	case *events.RunPhaseStarted, *events.RunPhaseFinished, *events.RunCancelRequested:
		if r := s.runs[runOf(p)]; r != nil {
			r.evolve(p)
		}
	case *events.RunFinished:
		delete(s.runs, p.Run)
		if s.active[p.Site] == p.Run {
			delete(s.active, p.Site)
		}
	case *events.TokenCreated:
		s.tokens[p.Name] = token{role: p.Role, hash: p.Hash, version: v}
		s.byHash[p.Hash] = p.Name
	case *events.TokenRevoked:
		if t, ok := s.tokens[p.Name]; ok {
			delete(s.byHash, t.hash)
			delete(s.tokens, p.Name)
		}
	default:
		// Event types of other parts of the system do not change the model.
	}
	s.last[e.Aggregate] = v
	s.seq = v
}

// position is the sequence of agg's last event, 0 when it has none. A unit
// that writes to agg expects it there: an object that was deleted has no
// version, but its aggregate keeps its events.
func (s *State) position(agg events.Aggregate) uint64 { return s.last[agg] }

// version returns the version of the object ref names, 0 if it does not exist.
func (s *State) version(ref Ref) uint64 {
	switch ref.Kind {
	case KindServer:
		return s.servers[ref.Name].version
	case KindBackend:
		return s.backends[ref.Name].version
	case KindRoute:
		return s.routes[ref.Name].version
	case KindResource:
		return s.resources[ref.Name].version
	case KindSite:
		return s.sites[ref.Name].version
	}
	return 0 // kinds are checked when a document is decoded
}
