package services

import (
	"errors"
	"strconv"
	"strings"
	"unicode"

	"github.com/orchestra-fleet/orchestra/events"
)

// RouteSpec is a route as an operator writes it. A route is named
// "<backend>@<server>"; there is at most one per pair.
type RouteSpec struct {
	Backend string `json:"backend"`
	Server  string `json:"server"`
	Match   string `json:"match,omitempty"`
	Async   bool   `json:"async,omitempty"`
	Active  *bool  `json:"active,omitempty"`
}

// normalize validates s, compiling its match with c. Whether the backend and
// server exist is checked against the whole unit of work, later.
func (s *RouteSpec) normalize(c MatchCompiler) (events.Route, error) {
	if err := validateIdent("backend", s.Backend); err != nil {
		return events.Route{}, err
	}
	if err := validateName("server", s.Server); err != nil {
		return events.Route{}, err
	}
	out := events.Route{
		Backend: s.Backend, Server: s.Server, Match: strings.TrimRightFunc(s.Match, unicode.IsSpace),
		Async: s.Async, Active: s.Active == nil || *s.Active,
	}
	if out.Match != "" {
		if _, err := c.Compile(out.Match); err != nil {
			return events.Route{}, matchError("match", err)
		}
	}
	return out, nil
}

// ParseRouteName splits "<backend>@<server>".
func ParseRouteName(name string) (backend, server string, err error) {
	backend, server, ok := strings.Cut(name, "@")
	if !ok {
		return "", "", FieldErrorf(EINVALID, "name", "%q is not a route name: use <backend>@<server>", name)
	}
	if err := validateIdent("backend", backend); err != nil {
		return "", "", err
	}
	if err := validateName("server", server); err != nil {
		return "", "", err
	}
	return backend, server, nil
}

func routeChanges(a, b events.Route) []string {
	var out []string
	if a.Match != b.Match {
		out = append(out, "match")
	}
	if a.Async != b.Async {
		out = append(out, "async")
	}
	if a.Active != b.Active {
		out = append(out, "active")
	}
	return out
}

// MatchCompiler compiles route match expressions. infra/routeexpr implements
// it with expr-lang; the planner evaluates what it returns.
type MatchCompiler interface {
	// Compile parses and type-checks src against the match environment
	// (resource, server, action) and requires a boolean result. A bad
	// expression is a *MatchError.
	Compile(src string) (Matcher, error)
}

// Matcher is a compiled match expression.
type Matcher interface {
	Match(in MatchInput) (bool, error)
}

// MatchInput is what a match expression sees.
type MatchInput struct {
	Resource MatchResource
	Server   MatchServer
	Action   string
}

// MatchResource is the resource as a match expression sees it: resource.type,
// resource.name, resource.attrs, resource.labels.
type MatchResource struct {
	Type   string
	Name   string
	Attrs  map[string]any
	Labels map[string]string
}

// MatchServer is the server as a match expression sees it: server.name,
// server.address, server.port, server.user, server.method, server.labels.
type MatchServer struct {
	Name    string
	Address string
	Port    int
	User    string
	Method  string
	Labels  map[string]string
}

// MatchError says where and why a match expression is wrong.
type MatchError struct {
	Line, Column int // 1-based; 0 when unknown
	Reason       string
}

func (e *MatchError) Error() string {
	if e.Line == 0 {
		return e.Reason
	}
	return "line " + strconv.Itoa(e.Line) + ", column " + strconv.Itoa(e.Column) + ": " + e.Reason
}

// matchError reports a compile error of the expression in field.
func matchError(field string, err error) error {
	var me *MatchError
	if errors.As(err, &me) {
		return FieldErrorf(EINVALID, field, "%s", me)
	}
	return FieldErrorf(EINVALID, field, "%s", err)
}
