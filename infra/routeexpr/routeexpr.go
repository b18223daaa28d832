// Package routeexpr compiles route match expressions with expr-lang
// (github.com/expr-lang/expr): parsed and type-checked against the match
// environment when a route is saved, evaluated by the planner.
package routeexpr

import (
	"errors"
	"fmt"
	"strings"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/file"
	"github.com/expr-lang/expr/vm"

	"github.com/orchestra-fleet/orchestra/services"
)

// Limits on one expression.
const (
	MaxSource = 4096 // bytes
	maxNodes  = 1000
)

// env is what an expression sees; the expr tags are its names.
type env struct {
	Resource resource `expr:"resource"`
	Server   server   `expr:"server"`
	Action   string   `expr:"action"`
}

type resource struct {
	Type   string            `expr:"type"`
	Name   string            `expr:"name"`
	Attrs  map[string]any    `expr:"attrs"`
	Labels map[string]string `expr:"labels"`
}

type server struct {
	Name    string            `expr:"name"`
	Address string            `expr:"address"`
	Port    int               `expr:"port"`
	User    string            `expr:"user"`
	Method  string            `expr:"method"`
	Labels  map[string]string `expr:"labels"`
}

// Compiler implements services.MatchCompiler.
type Compiler struct{}

var _ services.MatchCompiler = Compiler{}

// Compile parses and type-checks src; the result must be a boolean.
func (Compiler) Compile(src string) (services.Matcher, error) {
	if len(src) > MaxSource {
		return nil, &services.MatchError{Reason: fmt.Sprintf("is %d bytes long; the limit is %d", len(src), MaxSource)}
	}
	prog, err := expr.Compile(src, expr.Env(env{}), expr.AsBool(), expr.MaxNodes(maxNodes))
	if err != nil {
		var fe *file.Error
		if errors.As(err, &fe) {
			return nil, &services.MatchError{Line: fe.Line, Column: fe.Column + 1, Reason: goNames.Replace(fe.Message)}
		}
		return nil, &services.MatchError{Reason: err.Error()}
	}
	if reason := unbounded(prog.Node()); reason != "" {
		return nil, &services.MatchError{Reason: reason}
	}
	return matcher{prog}, nil
}

// unbounded refuses what could make one evaluation run for ever: a range
// (0..N), and a predicate (all, any, filter, map, …) inside another one. A
// match then takes time at most in proportion to the resource's size.
func unbounded(root ast.Node) string {
	var c loopCheck
	ast.Walk(&root, &c)
	return c.reason
}

type loopCheck struct{ reason string }

func (c *loopCheck) Visit(node *ast.Node) {
	switch n := (*node).(type) {
	case *ast.BinaryNode:
		if n.Operator == ".." && c.reason == "" {
			c.reason = "ranges (a..b) are not allowed in a match"
		}
	case *ast.PredicateNode:
		var inner closureCount
		ast.Walk(&n.Node, &inner)
		if inner > 0 && c.reason == "" {
			c.reason = "a predicate (all, any, filter, map, …) inside another one is not allowed in a match"
		}
	}
}

// closureCount counts the closures of a subtree.
type closureCount int

func (c *closureCount) Visit(node *ast.Node) {
	if _, ok := (*node).(*ast.PredicateNode); ok {
		*c++
	}
}

// goNames hides the Go types behind the environment from messages.
var goNames = strings.NewReplacer("type routeexpr.resource", "resource", "type routeexpr.server", "server",
	"routeexpr.resource", "resource", "routeexpr.server", "server", "routeexpr.env", "the match environment")

type matcher struct{ prog *vm.Program }

// Match evaluates the expression; an expression that fails at run time (an
// attribute of the wrong type, say) is an error, never a panic.
func (m matcher) Match(in services.MatchInput) (bool, error) {
	out, err := expr.Run(m.prog, env{
		Resource: resource{Type: in.Resource.Type, Name: in.Resource.Name, Attrs: in.Resource.Attrs, Labels: in.Resource.Labels},
		Server: server{Name: in.Server.Name, Address: in.Server.Address, Port: in.Server.Port,
			User: in.Server.User, Method: in.Server.Method, Labels: in.Server.Labels},
		Action: in.Action,
	})
	if err != nil {
		return false, err
	}
	b, ok := out.(bool)
	if !ok {
		return false, fmt.Errorf("the expression gave %T, not a boolean", out)
	}
	return b, nil
}
