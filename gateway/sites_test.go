package gateway_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/services"
)

// The site tests run on a model of their own, not the fixture set: two
// local servers, s1 and s2 (labelled role=cache), and the site shop:
//
//	db    rank 0  on s1                     1 instance
//	web   rank 1  on s1 and s2, scale 2     4 instances
//	cache rank 2  selector role=cache (s2)  1 instance
//
// The gateway env has no site runner: a run stays RUNNING with its phases
// PENDING, which is what the gateway shows of a run just requested.

// siteServers creates s1 and s2.
func (e *env) siteServers(t *testing.T) {
	t.Helper()
	e.call(t, "POST", "/v1/apply", e.admin, obj{"objects": []obj{
		{"kind": "Server", "name": "s1", "method": "local", "address": "127.0.0.1"},
		{"kind": "Server", "name": "s2", "method": "local", "address": "127.0.0.1", "labels": obj{"role": "cache"}},
	}}, nil).want(t, http.StatusOK)
}

// shopSite is the site shop's document, as an operator writes it: defaults
// left out, the webhook secret in plain.
func shopSite() obj {
	return obj{
		"name": "shop",
		"notify": []obj{
			{"webhook": "https://hooks.example.com/shop", "secret": "hunter2"},
			{"email": "ops@example.com"},
		},
		"services": []obj{
			{"name": "db", "rank": 0, "servers": []string{"s1"}, "start": "echo start db", "stop": "echo stop db", "status": "echo db up"},
			{"name": "web", "rank": 1, "servers": []string{"s1", "s2"}, "scale": 2, "start": "echo start web", "stop": "echo stop web",
				"commands": obj{"flush": "echo flush"}},
			{"name": "cache", "rank": 2, "selector": obj{"role": "cache"}, "start": "echo start cache", "stop": "echo stop cache"},
		},
	}
}

// newSiteEnv is an env with s1, s2 and the site shop.
func newSiteEnv(t *testing.T) *env {
	t.Helper()
	e := newEnv(t)
	e.siteServers(t)
	e.call(t, "PUT", "/v1/sites/shop", e.admin, shopSite(), nil).want(t, http.StatusCreated)
	return e
}

// wantProblem checks r is a problem of status naming field, whose detail
// mentions every one of words.
func wantProblem(t *testing.T, r response, status int, field string, words ...string) {
	t.Helper()
	r.want(t, status)
	if got, _ := r.Body["field"].(string); got != field {
		t.Errorf("field = %q, want %q: %s", got, field, r.Raw)
	}
	detail, _ := r.Body["detail"].(string)
	if detail == "" {
		t.Errorf("the problem has no detail: %s", r.Raw)
	}
	for _, w := range words {
		if !strings.Contains(detail, w) {
			t.Errorf("detail %q does not mention %q", detail, w)
		}
	}
}

// wroteNothing fails the test if the log moved past before.
func (e *env) wroteNothing(t *testing.T, before uint64) {
	t.Helper()
	if after := e.lastSeq(t); after != before {
		t.Errorf("the call wrote %d events, want none", after-before)
	}
}

// decodeInto converts a decoded JSON value into v.
func decodeInto(t *testing.T, from any, v any) {
	t.Helper()
	data, err := json.Marshal(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", data, err)
	}
}

