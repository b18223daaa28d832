package events

import "encoding/json"

// The model's events (DESIGN.md §2). Every change is a <Kind>Saved carrying
// the full new state and the names of the fields that changed, or a
// <Kind>Deleted.

// Server is a machine that scripts and services run on.
type Server struct {
	Name    string            `json:"name"`
	Address string            `json:"address"`
	Port    int               `json:"port"`
	User    string            `json:"user,omitempty"`
	Method  string            `json:"method"` // ssh | local | agent
	Labels  map[string]string `json:"labels,omitempty"`
	HostKey string            `json:"host_key,omitempty"`
	// TrustOnFirstUse lets the ssh method accept an unknown host key on
	// the first connection and pin it (as a ServerSaved) from then on.
	TrustOnFirstUse bool `json:"trust_on_first_use,omitempty"`
	Active          bool `json:"active"`
}

// ServerSaved: a server was created or changed.
type ServerSaved struct {
	Server  Server   `json:"server"`
	Changed []string `json:"changed"`
}

func (ServerSaved) EventType() Type { return Type{"ServerSaved", 1} }

// ServerDeleted: a server was removed from the model.
type ServerDeleted struct {
	Name string `json:"name"`
}

func (ServerDeleted) EventType() Type { return Type{"ServerDeleted", 1} }

// Related names a resource type whose changes also trigger a backend, and the
// attribute of it that names the main resource.
type Related struct {
	Type  string `json:"type"`
	Field string `json:"field"`
}

// Backend is the declarative logic for one resource type.
type Backend struct {
	Name         string            `json:"name"`
	Type         string            `json:"type"`
	Executable   string            `json:"executable"`
	Timeout      string            `json:"timeout,omitempty"` // Go duration
	IgnoreFields []string          `json:"ignore_fields,omitempty"`
	Related      []Related         `json:"related,omitempty"`
	DefaultMatch string            `json:"default_match,omitempty"`
	Prepare      string            `json:"prepare,omitempty"`
	Commit       string            `json:"commit,omitempty"`
	Actions      map[string]string `json:"actions"`
}

// BackendSaved: a backend was created or changed.
type BackendSaved struct {
	Backend Backend  `json:"backend"`
	Changed []string `json:"changed"`
}

func (BackendSaved) EventType() Type { return Type{"BackendSaved", 1} }

// BackendDeleted: a backend was removed.
type BackendDeleted struct {
	Name string `json:"name"`
}

func (BackendDeleted) EventType() Type { return Type{"BackendDeleted", 1} }

// Route sends a backend's operations to a server when Match holds.
type Route struct {
	Backend string `json:"backend"`
	Server  string `json:"server"`
	Match   string `json:"match,omitempty"`
	Async   bool   `json:"async"`
	Active  bool   `json:"active"`
}

// RouteSaved: a route was created or changed.
type RouteSaved struct {
	Route   Route    `json:"route"`
	Changed []string `json:"changed"`
}

func (RouteSaved) EventType() Type { return Type{"RouteSaved", 1} }

// RouteDeleted: a route was removed.
type RouteDeleted struct {
	Backend string `json:"backend"`
	Server  string `json:"server"`
}

func (RouteDeleted) EventType() Type { return Type{"RouteDeleted", 1} }

// Resource is one object of the model. Secrets hold sealed (encrypted)
// values, never plain text.
type Resource struct {
	Type    string            `json:"type"`
	Name    string            `json:"name"`
	Attrs   json.RawMessage   `json:"attrs"`
	Labels  map[string]string `json:"labels,omitempty"`
	Secrets map[string]string `json:"secrets,omitempty"`
}

// ResourceSaved: a resource was created or changed.
type ResourceSaved struct {
	Resource Resource `json:"resource"`
	Changed  []string `json:"changed"`
}

func (ResourceSaved) EventType() Type { return Type{"ResourceSaved", 1} }

// ResourceDeleted: a resource was removed.
type ResourceDeleted struct {
	Type string `json:"type"`
	Name string `json:"name"`
}

func (ResourceDeleted) EventType() Type { return Type{"ResourceDeleted", 1} }

// TokenCreated: an API token was issued. Only the SHA-256 of the token is
// kept; the token itself is shown once to whoever created it.
type TokenCreated struct {
	Name string `json:"name"`
	Role string `json:"role"` // admin | operator | viewer
	Hash string `json:"hash"` // hex SHA-256 of the token
}

func (TokenCreated) EventType() Type { return Type{"TokenCreated", 1} }

// TokenRevoked: an API token stopped being accepted.
type TokenRevoked struct {
	Name string `json:"name"`
}

func (TokenRevoked) EventType() Type { return Type{"TokenRevoked", 1} }
