package routeexpr_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/orchestra-fleet/orchestra/infra/routeexpr"
	"github.com/orchestra-fleet/orchestra/services"
)

// sample is a match input as the planner builds it: attributes decoded from
// JSON.
var sample = services.MatchInput{
	Resource: services.MatchResource{
		Type: "vhost", Name: "example.com",
		Attrs:  map[string]any{"port": 8080.0, "tls": true, "aliases": []any{"www.example.com"}, "owner": map[string]any{"team": "web"}, "note": "x"},
		Labels: map[string]string{"env": "prod"},
	},
	Server: services.MatchServer{Name: "web1", Address: "10.0.0.1", Port: 22, User: "deploy", Method: "ssh", Labels: map[string]string{"env": "prod", "dc": "fra"}},
	Action: "save",
}

func TestMatch(t *testing.T) {
	c := routeexpr.Compiler{}
	for _, tc := range []struct {
		src  string
		want bool
	}{
		{`true`, true},
		{`false`, false},
		{`resource.type == "vhost"`, true},
		{`resource.name endsWith ".com" && server.name == "web1"`, true},
		{`resource.labels.env == server.labels.env`, true},
		{`resource.labels.missing == ""`, true},
		{`resource.attrs.port > 1024`, true},
		{`resource.attrs.port == 8080`, true},
		{`resource.attrs.tls`, true},
		{`"www.example.com" in resource.attrs.aliases`, true},
		{`resource.attrs.owner.team == "web"`, true},
		{`resource.attrs.missing == nil`, true},
		{`server.port == 22 && server.user == "deploy" && server.method in ["ssh", "agent"]`, true},
		{`server.address startsWith "10."`, true},
		{`server.labels.dc != "fra"`, false},
		{`action == "delete"`, false},
		{"resource.type == \"vhost\"\n  && action == \"save\"", true},
		{`len(resource.attrs.aliases) == 1`, true},
		{`resource.name matches "^ex"`, true},
	} {
		m, err := c.Compile(tc.src)
		if err != nil {
			t.Fatalf("Compile(%q): %v", tc.src, err)
		}
		got, err := m.Match(sample)
		if err != nil || got != tc.want {
			t.Errorf("%s = %v, %v; want %v", tc.src, got, err, tc.want)
		}
	}
}

func TestMatchRunTimeErrors(t *testing.T) {
	c := routeexpr.Compiler{}
	for _, src := range []string{
		`resource.attrs.note > 1`,           // a string compared with a number
		`resource.attrs.tls + 1 > 0`,        // a bool in arithmetic
		`resource.attrs.missing.deeper`,     // nil has no fields, and it is not a bool
		`len(repeat("x", 100000000)) > 0`,   // beyond the memory budget
		`resource.attrs.note`,               // not a bool at run time
		`resource.attrs.aliases[5] == "x"`,  // out of range
		`int(resource.attrs.note) == 1`,     // not a number
		`resource.attrs.owner.team.x == ""`, // a string has no fields
	} {
		m, err := c.Compile(src)
		if err != nil {
			t.Fatalf("Compile(%q): %v", src, err)
		}
		got, err := m.Match(sample)
		if err == nil {
			t.Errorf("%s = %v, want a run-time error", src, got)
		}
	}
	// An empty input is no reason to fail, where nothing compares nil with
	// a number (a missing attribute in an order comparison is an error).
	m, err := c.Compile(`resource.labels.env == "prod" || server.labels.env == "prod" || resource.attrs.port == 1`)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := m.Match(services.MatchInput{}); err != nil || got {
		t.Fatalf("empty input: %v, %v", got, err)
	}
	m, err = c.Compile(`resource.attrs.port > 1`)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Match(services.MatchInput{}); err == nil {
		t.Fatal("a missing attribute compared with a number: no error")
	}
}