// TestSiteWriteReadList writes the site shop, reads it back with its
// defaults filled in and its webhook secret masked, writes the read
// document back unchanged, and lists, creates and deletes sites.
func TestSiteWriteReadList(t *testing.T) {
	e := newEnv(t)
	e.siteServers(t)

	before := e.lastSeq(t)
	r := e.call(t, "PUT", "/v1/sites/shop", e.admin, shopSite(), nil)
	created := r.want(t, http.StatusCreated)
	seq := e.lastSeq(t)
	if seq != before+1 {
		t.Fatalf("the PUT that creates wrote %d events, want 1", seq-before)
	}
	if created["kind"] != services.KindSite || created["name"] != "shop" || created["result"] != services.Created || created["version"] != float64(seq) {
		t.Errorf("PUT = %v, want site shop created at version %d", created, seq)
	}
	if loc := r.Header.Get("Location"); loc != "/v1/sites/shop" {
		t.Errorf("Location = %q, want /v1/sites/shop", loc)
	}
	if et := r.Header.Get("ETag"); et != strconv.Quote(fmt.Sprint(seq)) {
		t.Errorf("ETag = %q, want version %d", et, seq)
	}

	r = e.call(t, "GET", "/v1/sites/shop", e.viewer, nil, nil)
	got := r.want(t, http.StatusOK)
	if strings.Contains(string(r.Raw), "hunter2") {
		t.Errorf("GET shows the webhook secret: %s", r.Raw)
	}
	var site struct {
		Kind    string `json:"kind"`
		Version uint64 `json:"version"`
		events.Site
	}
	decodeInto(t, got, &site)
	if site.Kind != services.KindSite || site.Name != "shop" || site.Version != seq || r.Header.Get("ETag") != strconv.Quote(fmt.Sprint(seq)) {
		t.Errorf("GET = kind %q name %q version %d ETag %q, want Site shop at %d", site.Kind, site.Name, site.Version, r.Header.Get("ETag"), seq)
	}
	wantNotify := []events.Notify{{Webhook: "https://hooks.example.com/shop", Secret: services.Masked}, {Email: "ops@example.com"}}
	if !slices.Equal(site.Notify, wantNotify) {
		t.Errorf("notify = %+v, want %+v", site.Notify, wantNotify)
	}
	if site.Update != (events.Update{Strategy: services.StrategyStopAll}) {
		t.Errorf("update = %+v, want the default stop-all", site.Update)
	}
	var names []string
	var scales []int
	for _, s := range site.Services {
		names, scales = append(names, s.Name), append(scales, s.Scale)
	}
	if !slices.Equal(names, []string{"db", "web", "cache"}) || !slices.Equal(scales, []int{1, 2, 1}) {
		t.Errorf("services %v with scales %v, want db, web, cache with 1, 2, 1 (the default filled in)", names, scales)
	}

	// The document read, written back as it is ("****" and all): nothing
	// changes and nothing is written.
	before = e.lastSeq(t)
	same := e.call(t, "PUT", "/v1/sites/shop", e.admin, got, nil).want(t, http.StatusOK)
	e.wroteNothing(t, before)
	if same["result"] != services.Unchanged || same["version"] != float64(seq) {
		t.Errorf("PUT of the read document = %v, want unchanged at %d", same, seq)
	}
	// "****" kept the secret: writing its plain value is no change either,
	// and another value is.
	plain := shopSite()
	same = e.call(t, "PUT", "/v1/sites/shop", e.admin, plain, nil).want(t, http.StatusOK)
	e.wroteNothing(t, before)
	if same["result"] != services.Unchanged {
		t.Errorf("PUT with the secret's stored value = %v, want unchanged", same)
	}
	plain["notify"].([]obj)[0]["secret"] = "hunter3"
	changed := e.call(t, "PUT", "/v1/sites/shop", e.admin, plain, nil).want(t, http.StatusOK)
	if ch, _ := changed["changed"].([]any); changed["result"] != services.Configured || !slices.Contains(ch, any("notify")) {
		t.Errorf("PUT with a new secret = %v, want configured with notify changed", changed)
	}
	if e.lastSeq(t) != before+1 {
		t.Errorf("the PUT with a new secret wrote %d events, want 1", e.lastSeq(t)-before)
	}
	// "****" keeps the value of the same webhook only.
	before = e.lastSeq(t)
	moved := shopSite()
	moved["notify"] = []obj{{"webhook": "https://hooks.example.com/elsewhere", "secret": services.Masked}}
	wantProblem(t, e.call(t, "PUT", "/v1/sites/shop", e.admin, moved, nil), http.StatusUnprocessableEntity, "notify[0].secret", "elsewhere")
	e.wroteNothing(t, before)

	// Create with POST: 201 once, 409 after.
	blog := obj{"name": "blog", "services": []obj{{"name": "app", "servers": []string{"s2"}, "run": "echo run"}}}
	r = e.call(t, "POST", "/v1/sites", e.admin, blog, nil)
	if res := r.want(t, http.StatusCreated); res["kind"] != services.KindSite || res["result"] != services.Created {
		t.Errorf("POST = %v", res)
	}
	if loc := r.Header.Get("Location"); loc != "/v1/sites/blog" {
		t.Errorf("Location = %q, want /v1/sites/blog", loc)
	}
	before = e.lastSeq(t)
	e.call(t, "POST", "/v1/sites", e.admin, blog, nil).want(t, http.StatusConflict)
	e.wroteNothing(t, before)

	// List: both, in name order, secrets masked.
	r = e.call(t, "GET", "/v1/sites", e.viewer, nil, nil)
	listed := pageItems(t, r.want(t, http.StatusOK))
	if got := stringsOf(listed, "name"); !slices.Equal(got, []string{"blog", "shop"}) {
		t.Errorf("GET /v1/sites lists %v, want blog and shop", got)
	}
	if strings.Contains(string(r.Raw), "hunter") {
		t.Errorf("the listing shows a webhook secret: %s", r.Raw)
	}

	// Delete: gone from GET and the list.
	del := e.call(t, "DELETE", "/v1/sites/blog", e.admin, nil, nil).want(t, http.StatusOK)
	if del["result"] != services.Deleted {
		t.Errorf("DELETE = %v", del)
	}
	e.call(t, "GET", "/v1/sites/blog", e.viewer, nil, nil).want(t, http.StatusNotFound)
	if got := stringsOf(e.listAll(t, "/v1/sites", e.viewer), "name"); !slices.Equal(got, []string{"shop"}) {
		t.Errorf("after the delete GET /v1/sites lists %v, want shop", got)
	}

	// A site in an apply, like any kind.
	res := e.call(t, "POST", "/v1/apply", e.admin, obj{"objects": []obj{
		{"kind": "Site", "name": "applied", "services": []obj{{"name": "app", "servers": []string{"s1"}, "start": "echo start"}}},
	}}, nil).want(t, http.StatusOK)
	var applied []struct{ Kind, Name, Result string }
	decodeInto(t, res["objects"], &applied)
	if len(applied) != 1 || applied[0].Kind != services.KindSite || applied[0].Name != "applied" || applied[0].Result != services.Created {
		t.Errorf("apply of a site = %v", res)
	}
	e.call(t, "GET", "/v1/sites/applied", e.viewer, nil, nil).want(t, http.StatusOK)
}

