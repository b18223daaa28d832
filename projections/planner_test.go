package projections_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/infra/routeexpr"
	"github.com/orchestra-fleet/orchestra/infra/secrets"
	"github.com/orchestra-fleet/orchestra/projections"
	"github.com/orchestra-fleet/orchestra/services"
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

// opsString shows operations as "backend:action:type/name@attrs", with
// ">server" when the operation is for one server only.
func opsString(ops []projections.Operation) string {
	var out []string
	for _, op := range ops {
		s := op.Backend + ":" + op.Action + ":" + op.Resource.Type + "/" + op.Resource.Name + "@" + string(op.Resource.Attrs)
		if op.Server != "" {
			s += ">" + op.Server
		}
		out = append(out, s)
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

// sealer is the sealer renderer uses: every call returns one with the same
// key, so what one seals the other opens.
func sealer(t testing.TB) *secrets.Sealer {
	t.Helper()
	s, err := secrets.New(make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func renderer(t testing.TB) projections.Renderer {
	t.Helper()
	return projections.Renderer{Compiler: routeexpr.Compiler{}, Sealer: sealer(t)}
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
	if len(plan.Servers) != 0 || len(plan.Dropped) != 1 || plan.Dropped[0].Route != "" || !strings.Contains(plan.Dropped[0].Reason, "no active route") {
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
		if script.State != events.StateReceived {
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

func actionReq(typ, name, act string) *events.ResourceActionRequested {
	return &events.ResourceActionRequested{Type: typ, Name: name, Action: act}
}

func syncReq(srv, backend string) *events.ServerSyncRequested {
	return &events.ServerSyncRequested{Server: srv, Backend: backend}
}

// retryReq asks again for operations written "backend:action:type/name".
func retryReq(refs ...string) *events.ScriptRetryRequested {
	p := &events.ScriptRetryRequested{}
	for _, r := range refs {
		f := strings.FieldsFunc(r, func(c rune) bool { return c == ':' || c == '/' })
		p.Operations = append(p.Operations, events.OperationRef{Backend: f[0], Action: f[1], Type: f[2], Name: f[3]})
	}
	return p
}

// TestCollectRequests covers the requests a unit may hold: custom actions,
// syncs and retries. before is folded first, as earlier units.
func TestCollectRequests(t *testing.T) {
	base := []events.Payload{
		server("web1"), server("web2"), server("web3"),
		backend("vhost", "website", func(b *events.Backend) { b.Actions["renew"] = "echo renew {{ .name }}" }),
		backend("logs", "website"),
		backend("certs", "domain", func(b *events.Backend) { b.Actions["renew"] = "echo renew {{ .name }}" }),
		backend("jobs", "website", func(b *events.Backend) { b.Actions = map[string]string{"purge": "echo purge"} }),
		route("vhost", "web1", "", true), route("vhost", "web2", "", true),
		route("logs", "web1", "", false), route("logs", "web2", "", true),
		route("certs", "web1", "", true), route("jobs", "web1", "", true),
		route("vhost", "web3", "", false),
		saved("website", "shop", `{"v":1}`),
		saved("website", "blog", `{"v":1}`),
		saved("domain", "shop.example.com", `{"website":"shop"}`),
	}
	for _, tc := range []struct {
		name   string
		before []events.Payload
		unit   []events.Payload
		want   string
	}{
		// Custom actions.
		{"a custom action reaches only the backends of the type that define it", nil,
			[]events.Payload{actionReq("website", "shop", "renew")},
			`vhost:renew:website/shop@{"v":1}`},
		{"a custom action on another type reaches that type's backends", nil,
			[]events.Payload{actionReq("domain", "shop.example.com", "renew")},
			`certs:renew:domain/shop.example.com@{"website":"shop"}`},
		{"a custom action on an unknown resource is nothing", nil,
			[]events.Payload{actionReq("website", "nowhere", "renew")},
			""},
		{"a custom action no backend defines is nothing", nil,
			[]events.Payload{actionReq("website", "shop", "reboot")},
			""},
		{"a custom action uses the state saved before it in the unit", nil,
			[]events.Payload{saved("website", "shop", `{"v":2}`, "attrs.v"), actionReq("website", "shop", "renew")},
			`jobs:save:website/shop@{"v":2} logs:save:website/shop@{"v":2} vhost:save:website/shop@{"v":2} vhost:renew:website/shop@{"v":2}`},
		{"a custom action on a resource deleted before it in the unit is nothing", nil,
			[]events.Payload{deleted("website", "shop"), actionReq("website", "shop", "renew")},
			`jobs:delete:website/shop@{"v":1} logs:delete:website/shop@{"v":1} vhost:delete:website/shop@{"v":1}`},
		{"a repeated custom action is one, at the last place", nil,
			[]events.Payload{actionReq("website", "shop", "renew"), saved("website", "blog", `{"v":2}`, "attrs.v"), actionReq("website", "shop", "renew")},
			`jobs:save:website/blog@{"v":2} logs:save:website/blog@{"v":2} vhost:save:website/blog@{"v":2} vhost:renew:website/shop@{"v":1}`},

		// Syncs.
		{"a sync saves, for that server, every resource of each backend with an active route to it", nil,
			[]events.Payload{syncReq("web1", "")},
			`certs:save:domain/shop.example.com@{"website":"shop"}>web1 vhost:save:website/blog@{"v":1}>web1 vhost:save:website/shop@{"v":1}>web1`},
		{"a sync of another server follows that server's routes", nil,
			[]events.Payload{syncReq("web2", "")},
			`logs:save:website/blog@{"v":1}>web2 logs:save:website/shop@{"v":1}>web2 vhost:save:website/blog@{"v":1}>web2 vhost:save:website/shop@{"v":1}>web2`},
		{"a sync with a backend saves that backend's resources only", nil,
			[]events.Payload{syncReq("web2", "logs")},
			`logs:save:website/blog@{"v":1}>web2 logs:save:website/shop@{"v":1}>web2`},
		{"a sync through an inactive route is nothing", nil,
			[]events.Payload{syncReq("web1", "logs")},
			""},
		{"a sync of a server whose routes are all inactive is nothing", nil,
			[]events.Payload{syncReq("web3", "")},
			""},
		{"a sync with a backend that has no route to the server is nothing", nil,
			[]events.Payload{syncReq("web2", "certs")},
			""},
		{"a sync of an unknown server is nothing", nil,
			[]events.Payload{syncReq("nowhere", "")},
			""},
		{"a sync uses the current state",
			[]events.Payload{saved("domain", "shop.example.com", `{"website":"blog"}`, "attrs.website")},
			[]events.Payload{syncReq("web1", "certs")},
			`certs:save:domain/shop.example.com@{"website":"blog"}>web1`},

		// Retries.
		{"a retry plans each operation again with the current state",
			[]events.Payload{saved("website", "shop", `{"v":2}`, "attrs.v")},
			[]events.Payload{retryReq("vhost:save:website/shop", "vhost:renew:website/shop")},
			`vhost:save:website/shop@{"v":2} vhost:renew:website/shop@{"v":2}`},
		{"a retry keeps the logged order", nil,
			[]events.Payload{retryReq("vhost:renew:website/shop", "logs:save:website/blog", "vhost:save:website/shop")},
			`vhost:renew:website/shop@{"v":1} logs:save:website/blog@{"v":1} vhost:save:website/shop@{"v":1}`},
		{"a retry leaves out deletes", nil,
			[]events.Payload{retryReq("vhost:delete:website/shop", "logs:save:website/blog")},
			`logs:save:website/blog@{"v":1}`},
		{"a retry leaves out deleted resources",
			[]events.Payload{deleted("website", "blog")},
			[]events.Payload{retryReq("vhost:save:website/blog", "vhost:save:website/shop")},
			`vhost:save:website/shop@{"v":1}`},
		{"a retry leaves out deleted backends",
			[]events.Payload{&events.BackendDeleted{Name: "logs"}},
			[]events.Payload{retryReq("logs:save:website/shop", "vhost:save:website/shop")},
			`vhost:save:website/shop@{"v":1}`},
		{"a retry leaves out actions the backend no longer defines",
			[]events.Payload{backend("vhost", "website")},
			[]events.Payload{retryReq("vhost:renew:website/shop", "vhost:save:website/shop")},
			`vhost:save:website/shop@{"v":1}`},
		{"a retry of a resource deleted earlier in the unit is nothing", nil,
			[]events.Payload{deleted("website", "blog"), retryReq("vhost:save:website/blog")},
			`jobs:delete:website/blog@{"v":1} logs:delete:website/blog@{"v":1} vhost:delete:website/blog@{"v":1}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := projections.NewPlanModel()
			m.Collect(base)
			m.Collect(tc.before)
			if got := opsString(m.Collect(tc.unit)); got != tc.want {
				t.Fatalf("operations\n got %s\nwant %s", got, tc.want)
			}
		})
	}
}

// planString shows a plan as "server/backend=STATE[ops]" per script, ops
// as "action:name".
func planString(plan projections.UnitPlan) string {
	var out []string
	for _, sp := range plan.Servers {
		for _, s := range sp.Scripts {
			var ops []string
			for _, op := range s.Operations {
				ops = append(ops, op.Action+":"+op.Resource.Name)
			}
			out = append(out, sp.Name+"/"+s.Backend+"="+s.State+"["+strings.Join(ops, ",")+"]")
		}
	}
	return strings.Join(out, " ")
}

func TestPlanSyncGoesOnlyToItsServer(t *testing.T) {
	m := projections.NewPlanModel()
	m.Collect([]events.Payload{
		server("web1"), server("web2"), backend("vhost", "website"),
		route("vhost", "web1", "", true), route("vhost", "web2", `resource.name == "shop"`, true),
		saved("website", "shop", `{}`), saved("website", "blog", `{}`),
	})
	r := renderer(t)
	// A plain save of shop goes through both routes ...
	if got, want := planString(r.Plan(m, m.Collect([]events.Payload{saved("website", "shop", `{"v":1}`, "attrs.v")}))),
		"web1/vhost=RECEIVED[save:shop] web2/vhost=RECEIVED[save:shop]"; got != want {
		t.Fatalf("plan of a save\n got %s\nwant %s", got, want)
	}
	// ... a sync of web1 only to web1, though web2's route matches shop.
	ops := m.Collect([]events.Payload{syncReq("web1", "")})
	plan := r.Plan(m, ops)
	if got, want := planString(plan), "web1/vhost=RECEIVED[save:blog,save:shop]"; got != want || len(plan.Dropped) != 0 {
		t.Fatalf("plan of sync web1\n got %s, dropped %+v\nwant %s", got, plan.Dropped, want)
	}
	for _, op := range plan.Servers[0].Scripts[0].Operations {
		if op.Server != "web1" {
			t.Errorf("operation %+v of a sync of web1 has Server %q", op, op.Server)
		}
	}
	// A sync of web2 still goes through web2's match: blog is dropped.
	plan = r.Plan(m, m.Collect([]events.Payload{syncReq("web2", "")}))
	if got, want := planString(plan), "web2/vhost=RECEIVED[save:shop]"; got != want ||
		len(plan.Dropped) != 1 || plan.Dropped[0].Operation.Resource.Name != "blog" || plan.Dropped[0].Route != "" {
		t.Fatalf("plan of sync web2\n got %s, dropped %+v\nwant %s and blog dropped", got, plan.Dropped, want)
	}
}

func TestPlanDropsRoutesToMissingServers(t *testing.T) {
	m := projections.NewPlanModel()
	m.Collect([]events.Payload{
		server("web1"), server("gone"), backend("vhost", "website"),
		route("vhost", "web1", "", true),
		route("vhost", "ghost", "", true), // a server never saved
		route("vhost", "gone", "", true),
		&events.ServerDeleted{Name: "gone"},
	})
	plan := renderer(t).Plan(m, m.Collect([]events.Payload{saved("website", "shop", `{}`)}))
	if got, want := planString(plan), "web1/vhost=RECEIVED[save:shop]"; got != want {
		t.Fatalf("plan\n got %s\nwant %s", got, want)
	}
	var got []string
	for _, d := range plan.Dropped {
		if d.Operation.Resource.Name != "shop" || d.Operation.Action != "save" {
			t.Errorf("dropped %+v", d)
		}
		srv := strings.TrimPrefix(d.Route, "vhost@")
		if !strings.Contains(d.Reason, srv) || !strings.Contains(d.Reason, "does not exist") {
			t.Errorf("route %s dropped for %q, want a reason naming the missing server", d.Route, d.Reason)
		}
		got = append(got, d.Route)
	}
	if strings.Join(got, " ") != "vhost@ghost vhost@gone" {
		t.Fatalf("dropped routes %v, want vhost@ghost vhost@gone", got)
	}
}

func TestPlanMaxScript(t *testing.T) {
	m := projections.NewPlanModel()
	m.Collect([]events.Payload{
		server("web1"), server("web2"),
		backend("big", "website", func(b *events.Backend) { b.Actions = map[string]string{"save": "echo {{ .attrs.blob }}"} }),
		backend("small", "website", func(b *events.Backend) { b.Actions = map[string]string{"save": "echo small"} }),
		route("big", "web1", "", true), route("small", "web1", "", true), route("small", "web2", "", true),
	})
	ops := m.Collect([]events.Payload{saved("website", "shop", `{"blob":"`+strings.Repeat("x", 4000)+`"}`)})
	r := renderer(t)
	full := r.Plan(m, ops).Servers[0].Scripts[0]
	if full.Backend != "big" || full.State != events.StateReceived || len(full.Text) < 4000 {
		t.Fatalf("without a bound: %+v", full)
	}
	for _, tc := range []struct {
		name  string
		max   int
		want  string
		error bool
	}{
		{"a script of exactly the bound is planned", len(full.Text),
			"web1/big=RECEIVED[save:shop] web1/small=RECEIVED[save:shop] web2/small=RECEIVED[save:shop]", false},
		{"a script one byte over the bound is an ERROR, the others are planned", len(full.Text) - 1,
			"web1/big=ERROR[save:shop] web1/small=RECEIVED[save:shop] web2/small=RECEIVED[save:shop]", true},
		{"a bound smaller than the prepare", 8,
			"web1/big=ERROR[save:shop] web1/small=ERROR[save:shop] web2/small=ERROR[save:shop]", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := r
			r.MaxScript = tc.max
			plan := r.Plan(m, ops)
			if got := planString(plan); got != tc.want {
				t.Fatalf("plan\n got %s\nwant %s", got, tc.want)
			}
			big := plan.Servers[0].Scripts[0]
			if !tc.error {
				if big.Text != full.Text {
					t.Fatalf("text differs from the unbounded render:\n%s", big.Text)
				}
				return
			}
			if big.Text != "" || big.Shown != "" || !strings.Contains(big.Reason, "outgrows "+strconv.Itoa(tc.max)+" bytes") || !strings.Contains(big.Reason, "big") {
				t.Fatalf("an oversized script: text %d bytes, reason %q", len(big.Text), big.Reason)
			}
		})
	}
}

func TestPlanAsync(t *testing.T) {
	async := route("vhost", "web1", "", true)
	async.Route.Async = true
	m := projections.NewPlanModel()
	m.Collect([]events.Payload{
		server("web1"), server("web2"), backend("vhost", "website"), backend("logs", "website"),
		async, route("vhost", "web2", "", true), route("logs", "web1", "", true),
	})
	plan := renderer(t).Plan(m, m.Collect([]events.Payload{saved("website", "shop", `{}`)}))
	var got []string
	for _, sp := range plan.Servers {
		for _, s := range sp.Scripts {
			got = append(got, sp.Name+"/"+s.Backend+"="+strconv.FormatBool(s.Async))
		}
	}
	if want := "web1/logs=false web1/vhost=true web2/vhost=false"; strings.Join(got, " ") != want {
		t.Fatalf("async %v, want %s", got, want)
	}
}

func TestPlanShowsSecretsMasked(t *testing.T) {
	const secret = "s3cr'et"
	seal := func(context string) string {
		s, err := sealer(t).Seal(secret, context)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	m := projections.NewPlanModel()
	m.Collect([]events.Payload{
		server("web1"),
		backend("vhost", "website", func(b *events.Backend) { b.Actions = map[string]string{"save": "echo {{ .name }} {{ .secrets.pw }}"} }),
		backend("mbox", "mailbox"),
		route("vhost", "web1", "", true), route("mbox", "web1", "", true),
	})
	unit := func(context string) []events.Payload {
		return []events.Payload{
			&events.ResourceSaved{Resource: events.Resource{Type: "website", Name: "shop", Attrs: json.RawMessage(`{}`),
				Secrets: map[string]string{"pw": seal(context)}}},
			saved("website", "blog", `{}`),
			saved("mailbox", "a", `{}`),
		}
	}
	quoted, masked := services.ShellQuote(secret), services.ShellQuote(services.Masked)
	for _, show := range []bool{true, false} {
		t.Run("show="+strconv.FormatBool(show), func(t *testing.T) {
			r := renderer(t)
			r.Show = show
			plan := r.Plan(m, m.Collect(unit("website/shop#pw")))
			if got, want := planString(plan), "web1/mbox=RECEIVED[save:a] web1/vhost=RECEIVED[save:shop,save:blog]"; got != want {
				t.Fatalf("plan\n got %s\nwant %s", got, want)
			}
			mbox, vhost := plan.Servers[0].Scripts[0], plan.Servers[0].Scripts[1]
			for _, want := range []string{"echo 'shop' " + quoted + "\n", "ORC_SECRET_pw=" + quoted + "\n", "echo 'blog' ''\n"} {
				if !strings.Contains(vhost.Text, want) {
					t.Errorf("text lacks %q:\n%s", want, vhost.Text)
				}
			}
			if mbox.Shown != "" {
				t.Errorf("a script without secrets is shown: %q", mbox.Shown)
			}
			if !show {
				if vhost.Shown != "" {
					t.Errorf("shown without Show: %q", vhost.Shown)
				}
				return
			}
			if want := strings.ReplaceAll(vhost.Text, quoted, masked); vhost.Shown != want || strings.Contains(vhost.Shown, "s3cr") {
				t.Errorf("shown\n%s\nwant\n%s", vhost.Shown, want)
			}
		})
	}
	t.Run("a secret that does not open is an ERROR of its script only", func(t *testing.T) {
		r := renderer(t)
		r.Show = true
		plan := r.Plan(m, m.Collect(unit("website/other#pw"))) // sealed for another resource
		if got, want := planString(plan), "web1/mbox=RECEIVED[save:a] web1/vhost=ERROR[save:shop,save:blog]"; got != want {
			t.Fatalf("plan\n got %s\nwant %s", got, want)
		}
		if e := plan.Servers[0].Scripts[1]; e.Text != "" || e.Shown != "" || !strings.Contains(e.Reason, "secret pw of website/shop") {
			t.Fatalf("script %+v", e)
		}
	})
	t.Run("showing does not change whether a script fits the bound", func(t *testing.T) {
		short, err := sealer(t).Seal("x", "website/shop#pw")
		if err != nil {
			t.Fatal(err)
		}
		ops := m.Collect([]events.Payload{&events.ResourceSaved{Resource: events.Resource{Type: "website", Name: "shop",
			Attrs: json.RawMessage(`{"v":2}`), Secrets: map[string]string{"pw": short}}, Changed: []string{"attrs.v"}}})
		r := renderer(t)
		fits := r.Plan(m, ops).Servers[0].Scripts[0]
		r.MaxScript, r.Show = len(fits.Text), true
		s := r.Plan(m, ops).Servers[0].Scripts[0]
		if s.State != events.StateReceived || s.Text != fits.Text || !strings.Contains(s.Shown, "is not shown") {
			t.Fatalf("a script of exactly the bound, shown: state %s, reason %q, shown %q", s.State, s.Reason, s.Shown)
		}
	})
}

// One script per backend per server, backends and servers by name; each is
// the prepare once, every operation's block in operation order, the commit
// once.
func TestPlanScriptFrame(t *testing.T) {
	m := projections.NewPlanModel()
	m.Collect([]events.Payload{
		server("web2"), server("web1"),
		backend("zeta", "website", func(b *events.Backend) {
			b.Prepare, b.Commit = "echo prepare", "echo commit"
			b.Actions["renew"] = "echo renew {{ .name }}"
		}),
		backend("alpha", "website"),
		route("zeta", "web1", "", true), route("alpha", "web1", "", true), route("alpha", "web2", "", true),
		saved("website", "old", `{}`),
	})
	ops := m.Collect([]events.Payload{
		saved("website", "b", `{}`), saved("website", "a", `{}`), deleted("website", "old"), actionReq("website", "a", "renew"),
	})
	plan := renderer(t).Plan(m, ops)
	if got, want := planString(plan), "web1/alpha=RECEIVED[save:b,save:a,delete:old] web1/zeta=RECEIVED[save:b,save:a,delete:old,renew:a] "+
		"web2/alpha=RECEIVED[save:b,save:a,delete:old]"; got != want {
		t.Fatalf("plan\n got %s\nwant %s", got, want)
	}
	block := func(act, name string) string {
		return "\n# " + act + " 'website/" + name + "'\nORC_NAME='" + name + "' ORC_TYPE='website' ORC_ACTION='" + act + "'\necho " + act + " '" + name + "'\n"
	}
	alpha := projections.DefaultPrepare + block("save", "b") + block("save", "a") + block("delete", "old") + projections.DefaultCommit
	zeta := "echo prepare\n" + block("save", "b") + block("save", "a") + block("delete", "old") + block("renew", "a") + "echo commit\n"
	for i, want := range []string{alpha, zeta, alpha} {
		s := plan.Servers[i/2].Scripts[i%2]
		if s.Text != want {
			t.Errorf("%s/%s script\n%s\nwant\n%s", plan.Servers[i/2].Name, s.Backend, s.Text, want)
		}
		if s.Executable != "/bin/bash" || s.Timeout != "1m0s" {
			t.Errorf("%s: executable %q timeout %q", s.Backend, s.Executable, s.Timeout)
		}
	}
}