func TestCompileErrors(t *testing.T) {
	c := routeexpr.Compiler{}
	for _, tc := range []struct {
		name, src    string
		line, column int // 0: no position
		words        []string
	}{
		{"empty", ``, 0, 0, nil},
		{"syntax", `resource.type ==`, 1, 0, []string{"unexpected token EOF"}},
		{"unknown field", `resource.type == "x" && resource.color == "red"`, 1, 34, []string{"resource has no field color"}},
		{"unknown server field", `server.os == "linux"`, 1, 8, []string{"server has no field os"}},
		{"unknown name", `foo == 1`, 1, 1, []string{"unknown name foo"}},
		{"line 3", "true &&\ntrue &&\n  resource.nope", 3, 12, []string{"nope"}},
		{"string result", `resource.name`, 0, 0, []string{"bool"}},
		{"number result", `1 + 2`, 0, 0, []string{"bool"}},
		{"type mismatch", `server.port == "22"`, 1, 0, []string{"mismatched types"}},
		{"unbalanced", `(true`, 1, 0, nil},
		{"too long", strings.Repeat("true && ", 600) + "true", 0, 0, []string{"4804 bytes", "4096"}},
		{"too many nodes", strings.Repeat("true && ", 500) + "true", 0, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := c.Compile(tc.src)
			if err == nil {
				t.Fatalf("Compile(%q) = %v, want an error", tc.src, m)
			}
			var me *services.MatchError
			if !errors.As(err, &me) {
				t.Fatalf("error %T is not a *services.MatchError: %v", err, err)
			}
			if tc.line != 0 && me.Line != tc.line {
				t.Errorf("line %d, want %d (%v)", me.Line, tc.line, err)
			}
			if tc.column != 0 && me.Column != tc.column {
				t.Errorf("column %d, want %d (%v)", me.Column, tc.column, err)
			}
			if me.Line != 0 && !strings.HasPrefix(err.Error(), "line ") {
				t.Errorf("the message does not start with the position: %v", err)
			}
			for _, w := range tc.words {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "routeexpr.") {
				t.Errorf("the error shows Go types: %v", err)
			}
		})
	}
}

func FuzzRouteMatch(f *testing.F) {
	for _, s := range []string{
		``, `true`, `resource.type == "vhost"`, `resource.attrs.port > 1024 && server.labels.env in ["prod", "staging"]`,
		`action == "save" || resource.labels.tier != "db"`, "resource.name matches \"^a\" &&\n server.port == 22",
		`len(resource.attrs.aliases) > 0 ? true : false`, `all(resource.attrs.aliases, {# endsWith ".com"})`,
		`resource.attrs.owner?.team ?? "none" == "web"`, `let x = server.port; x > 1`, `1..3 | sum() == 6`,
		`resource.nope`, `foo(`, `"\u00e9" == resource.name`, `resource.attrs["port"] == 80`, `server.labels | keys() | len() > 0`,
		`(((((true)))))`, `!false and not false`, `map(1..10, # * 2)[3] == 8`, `resource.attrs.missing.deeper == nil`,
	} {
		f.Add(s)
	}
	c := routeexpr.Compiler{}
	f.Fuzz(func(t *testing.T, src string) {
		m, err := c.Compile(src)
		if err != nil {
			var me *services.MatchError
			if !errors.As(err, &me) {
				t.Fatalf("Compile(%q): %T is not a *services.MatchError: %v", src, err, err)
			}
			if me.Line < 0 || me.Column < 0 || (me.Line == 0) != (me.Column == 0) || me.Reason == "" {
				t.Fatalf("Compile(%q): bad error %#v", src, me)
			}
			return
		}
		if len(src) > routeexpr.MaxSource {
			t.Fatalf("compiled %d bytes", len(src))
		}
		_, _ = m.Match(sample) // errors are fine; panics are not
		_, _ = m.Match(services.MatchInput{})
	})
}

// A match runs in the planner for every operation: what could run for ever
// (ranges, predicates inside predicates) is refused when the route is saved.
func TestCompileRefusesUnboundedLoops(t *testing.T) {
	for _, src := range []string{`all(0..99999, all(0..99999, true))`, `any(resource.attrs.l, all(resource.attrs.l, true))`, `len(0..5) > 1`} {
		if _, err := (routeexpr.Compiler{}).Compile(src); err == nil {
			t.Errorf("%s compiled", src)
		}
	}
	if _, err := (routeexpr.Compiler{}).Compile(`all(resource.attrs.l, # > 0)`); err != nil {
		t.Errorf("one predicate: %v", err)
	}
}