// TestSiteBadInput: every invalid site is a 422 naming the field at fault,
// whether the site is new or exists, and writes nothing. Where the OpenAPI
// schema can say so, it refuses the document too.
func TestSiteBadInput(t *testing.T) {
	e := newSiteEnv(t)
	stored := e.call(t, "GET", "/v1/sites/shop", e.viewer, nil, nil).want(t, http.StatusOK)
	valid := func() obj {
		return obj{"services": []obj{
			{"name": "web", "servers": []string{"s1"}, "start": "echo start"},
			{"name": "db", "servers": []string{"s2"}, "start": "echo start"},
		}}
	}
	svc := func(s obj, i int) obj { return s["services"].([]obj)[i] }
	cases := []struct {
		name   string
		edit   func(s obj)
		field  string
		words  []string
		schema bool // the OpenAPI schema refuses it too
	}{
		{"unknown server", func(s obj) { svc(s, 0)["servers"] = []string{"nowhere"} }, "services[0].servers[0]", []string{`"nowhere"`}, false},
		{"duplicate service", func(s obj) { svc(s, 1)["name"] = "web" }, "services[1].name", []string{`"web"`}, false},
		{"negative scale", func(s obj) { svc(s, 0)["scale"] = -1 }, "services[0].scale", []string{"-1"}, true},
		{"servers and selector", func(s obj) { svc(s, 0)["selector"] = obj{"role": "web"} }, "services[0].servers", []string{"selector"}, true},
		{"no start and no run", func(s obj) { delete(svc(s, 0), "start") }, "services[0].start", nil, true},
		{"bad env name", func(s obj) { svc(s, 0)["env"] = obj{"1PORT": "80"} }, "services[0].env.1PORT", []string{`"1PORT"`}, false},
		{"custom command named start", func(s obj) { svc(s, 0)["commands"] = obj{"start": "echo again"} }, "services[0].commands.start", []string{"built-in"}, false},
		{"bogus update strategy", func(s obj) { s["update"] = obj{"strategy": "bogus"} }, "update.strategy", []string{`"bogus"`}, true},
		{"batch with stop-all", func(s obj) { s["update"] = obj{"strategy": "stop-all", "batch": 2} }, "update.strategy", []string{"rolling"}, true},
		{"webhook and email", func(s obj) {
			s["notify"] = []obj{{"webhook": "https://hooks.example.com/x", "email": "ops@example.com"}}
		}, "notify[0]", []string{"webhook", "email"}, true},
		{"webhook not http", func(s obj) { s["notify"] = []obj{{"webhook": "ftp://hooks.example.com/x"}} }, "notify[0].webhook", []string{"ftp://hooks.example.com/x"}, true},
	}
	// The schema wants the name, which a PUT may leave to the URL.
	validate := func(doc obj) []string {
		var v map[string]any
		decodeInto(t, doc, &v)
		v["name"] = "new"
		return e.doc.validate(map[string]any{"$ref": "#/components/schemas/Site"}, v, "site")
	}
	if errs := validate(valid()); len(errs) > 0 {
		t.Fatalf("the OpenAPI Site schema refuses a valid site: %v", errs)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			doc := valid()
			c.edit(doc)
			if c.schema {
				if errs := validate(doc); len(errs) == 0 {
					t.Errorf("the OpenAPI Site schema accepts it")
				}
			}
			for _, target := range []string{"new", "shop"} {
				before := e.lastSeq(t)
				wantProblem(t, e.call(t, "PUT", "/v1/sites/"+target, e.admin, doc, nil), http.StatusUnprocessableEntity, c.field, c.words...)
				e.wroteNothing(t, before)
			}
			e.call(t, "GET", "/v1/sites/new", e.viewer, nil, nil).want(t, http.StatusNotFound)
			if got := e.call(t, "GET", "/v1/sites/shop", e.viewer, nil, nil).want(t, http.StatusOK); got["version"] != stored["version"] {
				t.Errorf("shop is at version %v after a refused PUT, was %v", got["version"], stored["version"])
			}
			before := e.lastSeq(t)
			doc["name"] = "new"
			wantProblem(t, e.call(t, "POST", "/v1/sites", e.admin, doc, nil), http.StatusUnprocessableEntity, c.field, c.words...)
			e.wroteNothing(t, before)
		})
	}
}

