package projections

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/services"
)

// Tables of the model read model.
const (
	TableServers   = "servers"
	TableBackends  = "backends"
	TableRoutes    = "routes"
	TableResources = "resources"
	TableTokens    = "tokens"
)

// Model is the read model of servers, backends, routes, resources and
// tokens. Each row's document is what the API shows: an apply document (kind
// and fields, secrets masked) with its version, so a document read back can
// be edited and applied again.
type Model struct {
	reg *events.Registry
}

// NewModel returns the model projection.
func NewModel(reg *events.Registry) *Model { return &Model{reg: reg} }

// Name implements Projection.
func (*Model) Name() string { return "model" }

// ServerView is a server as the API shows it.
type ServerView struct {
	Kind string `json:"kind"`
	events.Server
	Version uint64 `json:"version"`
}

// BackendView is a backend as the API shows it.
type BackendView struct {
	Kind string `json:"kind"`
	events.Backend
	Version uint64 `json:"version"`
}

// RouteView is a route as the API shows it.
type RouteView struct {
	Kind string `json:"kind"`
	events.Route
	Version uint64 `json:"version"`
}

// ResourceView is a resource as the API shows it: secrets masked.
type ResourceView struct {
	Kind string `json:"kind"`
	services.ResourceView
	Version uint64 `json:"version"`
}

// TokenView is a token as the API shows it: never the token or its hash.
type TokenView struct {
	Name      string    `json:"name"`
	Role      string    `json:"role"`
	CreatedBy string    `json:"created_by"`
	Created   time.Time `json:"created"`
	Version   uint64    `json:"version"`
}

// Apply implements Projection.
func (m *Model) Apply(e events.Envelope) ([]Row, error) {
	p, err := m.reg.Payload(e)
	if err != nil {
		return nil, err
	}
	if rows, ok, err := applySite(e, p); ok {
		return rows, err
	}
	v := e.Sequence
	switch p := p.(type) {
	case *events.ServerSaved:
		return put(TableServers, p.Server.Name, "", v, ServerView{services.KindServer, p.Server, v})
	case *events.ServerDeleted:
		return del(TableServers, p.Name), nil
	case *events.BackendSaved:
		return put(TableBackends, p.Backend.Name, "", v, BackendView{services.KindBackend, p.Backend, v})
	case *events.BackendDeleted:
		return del(TableBackends, p.Name), nil
	case *events.RouteSaved:
		name := services.RouteName(p.Route.Backend, p.Route.Server)
		return put(TableRoutes, name, "", v, RouteView{services.KindRoute, p.Route, v})
	case *events.RouteDeleted:
		return del(TableRoutes, services.RouteName(p.Backend, p.Server)), nil
	case *events.ResourceSaved:
		name := services.ResourceName(p.Resource.Type, p.Resource.Name)
		return put(TableResources, name, p.Resource.Type, v, ResourceView{services.KindResource, services.ViewResource(p.Resource), v})
	case *events.ResourceDeleted:
		return del(TableResources, services.ResourceName(p.Type, p.Name)), nil
	case *events.TokenCreated:
		return put(TableTokens, p.Name, "", v, TokenView{Name: p.Name, Role: p.Role, CreatedBy: e.Actor, Created: e.Time, Version: v})
	case *events.TokenRevoked:
		return del(TableTokens, p.Name), nil
	}
	return nil, nil
}

func put(table, key, group string, version uint64, doc any) ([]Row, error) {
	b, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", table, key, err)
	}
	return []Row{{Table: table, Key: key, Group: group, Version: version, Doc: b}}, nil
}

func del(table, key string) []Row {
	return []Row{{Table: table, Key: key, Deleted: true}}
}
