package projections_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/infra/routeexpr"
	"github.com/orchestra-fleet/orchestra/infra/secrets"
	"github.com/orchestra-fleet/orchestra/projections"
)

// Payload builders for the planner tests.
func backend(name, typ string, mod ...func(*events.Backend)) *events.BackendSaved {
	b := events.Backend{Name: name, Type: typ, Executable: "/bin/bash", Timeout: "1m0s",
		Actions: map[string]string{"save": "echo save {{ .name }}", "delete": "echo delete {{ .name }}"}}
	for _, f := range mod {
		f(&b)
	}
	return &events.BackendSaved{Backend: b}
}

func server(name string, mod ...func(*events.Server)) *events.ServerSaved {
	s := events.Server{Name: name, Address: "127.0.0.1", Port: 22, Method: "local", Active: true}
	for _, f := range mod {
		f(&s)
	}
	return &events.ServerSaved{Server: s}
}

func route(b, s, match string, active bool) *events.RouteSaved {
	return &events.RouteSaved{Route: events.Route{Backend: b, Server: s, Match: match, Active: active}}
}

func saved(typ, name, attrs string, changed ...string) *events.ResourceSaved {
	return &events.ResourceSaved{Resource: events.Resource{Type: typ, Name: name, Attrs: json.RawMessage(attrs)}, Changed: changed}
}

func deleted(typ, name string) *events.ResourceDeleted {
	return &events.ResourceDeleted{Type: typ, Name: name}
}

// opsString shows operations as "backend:action:type/name@attrs".
func opsString(ops []projections.Operation) string {
	var out []string
	for _, op := range ops {
		out = append(out, op.Backend+":"+op.Action+":"+op.Resource.Type+"/"+op.Resource.Name+"@"+string(op.Resource.Attrs))
	}
	return strings.Join(out, " ")
}

func TestCollect(t *testing.T) {
	base := []events.Payload{
		backend("vhost", "website", func(b *events.Backend) {
			b.IgnoreFields = []string{"attrs.notes", "labels"}
			b.Related = []events.Related{{Type: "domain", Field: "website"}}
		}),
		backend("logs", "website"),
		backend("mbox", "mailbox"),
		saved("website", "shop", `{"v":1}`),
		saved("domain", "shop.example.com", `{"website":"shop"}`),
	}
	for _, tc := range []struct {
		name string
		unit []events.Payload
		want string
	}{
		{"a save reaches every backend of the type, by backend name",
			[]events.Payload{saved("website", "blog", `{}`)},
			"logs:save:website/blog@{} vhost:save:website/blog@{}"},
		{"a delete is a delete with the last state",
			[]events.Payload{deleted("website", "shop")},
			`logs:delete:website/shop@{"v":1} vhost:delete:website/shop@{"v":1}`},
		{"save then delete is only the delete",
			[]events.Payload{saved("website", "shop", `{"v":2}`, "attrs.v"), deleted("website", "shop")},
			`logs:delete:website/shop@{"v":2} vhost:delete:website/shop@{"v":2}`},
		{"repeated saves are one, latest state, at the last place",
			[]events.Payload{saved("website", "shop", `{"v":2}`, "attrs.v"), saved("mailbox", "a", `{}`), saved("website", "shop", `{"v":3}`, "attrs.v")},
			`mbox:save:mailbox/a@{} logs:save:website/shop@{"v":3} vhost:save:website/shop@{"v":3}`},
		{"ignored fields trigger nothing for that backend only",
			[]events.Payload{saved("website", "shop", `{"v":1,"notes":"x"}`, "attrs.notes", "labels.team")},
			`logs:save:website/shop@{"v":1,"notes":"x"}`},
		{"a created resource is saved whatever changed",
			[]events.Payload{saved("website", "new", `{"notes":"x"}`, "attrs.notes")},
			`logs:save:website/new@{"notes":"x"} vhost:save:website/new@{"notes":"x"}`},
		{"a related change saves the main resource",
			[]events.Payload{saved("domain", "shop.example.com", `{"website":"shop","tls":true}`, "attrs.tls")},
			`vhost:save:website/shop@{"v":1}`},
		{"a deleted related resource saves the main resource",
			[]events.Payload{deleted("domain", "shop.example.com")},
			`vhost:save:website/shop@{"v":1}`},
		{"a related change does not save a main resource being deleted",
			[]events.Payload{deleted("website", "shop"), deleted("domain", "shop.example.com")},
			`logs:delete:website/shop@{"v":1} vhost:delete:website/shop@{"v":1}`},
		{"config changes alone plan nothing",
			[]events.Payload{backend("other", "website"), server("web9")},
			""},
		{"a backend created in the unit serves the resources after it",
			[]events.Payload{backend("dns", "domain"), saved("domain", "x.example.com", `{}`)},
			"dns:save:domain/x.example.com@{}"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := projections.NewPlanModel()
			m.Collect(base)
			if got := opsString(m.Collect(tc.unit)); got != tc.want {
				t.Fatalf("operations\n got %s\nwant %s", got, tc.want)
			}
		})
	}
}