// TestServerUsedBySite: a server a site names cannot be deleted alone.
func TestServerUsedBySite(t *testing.T) {
	e := newSiteEnv(t)
	before := e.lastSeq(t)
	wantProblem(t, e.call(t, "DELETE", "/v1/servers/s1", e.admin, nil, nil), http.StatusConflict, "", "site", "shop")
	e.wroteNothing(t, before)
	e.call(t, "GET", "/v1/servers/s1", e.viewer, nil, nil).want(t, http.StatusOK)

	// Deleted with the site in one apply, it goes.
	e.call(t, "POST", "/v1/apply", e.admin, obj{"objects": []obj{
		{"kind": "Site", "name": "shop", "delete": true},
		{"kind": "Server", "name": "s1", "delete": true},
	}}, nil).want(t, http.StatusOK)
	e.call(t, "GET", "/v1/servers/s1", e.viewer, nil, nil).want(t, http.StatusNotFound)
}

// phaseOf is a phase of a RunResult as the tests look at it.
type phaseOf struct {
	Rank    int              `json:"rank"`
	Command string           `json:"command"`
	Steps   []events.RunStep `json:"steps"`
}

// runResult decodes a RunResult.
func runResult(t *testing.T, body map[string]any) (run string, phases []phaseOf) {
	t.Helper()
	var res struct {
		Run    string    `json:"run"`
		Phases []phaseOf `json:"phases"`
	}
	decodeInto(t, body, &res)
	return res.Run, res.Phases
}

// ranksOf lists the phases' ranks and commands: "0 start".
func ranksOf(phases []phaseOf) []string {
	var out []string
	for _, ph := range phases {
		out = append(out, fmt.Sprintf("%d %s", ph.Rank, ph.Command))
	}
	return out
}

// stepsOf lists a phase's steps as service/server/index.
func stepsOf(ph phaseOf) []string {
	var out []string
	for _, st := range ph.Steps {
		out = append(out, fmt.Sprintf("%s/%s/%d", st.Service, st.Server, st.Index))
	}
	slices.Sort(out)
	return out
}

// TestSiteCommandDryRun: a dry run answers the phases a command would
// run, in rank order, and writes nothing; bad commands are refused.
func TestSiteCommandDryRun(t *testing.T) {
	e := newSiteEnv(t)
	const path = "/v1/sites/shop/commands"
	dry := func(t *testing.T, body obj) []phaseOf {
		t.Helper()
		before := e.lastSeq(t)
		r := e.call(t, "POST", path, e.operator, body, nil)
		res := r.want(t, http.StatusOK)
		e.wroteNothing(t, before)
		if res["dry_run"] != true || res["site"] != "shop" || res["command"] != body["command"] {
			t.Errorf("dry run = %v", res)
		}
		if s := r.Header.Get("Orchestra-Sequence"); s == "" || s != fmt.Sprint(res["sequence"]) {
			t.Errorf("Orchestra-Sequence %q, body sequence %v", s, res["sequence"])
		}
		run, phases := runResult(t, res)
		if run != "" {
			t.Errorf("a dry run has the run id %q", run)
		}
		return phases
	}

	t.Run("start ascends", func(t *testing.T) {
		phases := dry(t, obj{"command": "start", "dry_run": true})
		if got, want := ranksOf(phases), []string{"0 start", "1 start", "2 start"}; !slices.Equal(got, want) {
			t.Fatalf("phases %v, want %v", got, want)
		}
		want := [][]string{{"db/s1/0"}, {"web/s1/0", "web/s1/1", "web/s2/0", "web/s2/1"}, {"cache/s2/0"}}
		for i, ph := range phases {
			if got := stepsOf(ph); !slices.Equal(got, want[i]) {
				t.Errorf("phase %d steps %v, want %v", i, got, want[i])
			}
			for _, st := range ph.Steps {
				if st.Command != "start" || !strings.Contains(st.Text, "echo start "+st.Service) || !strings.Contains(st.Text, "INSTANCE="+strconv.Itoa(st.Index)) {
					t.Errorf("step %s/%s/%d: command %q, script:\n%s", st.Service, st.Server, st.Index, st.Command, st.Text)
				}
				if st.Label != events.StepLabel("shop", st.Service, st.Index, "start") {
					t.Errorf("step label %q", st.Label)
				}
			}
		}
	})
	t.Run("stop descends", func(t *testing.T) {
		phases := dry(t, obj{"command": "stop", "dry_run": true})
		if got, want := ranksOf(phases), []string{"2 stop", "1 stop", "0 stop"}; !slices.Equal(got, want) {
			t.Errorf("phases %v, want %v", got, want)
		}
	})
	t.Run("restart", func(t *testing.T) {
		phases := dry(t, obj{"command": "restart", "dry_run": true})
		if got, want := ranksOf(phases), []string{"2 stop", "1 stop", "0 stop", "0 start", "1 start", "2 start"}; !slices.Equal(got, want) {
			t.Errorf("phases %v, want %v", got, want)
		}
	})
	t.Run("one service", func(t *testing.T) {
		phases := dry(t, obj{"command": "start", "services": []string{"web"}, "dry_run": true})
		if got, want := ranksOf(phases), []string{"1 start"}; !slices.Equal(got, want) {
			t.Fatalf("phases %v, want %v", got, want)
		}
		if got, want := stepsOf(phases[0]), []string{"web/s1/0", "web/s1/1", "web/s2/0", "web/s2/1"}; !slices.Equal(got, want) {
			t.Errorf("steps %v, want %v", got, want)
		}
	})
	t.Run("custom command", func(t *testing.T) {
		phases := dry(t, obj{"command": "run", "custom": "flush", "order": "desc", "dry_run": true})
		if got, want := ranksOf(phases), []string{"1 flush"}; !slices.Equal(got, want) {
			t.Errorf("phases %v, want %v (only web defines flush)", got, want)
		}
	})

	// The OpenAPI RunRequest schema agrees, where it can tell.
	for _, c := range []struct {
		body obj
		ok   bool
	}{
		{obj{"command": "start", "services": []string{"web"}, "keepgoing": true, "dry_run": true}, true},
		{obj{"command": "run", "custom": "flush", "order": "desc"}, true},
		{obj{"command": "bogus"}, false},
		{obj{"dry_run": true}, false},
		{obj{"command": "run"}, false},
		{obj{"command": "start", "custom": "flush"}, false},
		{obj{"command": "start", "order": "desc"}, false},
		{obj{"command": "start", "force": true}, false},
	} {
		var v any
		decodeInto(t, c.body, &v)
		if errs := e.doc.validate(map[string]any{"$ref": "#/components/schemas/RunRequest"}, v, "body"); (len(errs) == 0) != c.ok {
			t.Errorf("the RunRequest schema on %v: %v, want ok %v", c.body, errs, c.ok)
		}
	}

	e.refuse(t, []refusal{
		{name: "unknown service", path: path, body: obj{"command": "start", "services": []string{"mail"}, "dry_run": true},
			status: 422, field: "services[0]", words: []string{`"mail"`}},
		{name: "unknown second service", path: path, body: obj{"command": "start", "services": []string{"web", "mail"}},
			status: 422, field: "services[1]", words: []string{`"mail"`}},
		{name: "unknown site", path: "/v1/sites/nowhere/commands", body: obj{"command": "start", "dry_run": true},
			status: 404, words: []string{"nowhere"}},
		{name: "bogus command", path: path, body: obj{"command": "bogus", "dry_run": true}, status: 422, field: "command", words: []string{`"bogus"`}},
		{name: "no command", path: path, body: obj{"dry_run": true}, status: 422, field: "command"},
		{name: "custom without run", path: path, body: obj{"command": "start", "custom": "flush"}, status: 422, field: "custom"},
		{name: "run without custom", path: path, body: obj{"command": "run", "dry_run": true}, status: 422, field: "custom"},
		{name: "custom no service defines", path: path, body: obj{"command": "run", "custom": "vacuum", "dry_run": true}, status: 422, field: "command",
			words: []string{"vacuum"}},
		{name: "unknown field", path: path, body: obj{"command": "start", "force": true}, status: 422, field: "force"},
		{name: "no body", path: path, status: 422},
		{name: "viewer", path: path, token: e.viewer, body: obj{"command": "start", "dry_run": true}, status: 403, words: []string{"operator"}},
	})
}