func renderer(t *testing.T) projections.Renderer {
	t.Helper()
	sealer, err := secrets.New(make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	return projections.Renderer{Compiler: routeexpr.Compiler{}, Sealer: sealer}
}

func TestPlanRoutesAndRenders(t *testing.T) {
	m := projections.NewPlanModel()
	m.Collect([]events.Payload{
		server("web1", func(s *events.Server) { s.Labels = map[string]string{"tier": "gold"} }),
		server("web2"),
		server("off", func(s *events.Server) { s.Active = false }),
		backend("vhost", "website", func(b *events.Backend) {
			b.Prepare = "echo prepare"
			b.Commit = "echo commit"
			b.DefaultMatch = `server.labels.tier == "gold"`
		}),
		backend("aaa", "website", func(b *events.Backend) { b.Actions = map[string]string{"renew": "echo renew"} }),
		backend("broken", "website", func(b *events.Backend) { b.Actions = map[string]string{"save": "echo {{ .attrs.x.y }}"} }),
		route("vhost", "web1", "", true),                            // default match: gold only
		route("vhost", "web2", `resource.attrs.n > 1`, true),        // a run-time error for a string n
		route("vhost", "off", "", true),                             // an inactive server
		route("aaa", "web1", "", true),                              // has no save: NOTHING
		route("broken", "web2", `resource.name != "nowhere"`, true), // fails to render
		route("broken", "web1", "", false),                          // inactive route
	})
	ops := m.Collect([]events.Payload{saved("website", "shop", `{"n":"x","x":"s"}`), saved("website", "blog", `{"n":"y","x":"s"}`)})
	plan := renderer(t).Plan(m, ops)

	var got []string
	for _, sp := range plan.Servers {
		for _, s := range sp.Scripts {
			got = append(got, sp.Server.Name+"/"+s.Backend+"="+s.State)
		}
	}
	if want := "web1/aaa=NOTHING web1/vhost=RECEIVED web2/broken=ERROR"; strings.Join(got, " ") != want {
		t.Fatalf("scripts %v, want %s", got, want)
	}
	vhost := plan.Servers[0].Scripts[1]
	for _, want := range []string{"echo prepare\n", "# save 'website/shop'\n", "echo save 'shop'\n", "# save 'website/blog'\n", "echo save 'blog'\n", "echo commit\n"} {
		if !strings.Contains(vhost.Text, want) {
			t.Errorf("vhost script lacks %q:\n%s", want, vhost.Text)
		}
	}
	if strings.Count(vhost.Text, "echo prepare") != 1 || strings.Count(vhost.Text, "echo commit") != 1 ||
		strings.Index(vhost.Text, "'shop'") > strings.Index(vhost.Text, "'blog'") {
		t.Errorf("prepare and commit once, operations in order:\n%s", vhost.Text)
	}
	if e := plan.Servers[1].Scripts[0]; !strings.Contains(e.Reason, "broken") || e.Text != "" {
		t.Errorf("render error = %+v", e)
	}
	// web2's vhost route fails at run time for both operations: recorded,
	// not fatal; off is never used.
	var reasons []string
	for _, d := range plan.Dropped {
		reasons = append(reasons, d.Route+": "+d.Reason)
	}
	if len(plan.Dropped) != 2 || !strings.Contains(reasons[0], "vhost@web2: match failed at run time") {
		t.Fatalf("dropped = %v", reasons)
	}
	for _, sp := range plan.Servers {
		if sp.Server.Name == "off" {
			t.Fatal("an inactive server got a plan")
		}
	}
}

func TestPlanDropsUnroutedOperations(t *testing.T) {
	m := projections.NewPlanModel()
	m.Collect([]events.Payload{server("web1"), backend("vhost", "website"), route("vhost", "web1", `resource.name == "other"`, true)})
	plan := renderer(t).Plan(m, m.Collect([]events.Payload{saved("website", "shop", `{}`)}))
	if len(plan.Servers) != 0 || len(plan.Dropped) != 1 || !strings.Contains(plan.Dropped[0].Reason, "no active route") {
		t.Fatalf("plan = %+v", plan)
	}
}

func TestPlanDefaultsAndVariables(t *testing.T) {
	m := projections.NewPlanModel()
	m.Collect([]events.Payload{server("web1"), backend("vhost", "website"), route("vhost", "web1", "", true)})
	plan := renderer(t).Plan(m, m.Collect([]events.Payload{saved("website", "shop", `{"port":8080,"domain":"a.example.com"}`)}))
	text := plan.Servers[0].Scripts[0].Text
	for _, want := range []string{projections.DefaultPrepare, "ORC_NAME='shop' ORC_TYPE='website' ORC_ACTION='save'\n",
		"ORC_ATTR_domain='a.example.com'\n", "ORC_ATTR_port='8080'\n", projections.DefaultCommit} {
		if !strings.Contains(text, want) {
			t.Errorf("script lacks %q:\n%s", want, text)
		}
	}
}

// Hostile values reach the script as data: bash runs the rendered scripts,
// the marker file never appears, and each value arrives byte-exact where
// the backend wrote it, through the template and through the variables.
func TestPlanInjection(t *testing.T) {
	dir := t.TempDir()
	mark := filepath.Join(dir, "MARK")
	values := []string{
		"'; touch " + mark + " #",
		"$(touch " + mark + ")",
		"`touch " + mark + "`",
		"line1\nline2\ntouch " + mark,
		"\\'\"$IFS${HOME}",
		strings.Repeat("x$(touch "+mark+")", 64<<10/20),
		"\u00ff\u0080 not ascii",
	}
	for i, v := range values {
		attrs, _ := json.Marshal(map[string]string{"v": v})
		m := projections.NewPlanModel()
		out := filepath.Join(dir, "out")
		m.Collect([]events.Payload{server("web1"), backend("vhost", "website", func(b *events.Backend) {
			b.Actions = map[string]string{"save": "printf %s {{ .attrs.v }} > " + out + "\nprintf %s \"$ORC_ATTR_v\" > " + out + ".var"}
		}), route("vhost", "web1", "", true)})
		plan := renderer(t).Plan(m, m.Collect([]events.Payload{saved("website", "r", string(attrs))}))
		script := plan.Servers[0].Scripts[0]
		if script.State != projections.StateReceived {
			t.Fatalf("value %d: %+v", i, script)
		}
		bash := exec.Command("/bin/bash") // the script on stdin, as executors run it
		bash.Stdin = strings.NewReader(script.Text)
		if b, err := bash.CombinedOutput(); err != nil {
			t.Fatalf("value %d: bash: %v %s", i, err, b)
		}
		if _, err := os.Stat(mark); err == nil {
			t.Fatalf("value %d ran a command", i)
		}
		for _, f := range []string{out, out + ".var"} {
			if got, err := os.ReadFile(f); err != nil || string(got) != v {
				t.Errorf("value %d: %s holds %q, want %q", i, filepath.Base(f), got, v)
			}
		}
	}
}