// runView is a RunView as the tests look at it.
type runView struct {
	Run       string `json:"run"`
	Site      string `json:"site"`
	Command   string `json:"command"`
	State     string `json:"state"`
	Cancelled bool   `json:"cancelled"`
	Actor     string `json:"actor"`
	Phases    []struct {
		Rank    int    `json:"rank"`
		Command string `json:"command"`
		State   string `json:"state"`
		Steps   []struct {
			Script  uuid.UUID `json:"script"`
			Service string    `json:"service"`
			Server  string    `json:"server"`
			State   string    `json:"state"`
		} `json:"steps"`
	} `json:"phases"`
}

// TestSiteRun requests a real start and follows what the gateway shows of
// it while it runs: the run, its phases pending, the site busy, the
// listing, the instances; then cancels it.
func TestSiteRun(t *testing.T) {
	e := newSiteEnv(t)

	before := e.lastSeq(t)
	r := e.call(t, "POST", "/v1/sites/shop/commands", e.operator, obj{"command": "start"}, nil)
	res := r.want(t, http.StatusAccepted)
	seq := e.lastSeq(t)
	if seq != before+1 {
		t.Fatalf("the start wrote %d events, want 1", seq-before)
	}
	if res["sequence"] != float64(seq) || r.Header.Get("Orchestra-Sequence") != strconv.FormatUint(seq, 10) {
		t.Errorf("sequence %v, Orchestra-Sequence %q; the log is at %d", res["sequence"], r.Header.Get("Orchestra-Sequence"), seq)
	}
	runStr, phases := runResult(t, res)
	run, err := uuid.Parse(runStr)
	if err != nil {
		t.Fatalf("run %q: %v", runStr, err)
	}
	if res["dry_run"] != nil {
		t.Errorf("a real run says dry_run %v", res["dry_run"])
	}
	if got, want := ranksOf(phases), []string{"0 start", "1 start", "2 start"}; !slices.Equal(got, want) {
		t.Errorf("phases %v, want %v", got, want)
	}
	for _, ph := range phases {
		for _, st := range ph.Steps {
			if want := events.ScriptID(run, st.Server, st.Label); st.Script != want {
				t.Errorf("step %s on %s: script %s, want %s", st.Label, st.Server, st.Script, want)
			}
		}
	}

	t.Run("the run is RUNNING, its phases PENDING", func(t *testing.T) {
		var v runView
		decodeInto(t, e.call(t, "GET", "/v1/runs/"+runStr, e.viewer, nil, nil).want(t, http.StatusOK), &v)
		if v.Run != runStr || v.Site != "shop" || v.Command != "start" || v.State != events.RunRunning || v.Cancelled || v.Actor != services.RoleOperator {
			t.Errorf("run = %+v, want shop's start RUNNING, by operator", v)
		}
		if len(v.Phases) != 3 {
			t.Fatalf("%d phases, want 3", len(v.Phases))
		}
		steps := 0
		for i, ph := range v.Phases {
			if ph.State != "PENDING" || ph.Rank != i || ph.Command != "start" {
				t.Errorf("phase %d: rank %d %s %s, want rank %d start PENDING", i, ph.Rank, ph.Command, ph.State, i)
			}
			for _, st := range ph.Steps {
				steps++
				requested := i < len(phases) && slices.ContainsFunc(phases[i].Steps, func(s events.RunStep) bool {
					return s.Script == st.Script && s.Service == st.Service && s.Server == st.Server
				})
				if st.State != "PENDING" || !requested {
					t.Errorf("phase %d: step %+v, want PENDING, one of the phase's steps the request answered", i, st)
				}
			}
		}
		if steps != 6 {
			t.Errorf("%d steps, want 6 (db 1, web 4, cache 1)", steps)
		}
	})

	t.Run("one run at a time", func(t *testing.T) {
		before := e.lastSeq(t)
		wantProblem(t, e.call(t, "POST", "/v1/sites/shop/commands", e.operator, obj{"command": "stop"}, nil), http.StatusConflict, "", runStr)
		wantProblem(t, e.call(t, "POST", "/v1/sites/shop/commands", e.admin, obj{"command": "start", "services": []string{"db"}}, nil), http.StatusConflict, "", runStr)
		wantProblem(t, e.call(t, "DELETE", "/v1/sites/shop", e.admin, nil, nil), http.StatusConflict, "", runStr)
		e.wroteNothing(t, before)
		e.call(t, "GET", "/v1/sites/shop", e.viewer, nil, nil).want(t, http.StatusOK)
		// A dry run changes nothing, so it is answered while the site is busy.
		e.call(t, "POST", "/v1/sites/shop/commands", e.operator, obj{"command": "stop", "dry_run": true}, nil).want(t, http.StatusOK)
		e.wroteNothing(t, before)
	})

	t.Run("listed", func(t *testing.T) {
		list := pageItems(t, e.call(t, "GET", "/v1/runs?site=shop", e.viewer, nil, nil).want(t, http.StatusOK))
		if len(list) != 1 || list[0]["run"] != runStr || list[0]["state"] != events.RunRunning || list[0]["command"] != "start" || list[0]["site"] != "shop" {
			t.Errorf("GET /v1/runs?site=shop = %v, want the start RUNNING", list)
		}
		if all := e.listAll(t, "/v1/runs", e.viewer); len(all) != 1 || all[0]["run"] != runStr {
			t.Errorf("GET /v1/runs = %v, want the run", all)
		}
		if other := pageItems(t, e.call(t, "GET", "/v1/runs?site=blog", e.viewer, nil, nil).want(t, http.StatusOK)); len(other) != 0 {
			t.Errorf("GET /v1/runs?site=blog = %v, want none", other)
		}
		wantProblem(t, e.call(t, "GET", "/v1/runs?state=RUNNING", e.viewer, nil, nil), http.StatusBadRequest, "state")
	})

	t.Run("state", func(t *testing.T) {
		var st struct {
			Site      string `json:"site"`
			Run       string `json:"run"`
			Instances []struct {
				Service string `json:"service"`
				Server  string `json:"server"`
				Index   int    `json:"index"`
				Rank    int    `json:"rank"`
				State   string `json:"state"`
			} `json:"instances"`
		}
		decodeInto(t, e.call(t, "GET", "/v1/sites/shop/state", e.viewer, nil, nil).want(t, http.StatusOK), &st)
		if st.Site != "shop" || st.Run != runStr {
			t.Errorf("state of site %q with run %q, want shop running %s", st.Site, st.Run, runStr)
		}
		var got []string
		for i, in := range st.Instances {
			got = append(got, fmt.Sprintf("%s/%s/%d", in.Service, in.Server, in.Index))
			if in.State != events.InstanceUnknown {
				t.Errorf("instance %s: state %q, want unknown", got[i], in.State)
			}
			if i > 0 && in.Rank < st.Instances[i-1].Rank {
				t.Errorf("instance %s of rank %d comes after one of rank %d", got[i], in.Rank, st.Instances[i-1].Rank)
			}
		}
		want := []string{"db/s1/0", "web/s1/0", "web/s1/1", "web/s2/0", "web/s2/1", "cache/s2/0"}
		if !slices.Equal(got, want) {
			t.Errorf("instances %v, want %v", got, want)
		}
		wantProblem(t, e.call(t, "GET", "/v1/sites/nowhere/state", e.viewer, nil, nil), http.StatusNotFound, "", "nowhere")
	})

	t.Run("cancel", func(t *testing.T) {
		cancelPath := "/v1/runs/" + runStr + "/cancel"
		before := e.lastSeq(t)
		e.refuse(t, []refusal{{name: "viewer", path: cancelPath, token: e.viewer, status: 403, words: []string{"operator"}}})
		r := e.call(t, "POST", cancelPath, e.operator, nil, nil)
		body := r.want(t, http.StatusAccepted)
		seq := e.lastSeq(t)
		if seq != before+1 {
			t.Fatalf("the cancel wrote %d events, want 1", seq-before)
		}
		if body["run"] != runStr || body["sequence"] != float64(seq) || r.Header.Get("Orchestra-Sequence") != strconv.FormatUint(seq, 10) {
			t.Errorf("cancel = %v, Orchestra-Sequence %q; want run %s at %d", body, r.Header.Get("Orchestra-Sequence"), runStr, seq)
		}
		var v runView
		decodeInto(t, e.call(t, "GET", "/v1/runs/"+runStr, e.viewer, nil, nil).want(t, http.StatusOK), &v)
		// Without a runner to revoke its steps, it is still RUNNING.
		if !v.Cancelled || v.State != events.RunRunning {
			t.Errorf("run = %+v, want RUNNING and cancelled", v)
		}
		// Asked again: accepted, nothing more written.
		e.call(t, "POST", cancelPath, e.operator, "{}", nil).want(t, http.StatusAccepted)
		e.wroteNothing(t, seq)
	})

	t.Run("unknown runs", func(t *testing.T) {
		other := uuid.NewString()
		e.refuse(t, []refusal{
			{name: "cancel unknown run", path: "/v1/runs/" + other + "/cancel", status: 404, words: []string{other}},
			{name: "cancel bad id", path: "/v1/runs/not-a-run/cancel", status: 422, field: "id"},
		})
		wantProblem(t, e.call(t, "GET", "/v1/runs/"+other, e.viewer, nil, nil), http.StatusNotFound, "", other)
		wantProblem(t, e.call(t, "GET", "/v1/runs/not-a-run", e.viewer, nil, nil), http.StatusUnprocessableEntity, "id")
	})
}
