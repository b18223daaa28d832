package gateway_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/orchestra-fleet/orchestra/events"
)

// The tests of the results read models publish results onto RESULTS by
// hand, as the planner and the executors would, each test with its own
// ids and server names, and read them back at once: every read catches up
// with RESULTS first, so none of them sleeps or polls.

// publishResults publishes rs, in order, on the subjects the planner and
// the executors use: a script's results on server's subject of the script,
// a unit's record on the unit's subject. It returns each one's RESULTS
// sequence.
func (e *env) publishResults(t testing.TB, server string, rs ...events.Result) []uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	seqs := make([]uint64, 0, len(rs))
	for _, r := range rs {
		var (
			subject string
			err     error
		)
		switch r := r.(type) {
		case *events.UnitPlanned:
			subject = events.UnitSubject(r.Unit, r.ResultType())
		case *events.ScriptPlanned:
			subject, err = events.ScriptSubject(server, r.ID, r.ResultType())
		case *events.ScriptStarted:
			subject, err = events.ScriptSubject(server, r.ID, r.ResultType())
		case *events.ScriptOutput:
			subject, err = events.ScriptSubject(server, r.ID, r.ResultType())
		case *events.ScriptFinished:
			subject, err = events.ScriptSubject(server, r.ID, r.ResultType())
		default:
			t.Fatalf("no subject for a %T", r)
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		ack, err := e.JS.Publish(ctx, subject, data)
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, ack.Sequence)
	}
	return seqs
}

// getOK is a GET as the viewer that must answer 200; it returns the body.
func (e *env) getOK(t testing.TB, path string) map[string]any {
	t.Helper()
	return e.call(t, "GET", path, e.viewer, nil, nil).want(t, http.StatusOK)
}

// settleResults makes the results read models fold everything published so far
// in a transaction of its own: any read waits for that.
func (e *env) settleResults(t testing.TB) {
	t.Helper()
	e.getOK(t, "/v1/scripts?limit=1")
}

// uniqueSuffix is a short lower-case suffix that makes a test's names its own.
func uniqueSuffix() string { return strings.ReplaceAll(uuid.NewString(), "-", "")[:10] }

// pageItems is a page's items.
func pageItems(t testing.TB, page map[string]any) []map[string]any {
	t.Helper()
	raw, ok := page["items"].([]any)
	if !ok {
		t.Fatalf("items is %T, want an array: %v", page["items"], page)
	}
	out := make([]map[string]any, len(raw))
	for i, it := range raw {
		out[i] = it.(map[string]any)
	}
	return out
}

// stringsOf is the string field k of every item.
func stringsOf(items []map[string]any, k string) []string {
	out := make([]string, len(items))
	for i, it := range items {
		out[i], _ = it[k].(string)
	}
	return out
}

// walkPages reads every page of path (which holds a query) with limit per
// page, checking that each page but the last is full and has a next, and
// that the last has none. It returns every page's items.
func (e *env) walkPages(t testing.TB, path string, limit int) [][]map[string]any {
	t.Helper()
	var pages [][]map[string]any
	after := ""
	for {
		p := fmt.Sprintf("%s&limit=%d", path, limit)
		if after != "" {
			p += "&after=" + url.QueryEscape(after)
		}
		page := e.getOK(t, p)
		items := pageItems(t, page)
		pages = append(pages, items)
		next, hasNext := page["next"].(string)
		if !hasNext {
			if _, present := page["next"]; present {
				t.Fatalf("%s: next is %v, want absent or a string", p, page["next"])
			}
			return pages
		}
		if next == "" || len(items) != limit {
			t.Fatalf("%s: a page with a next %q has %d items, want %d", p, next, len(items), limit)
		}
		if len(pages) > 1000 {
			t.Fatalf("%s: more than 1000 pages", path)
		}
		after = next
	}
}

// opRefs is a list of operations of backend: action type/name triples.
func opRefs(backend string, refs ...string) []events.OperationRef {
	var out []events.OperationRef
	for _, r := range refs {
		action, res, _ := strings.Cut(r, " ")
		typ, name, _ := strings.Cut(res, "/")
		out = append(out, events.OperationRef{Backend: backend, Action: action, Type: typ, Name: name})
	}
	return out
}

// listScript is one script of the listing tests.
type listScript struct {
	name            string
	unit            uuid.UUID
	server, backend string
	ops             []events.OperationRef
	ago             time.Duration // created this long before the test began
	state           string        // what became of it
	id              uuid.UUID
}

// TestListScripts: GET /v1/scripts lists the script logs newest first by
// their first result; every filter narrows the list to exactly the
// scripts it names, alone and combined, with other results (the
// fixtures') around.
func TestListScripts(t *testing.T) {
	e := newEnv(t)
	e.resetFixtures(t)
	sfx := uniqueSuffix()
	s1, s2 := "lst1-"+sfx, "lst2-"+sfx
	vhost, mail := "vhost-"+sfx, "mail-"+sfx
	site, box := "site-"+sfx, "box-"+sfx
	u1, u2 := uuid.New(), uuid.New()
	start := time.Now().UTC()
	scripts := []*listScript{
		{name: "a", unit: u1, server: s1, backend: vhost, ops: opRefs(vhost, "save "+site+"/shop"), ago: 2 * time.Hour, state: events.StateSuccess},
		{name: "b", unit: u1, server: s2, backend: vhost, ops: opRefs(vhost, "save "+site+"/blog"), ago: 30 * time.Minute, state: events.StateFailure},
		{name: "c", unit: u1, server: s1, backend: mail, ops: opRefs(mail, "save "+box+"/info"), ago: 10 * time.Minute, state: events.StateStarted},
		{name: "d", unit: u2, server: s2, backend: mail, ops: opRefs(mail, "reload "+site+"/shop", "save "+box+"/info"), state: events.StateReceived},
		{name: "e", unit: u2, server: s1, backend: vhost, ops: opRefs(vhost, "save "+site+"/shop"), state: events.StateNothing},
	}
	byName := map[string]*listScript{}
	for _, s := range scripts {
		s.id = events.ScriptID(s.unit, s.server, s.backend)
		byName[s.name] = s
		planned := events.StateReceived
		if s.state == events.StateNothing {
			planned = events.StateNothing
		}
		e.publishResults(t, s.server, &events.ScriptPlanned{ID: s.id, Unit: s.unit, Server: s.server, Backend: s.backend,
			Operations: s.ops, State: planned, Script: "echo " + s.name, Time: start.Add(-s.ago)})
	}
	// The attempts come after every plan, the oldest script's last: a
	// script keeps its place in the listing whatever happens to it later.
	for _, name := range []string{"c", "b", "a"} {
		s := byName[name]
		e.publishResults(t, s.server, &events.ScriptStarted{ID: s.id, Unit: s.unit, Server: s.server, Backend: s.backend, Attempt: 1, Time: start})
		if s.state != events.StateStarted {
			code := 0
			if s.state == events.StateFailure {
				code = 1
			}
			e.publishResults(t, s.server, &events.ScriptFinished{ID: s.id, Unit: s.unit, Server: s.server, Backend: s.backend, Attempt: 1,
				State: s.state, ExitCode: code, Started: start, Time: start})
		}
	}

	rfc := func(d time.Duration) string { return url.QueryEscape(start.Add(-d).Format(time.RFC3339Nano)) }
	cases := []struct {
		name  string
		query string
		want  []string // names, newest first
	}{
		{"server", "server=" + s1, []string{"e", "c", "a"}},
		{"other server", "server=" + s2, []string{"d", "b"}},
		{"backend", "backend=" + mail, []string{"d", "c"}},
		{"unit", "unit=" + u2.String(), []string{"e", "d"}},
		{"state in capitals", "state=SUCCESS&unit=" + u1.String(), []string{"a"}},
		{"state in lower case", "state=failure&server=" + s2, []string{"b"}},
		{"state in mixed case", "state=Started&unit=" + u1.String(), []string{"c"}},
		{"state planned", "state=received&backend=" + mail, []string{"d"}},
		{"state nothing", "state=nothing&server=" + s1, []string{"e"}},
		{"resource type", "resource=" + site, []string{"e", "d", "b", "a"}},
		{"resource type and name", "resource=" + site + "/shop", []string{"e", "d", "a"}},
		{"resource of a second operation", "resource=" + box + "/info", []string{"d", "c"}},
		{"resource with no script", "resource=" + site + "/none", nil},
		{"since a duration", "since=1h&unit=" + u1.String(), []string{"c", "b"}},
		{"until a duration", "until=1h&unit=" + u1.String(), []string{"a"}},
		{"since and until in RFC 3339", "since=" + rfc(45*time.Minute) + "&until=" + rfc(5*time.Minute) + "&backend=" + vhost, []string{"b"}},
		{"since is inclusive", "since=" + rfc(10*time.Minute) + "&server=" + s1, []string{"e", "c"}},
		{"until is exclusive", "until=" + rfc(10*time.Minute) + "&server=" + s1, []string{"a"}},
		{"server and backend", "server=" + s1 + "&backend=" + vhost, []string{"e", "a"}},
		{"server, state and resource", "server=" + s2 + "&state=failure&resource=" + site, []string{"b"}},
		{"unit and resource", "unit=" + u1.String() + "&resource=" + site + "/blog", []string{"b"}},
		{"filters no script has all of", "server=" + s1 + "&unit=" + u2.String() + "&backend=" + mail, nil},
		{"unknown server", "server=nowhere-" + sfx, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			page := e.getOK(t, "/v1/scripts?"+c.query)
			if _, ok := page["next"]; ok {
				t.Errorf("a page holding every match has a next: %v", page["next"])
			}
			items := pageItems(t, page)
			var want []string
			for _, n := range c.want {
				want = append(want, byName[n].id.String())
			}
			if got := stringsOf(items, "id"); !slices.Equal(got, want) {
				t.Fatalf("ids %v, want %v (%v)", got, want, c.want)
			}
			for i, it := range items {
				s := byName[c.want[i]]
				if it["state"] != s.state || it["server"] != s.server || it["backend"] != s.backend || it["unit"] != s.unit.String() {
					t.Errorf("%s: %v, want state %s on %s of %s in unit %s", s.name, it, s.state, s.server, s.backend, s.unit)
				}
				if _, ok := it["stdout"]; ok {
					t.Errorf("%s: a listing carries the output: %v", s.name, it)
				}
			}
		})
	}
}

// TestListScriptsPages: ?limit= and ?after= walk a listing page by page,
// newest first, every script exactly once, keeping the filters; the last
// page has no next, also when it is full.
func TestListScriptsPages(t *testing.T) {
	// No fixtures: the planner would add scripts of its own while the
	// test walks the whole listing. Another unit's scripts on another
	// server, between the test's, are what the filters leave out.
	e := newEnv(t)
	sfx := uniqueSuffix()
	s1, s2, s3 := "pg1-"+sfx, "pg2-"+sfx, "pg3-"+sfx
	unit, other := uuid.New(), uuid.New()
	var mine, onS1 []string // newest first
	// A script's id is its unit's, server's and backend's: the unit's
	// scripts on one server are each of a backend of its own.
	backend := func(i int) string { return fmt.Sprintf("vhost%d", i) }
	for i := range 7 {
		server := s1
		if i%3 == 2 {
			server = s2
		}
		id := events.ScriptID(unit, server, backend(i))
		e.publishResults(t, server, &events.ScriptPlanned{ID: id, Unit: unit, Server: server, Backend: backend(i), State: events.StateReceived,
			Operations: opRefs(backend(i), fmt.Sprintf("save page-%s/p%d", sfx, i)), Time: time.Now().UTC()})
		mine = slices.Insert(mine, 0, id.String())
		if server == s1 {
			onS1 = slices.Insert(onS1, 0, id.String())
		}
		if i%2 == 0 {
			e.publishResults(t, s3, &events.ScriptPlanned{ID: events.ScriptID(other, s3, backend(i)), Unit: other, Server: s3, Backend: backend(i),
				State: events.StateReceived, Operations: opRefs(backend(i), fmt.Sprintf("save page-%s/o%d", sfx, i)), Time: time.Now().UTC()})
		}
	}
	// Starting the oldest script later does not move it up.
	e.publishResults(t, s1, &events.ScriptStarted{ID: uuid.MustParse(mine[len(mine)-1]), Unit: unit, Server: s1, Backend: backend(0), Attempt: 1,
		Time: time.Now().UTC()})

	all := pageItems(t, e.getOK(t, "/v1/scripts?limit=1000"))
	if len(all) != len(mine)+4 {
		t.Fatalf("the whole listing has %d scripts, want %d", len(all), len(mine)+4)
	}

	cases := []struct {
		name  string
		query string
		limit int
		want  []string // nil: the whole listing
		pages int      // 0: do not check
	}{
		{"everything, two a page", "", 2, nil, 0},
		{"everything, one a page", "", 1, nil, 0},
		{"a unit, two a page", "unit=" + unit.String(), 2, mine, 4},
		{"a unit, three a page", "unit=" + unit.String(), 3, mine, 3},
		{"a server, two a page", "server=" + s1, 2, onS1, 3},
		{"a full last page", "server=" + s2, 2, []string{mine[1], mine[4]}, 1},
		{"one page", "unit=" + unit.String(), 1000, mine, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			want := c.want
			if want == nil {
				want = stringsOf(all, "id")
			}
			pages := e.walkPages(t, "/v1/scripts?"+c.query, c.limit)
			if c.pages != 0 && len(pages) != c.pages {
				t.Errorf("%d pages, want %d", len(pages), c.pages)
			}
			var got []string
			var last float64
			for i, p := range pages {
				for _, it := range p {
					seq, _ := it["seq"].(float64)
					if last != 0 && seq >= last {
						t.Errorf("page %d: seq %v after %v, want newest first", i, seq, last)
					}
					last = seq
					got = append(got, it["id"].(string))
				}
			}
			if !slices.Equal(got, want) {
				t.Errorf("walked %v\nwant   %v", got, want)
			}
		})
	}
}

// TestLogQueriesRefuseBadInput: a malformed query parameter of the results
// endpoints is a 400 whose problem names it; a misspelt filter does not
// silently select everything.
func TestLogQueriesRefuseBadInput(t *testing.T) {
	e := newEnv(t)
	e.resetFixtures(t)
	// cursor encodes s as the API's cursors are, for cursors it never gave.
	cursor := base64.RawURLEncoding.EncodeToString
	cases := []struct {
		name  string
		path  string
		field string
	}{
		{"unknown parameter", "/v1/scripts?sever=web1", "sever"},
		{"unknown parameter beside a good one", "/v1/scripts?server=web1&stat=SUCCESS", "stat"},
		{"two unknown parameters name the first", "/v1/scripts?zeta=1&alpha=2", "alpha"},
		{"malformed cursor", "/v1/scripts?after=zzz", "after"},
		{"cursor of another shape", "/v1/scripts?after=" + cursor([]byte("x5")), "after"},
		{"cursor at zero", "/v1/scripts?after=" + cursor([]byte("s0")), "after"},
		{"cursor not a number", "/v1/scripts?after=" + cursor([]byte("s5x")), "after"},
		{"unknown state", "/v1/scripts?state=running", "state"},
		{"dropped is no script's state", "/v1/scripts?state=DROPPED", "state"},
		{"bad unit", "/v1/scripts?unit=nope", "unit"},
		{"bad since", "/v1/scripts?since=yesterday", "since"},
		{"negative since", "/v1/scripts?since=-1h", "since"},
		{"bad until", "/v1/scripts?until=2026-13-01T00:00:00Z", "until"},
		{"resource without a type", "/v1/scripts?resource=/x", "resource"},
		{"resource with an empty name", "/v1/scripts?resource=website/", "resource"},
		{"limit zero", "/v1/scripts?limit=0", "limit"},
		{"negative limit", "/v1/scripts?limit=-1", "limit"},
		{"limit over the maximum", "/v1/scripts?limit=1001", "limit"},
		{"limit not a number", "/v1/scripts?limit=ten", "limit"},
		{"history: unknown parameter", "/v1/resources/website/shop/history?server=web1", "server"},
		{"history: limit zero", "/v1/resources/website/shop/history?limit=0", "limit"},
		{"history: malformed cursor", "/v1/resources/website/shop/history?after=zzz", "after"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := e.call(t, "GET", c.path, e.viewer, nil, nil)
			p := r.want(t, http.StatusBadRequest)
			if p["field"] != c.field {
				t.Errorf("field = %v, want %q: %s", p["field"], c.field, r.Raw)
			}
			if d, _ := p["detail"].(string); d == "" {
				t.Errorf("the problem has no detail: %s", r.Raw)
			}
		})
	}
}

// TestScriptLogAttempts: a script's log follows its latest attempt
// whatever order the results of its attempts come in, and is whole when
// the planner's record comes after the executor's results. (TestScriptLog
// covers a second attempt replacing the first's output.)
func TestScriptLogAttempts(t *testing.T) {
	e := newEnv(t)
	e.resetFixtures(t)
	sfx := uniqueSuffix()
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	planned := func(id, unit uuid.UUID, server string) *events.ScriptPlanned {
		return &events.ScriptPlanned{ID: id, Unit: unit, Server: server, Backend: "vhost", State: events.StateReceived,
			Script: "echo ****", Time: at, Operations: opRefs("vhost", "save website/att-"+sfx)}
	}
	check := func(t *testing.T, body map[string]any, want map[string]any) {
		t.Helper()
		for k, v := range want {
			if v == nil {
				if got, ok := body[k]; ok {
					t.Errorf("%s = %v, want absent", k, got)
				}
				continue
			}
			if body[k] != v {
				t.Errorf("%s = %v, want %v", k, body[k], v)
			}
		}
	}

	t.Run("output of an older attempt after the newer finished", func(t *testing.T) {
		unit, server := uuid.New(), "att1-"+sfx
		id := events.ScriptID(unit, server, "vhost")
		e.publishResults(t, server,
			planned(id, unit, server),
			&events.ScriptStarted{ID: id, Unit: unit, Server: server, Backend: "vhost", Attempt: 1, Time: at},
			&events.ScriptStarted{ID: id, Unit: unit, Server: server, Backend: "vhost", Attempt: 2, Time: at.Add(time.Minute)},
			&events.ScriptOutput{ID: id, Attempt: 2, Stream: events.Stdout, Data: []byte("two\n")},
			&events.ScriptFinished{ID: id, Unit: unit, Server: server, Backend: "vhost", Attempt: 2, State: events.StateSuccess, Stdout: 4, Started: at.Add(time.Minute), Time: at.Add(2 * time.Minute)},
			&events.ScriptOutput{ID: id, Attempt: 1, Stream: events.Stdout, Data: []byte("late from one\n")},
			&events.ScriptOutput{ID: id, Attempt: 1, Stream: events.Stderr, Data: []byte("late error from one\n")},
		)
		body := e.getOK(t, "/v1/scripts/"+id.String())
		check(t, body, map[string]any{"state": "SUCCESS", "attempt": 2.0, "exit_code": 0.0, "stdout": "two\n", "stderr": "", "stdout_bytes": 4.0})
	})

	t.Run("finish of an older attempt after the newer started", func(t *testing.T) {
		unit, server := uuid.New(), "att2-"+sfx
		id := events.ScriptID(unit, server, "vhost")
		e.publishResults(t, server,
			planned(id, unit, server),
			&events.ScriptStarted{ID: id, Unit: unit, Server: server, Backend: "vhost", Attempt: 1, Time: at},
			&events.ScriptOutput{ID: id, Attempt: 1, Stream: events.Stdout, Data: []byte("one\n")},
			&events.ScriptStarted{ID: id, Unit: unit, Server: server, Backend: "vhost", Attempt: 2, Executor: "local on two", Time: at.Add(time.Minute)},
			&events.ScriptOutput{ID: id, Attempt: 2, Stream: events.Stdout, Data: []byte("two\n")},
		)
		e.settleResults(t) // the late finish is folded onto the stored log
		e.publishResults(t, server, &events.ScriptFinished{ID: id, Unit: unit, Server: server, Backend: "vhost", Attempt: 1, State: events.StateAborted, ExitCode: -1,
			Reason: "lost", Stdout: 4, Started: at, Time: at.Add(3 * time.Minute)})
		body := e.getOK(t, "/v1/scripts/"+id.String())
		check(t, body, map[string]any{"state": "STARTED", "attempt": 2.0, "exit_code": nil, "finished": nil, "reason": nil,
			"stdout": "two\n", "executor": "local on two"})
		if got, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(body["started"])); !got.Equal(at.Add(time.Minute)) {
			t.Errorf("started = %v, want the second attempt's %v", body["started"], at.Add(time.Minute))
		}
	})

	t.Run("output of an attempt after it finished", func(t *testing.T) {
		unit, server := uuid.New(), "att3-"+sfx
		id := events.ScriptID(unit, server, "vhost")
		e.publishResults(t, server,
			planned(id, unit, server),
			&events.ScriptStarted{ID: id, Unit: unit, Server: server, Backend: "vhost", Attempt: 1, Time: at},
			&events.ScriptOutput{ID: id, Attempt: 1, Stream: events.Stdout, Data: []byte("done\n")},
			&events.ScriptFinished{ID: id, Unit: unit, Server: server, Backend: "vhost", Attempt: 1, State: events.StateSuccess, Stdout: 5, Started: at, Time: at.Add(time.Second)},
			&events.ScriptOutput{ID: id, Attempt: 1, Stream: events.Stdout, Data: []byte("after the end\n")},
		)
		body := e.getOK(t, "/v1/scripts/"+id.String())
		check(t, body, map[string]any{"state": "SUCCESS", "attempt": 1.0, "stdout": "done\n", "stdout_bytes": 5.0})
	})

	// Without a read in between, the early results and the record may be
	// folded in one transaction; with one, the record is folded onto the
	// stored log.
	for _, settle := range []bool{false, true} {
		name := "results before the planner's record"
		if settle {
			name += ", stored first"
		}
		t.Run(name, func(t *testing.T) {
			unit, server := uuid.New(), "att4-"+uniqueSuffix()
			id := events.ScriptID(unit, server, "vhost")
			started, finished := at.Add(time.Minute), at.Add(2*time.Minute)
			seqs := e.publishResults(t, server,
				&events.ScriptStarted{ID: id, Unit: unit, Server: server, Backend: "vhost", Attempt: 1, Executor: "local on test", Time: started},
				&events.ScriptOutput{ID: id, Attempt: 1, Stream: events.Stdout, Data: []byte("early\n")},
				&events.ScriptFinished{ID: id, Unit: unit, Server: server, Backend: "vhost", Attempt: 1, State: events.StateFailure, ExitCode: 3,
					Stdout: 6, Started: started, Time: finished},
			)
			if settle {
				// Before the record, the log is filed under what the
				// executor's results say.
				items := pageItems(t, e.getOK(t, "/v1/scripts?server="+server))
				if ids := stringsOf(items, "id"); !slices.Equal(ids, []string{id.String()}) || items[0]["state"] != "FAILURE" || items[0]["unit"] != unit.String() {
					t.Errorf("before the record, ?server=%s lists %v, want [%s] FAILURE in unit %s", server, items, id, unit)
				}
			}
			e.publishResults(t, server, planned(id, unit, server))
			body := e.getOK(t, "/v1/scripts/"+id.String())
			check(t, body, map[string]any{"id": id.String(), "unit": unit.String(), "server": server, "backend": "vhost",
				"script": "echo ****", "state": "FAILURE", "attempt": 1.0, "exit_code": 3.0, "executor": "local on test",
				"stdout": "early\n", "stdout_bytes": 6.0, "seq": float64(seqs[0])})
			if ops, _ := body["operations"].([]any); len(ops) != 1 {
				t.Errorf("operations = %v, want the planner's one", body["operations"])
			}
			if got, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(body["created"])); !got.Equal(at) {
				t.Errorf("created = %v, want the planner's %v", body["created"], at)
			}
			// The late record files the script under its unit, server and
			// resource too.
			for _, q := range []string{"unit=" + unit.String(), "server=" + server, "resource=website/att-" + sfx + "&state=failure&server=" + server} {
				if ids := stringsOf(pageItems(t, e.getOK(t, "/v1/scripts?"+q)), "id"); !slices.Equal(ids, []string{id.String()}) {
					t.Errorf("?%s lists %v, want [%s]", q, ids, id)
				}
			}
			st := e.call(t, "GET", "/v1/servers/"+server+"/status", e.viewer, nil, nil)
			if st.Status != http.StatusOK {
				t.Errorf("the server of a script that ran has no status: %d %s", st.Status, st.Raw)
			} else if st.Body["last_script"] != id.String() || st.Body["last_state"] != "FAILURE" || st.Body["reachable"] != true {
				t.Errorf("server status %v, want the failed script, reachable", st.Body)
			}
		})
	}
}

// TestUnitRollup: GET /v1/units/{id} counts a unit's scripts by state as
// they start and finish, lists what it dropped and why, and keeps the
// state of scripts whose results came before the unit's record.
func TestUnitRollup(t *testing.T) {
	e := newEnv(t)
	e.resetFixtures(t)
	sfx := uniqueSuffix()
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	srvA, srvB := "unA-"+sfx, "unB-"+sfx

	t.Run("counts follow the scripts", func(t *testing.T) {
		unit := uuid.New()
		type script struct {
			id      uuid.UUID
			server  string
			backend string
		}
		s := []script{{server: srvA, backend: "vhost"}, {server: srvB, backend: "vhost"}, {server: srvA, backend: "mail"}}
		for i := range s {
			s[i].id = events.ScriptID(unit, s[i].server, s[i].backend)
		}
		var summary []events.ScriptSummary
		for i, sc := range s {
			e.publishResults(t, sc.server, &events.ScriptPlanned{ID: sc.id, Unit: unit, Server: sc.server, Backend: sc.backend,
				State: events.StateReceived, Time: at, Operations: opRefs(sc.backend, fmt.Sprintf("save website/u%d-%s", i, sfx))})
			summary = append(summary, events.ScriptSummary{ID: sc.id, Server: sc.server, Backend: sc.backend, State: events.StateReceived, Async: i == 2})
		}
		dropped := []events.DroppedOp{
			{Operation: events.OperationRef{Backend: "spare", Action: "save", Type: "website", Name: "d-" + sfx}, Reason: "no route of backend spare takes it"},
			{Operation: events.OperationRef{Backend: "vhost", Action: "save", Type: "website", Name: "m-" + sfx}, Route: "vhost@" + srvB, Reason: "match failed: no such key"},
		}
		e.publishResults(t, "", &events.UnitPlanned{Unit: unit, Sequence: 42, Operations: 5, Scripts: summary, Dropped: dropped, Time: at})

		steps := []struct {
			name   string
			result events.Result
			server string
			counts [4]float64 // queued, running, succeeded, failed
			states [3]string
		}{
			{"planned", nil, "", [4]float64{3, 0, 0, 0}, [3]string{"RECEIVED", "RECEIVED", "RECEIVED"}},
			{"first starts", &events.ScriptStarted{ID: s[0].id, Unit: unit, Server: srvA, Backend: "vhost", Attempt: 1, Time: at}, srvA,
				[4]float64{2, 1, 0, 0}, [3]string{"STARTED", "RECEIVED", "RECEIVED"}},
			{"second starts", &events.ScriptStarted{ID: s[1].id, Unit: unit, Server: srvB, Backend: "vhost", Attempt: 1, Time: at}, srvB,
				[4]float64{1, 2, 0, 0}, [3]string{"STARTED", "STARTED", "RECEIVED"}},
			{"first succeeds", &events.ScriptFinished{ID: s[0].id, Unit: unit, Server: srvA, Backend: "vhost", Attempt: 1, State: events.StateSuccess, Started: at, Time: at}, srvA,
				[4]float64{1, 1, 1, 0}, [3]string{"SUCCESS", "STARTED", "RECEIVED"}},
			{"output changes nothing", &events.ScriptOutput{ID: s[1].id, Attempt: 1, Stream: events.Stdout, Data: []byte("x")}, srvB,
				[4]float64{1, 1, 1, 0}, [3]string{"SUCCESS", "STARTED", "RECEIVED"}},
			{"second fails", &events.ScriptFinished{ID: s[1].id, Unit: unit, Server: srvB, Backend: "vhost", Attempt: 1, State: events.StateFailure, ExitCode: 1, Started: at, Time: at}, srvB,
				[4]float64{1, 0, 1, 1}, [3]string{"SUCCESS", "FAILURE", "RECEIVED"}},
			{"third revoked before it started", &events.ScriptFinished{ID: s[2].id, Unit: unit, Server: srvA, Backend: "mail", Attempt: 1, State: events.StateRevoked, ExitCode: -1, Time: at}, srvA,
				[4]float64{0, 0, 1, 2}, [3]string{"SUCCESS", "FAILURE", "REVOKED"}},
			{"second retried", &events.ScriptStarted{ID: s[1].id, Unit: unit, Server: srvB, Backend: "vhost", Attempt: 2, Time: at}, srvB,
				[4]float64{0, 1, 1, 1}, [3]string{"SUCCESS", "STARTED", "REVOKED"}},
			{"retry succeeds", &events.ScriptFinished{ID: s[1].id, Unit: unit, Server: srvB, Backend: "vhost", Attempt: 2, State: events.StateSuccess, Started: at, Time: at}, srvB,
				[4]float64{0, 0, 2, 1}, [3]string{"SUCCESS", "SUCCESS", "REVOKED"}},
		}
		for _, st := range steps {
			if st.result != nil {
				e.publishResults(t, st.server, st.result)
			}
			u := e.getOK(t, "/v1/units/"+unit.String())
			c, _ := u["counts"].(map[string]any)
			got := [4]float64{}
			for i, k := range []string{"queued", "running", "succeeded", "failed"} {
				got[i], _ = c[k].(float64)
			}
			if got != st.counts {
				t.Errorf("%s: counts %v, want queued, running, succeeded, failed %v", st.name, c, st.counts)
			}
			scripts, _ := u["scripts"].([]any)
			if len(scripts) != len(s) {
				t.Fatalf("%s: scripts %v, want %d", st.name, u["scripts"], len(s))
			}
			for i, raw := range scripts {
				sc := raw.(map[string]any)
				if sc["id"] != s[i].id.String() || sc["server"] != s[i].server || sc["backend"] != s[i].backend || sc["state"] != st.states[i] {
					t.Errorf("%s: script %d = %v, want %s on %s in state %s", st.name, i, sc, s[i].id, s[i].server, st.states[i])
				}
			}
		}

		u := e.getOK(t, "/v1/units/"+unit.String())
		if u["unit"] != unit.String() || u["operations"] != 5.0 || u["sequence"] != 42.0 {
			t.Errorf("unit %v, want %s with 5 operations at sequence 42", u, unit)
		}
		if a, _ := u["scripts"].([]any)[2].(map[string]any)["async"].(bool); !a {
			t.Errorf("the async script is not marked async: %v", u["scripts"])
		}
		var gotDropped []events.DroppedOp
		raw, _ := json.Marshal(u["dropped"])
		if err := json.Unmarshal(raw, &gotDropped); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(gotDropped, dropped) {
			t.Errorf("dropped %+v, want %+v", gotDropped, dropped)
		}
	})

	t.Run("unit record after the scripts finished", func(t *testing.T) {
		unit := uuid.New()
		// One script a server and backend: the one that fails runs on B.
		done, failed, never := events.ScriptID(unit, srvA, "vhost"), events.ScriptID(unit, srvB, "vhost"), events.ScriptID(unit, srvA, "mail")
		for _, sc := range []struct {
			id     uuid.UUID
			server string
		}{{done, srvA}, {failed, srvB}} {
			e.publishResults(t, sc.server, &events.ScriptPlanned{ID: sc.id, Unit: unit, Server: sc.server, Backend: "vhost", State: events.StateReceived, Time: at,
				Operations: opRefs("vhost", "save website/late-"+sfx)})
			e.publishResults(t, sc.server, &events.ScriptStarted{ID: sc.id, Unit: unit, Server: sc.server, Backend: "vhost", Attempt: 1, Time: at})
		}
		e.publishResults(t, srvA,
			&events.ScriptFinished{ID: done, Unit: unit, Server: srvA, Backend: "vhost", Attempt: 1, State: events.StateSuccess, Started: at, Time: at})
		e.publishResults(t, srvB,
			&events.ScriptFinished{ID: failed, Unit: unit, Server: srvB, Backend: "vhost", Attempt: 1, State: events.StateTimeout, ExitCode: -1, Started: at, Time: at})
		e.call(t, "GET", "/v1/units/"+unit.String(), e.viewer, nil, nil).want(t, http.StatusNotFound)
		e.publishResults(t, "", &events.UnitPlanned{Unit: unit, Sequence: 7, Operations: 3, Time: at, Scripts: []events.ScriptSummary{
			{ID: done, Server: srvA, Backend: "vhost", State: events.StateReceived},
			{ID: failed, Server: srvB, Backend: "vhost", State: events.StateReceived},
			{ID: never, Server: srvA, Backend: "mail", State: events.StateNothing},
		}})
		u := e.getOK(t, "/v1/units/"+unit.String())
		var states []string
		for _, raw := range u["scripts"].([]any) {
			states = append(states, raw.(map[string]any)["state"].(string))
		}
		if want := []string{"SUCCESS", "TIMEOUT", "NOTHING"}; !slices.Equal(states, want) {
			t.Errorf("states %v, want %v", states, want)
		}
		if c := u["counts"]; !jsonEqual(c, map[string]int{"queued": 0, "running": 0, "succeeded": 2, "failed": 1}) {
			t.Errorf("counts %v, want 2 succeeded (one with nothing to run), 1 failed", c)
		}
		if d, ok := u["dropped"].([]any); !ok || len(d) != 0 {
			t.Errorf("dropped = %v, want []", u["dropped"])
		}
	})

	t.Run("unknown unit", func(t *testing.T) {
		r := e.call(t, "GET", "/v1/units/"+uuid.NewString(), e.viewer, nil, nil)
		r.want(t, http.StatusNotFound)
	})
	t.Run("not a uuid", func(t *testing.T) {
		r := e.call(t, "GET", "/v1/units/nope", e.viewer, nil, nil)
		if p := r.want(t, http.StatusUnprocessableEntity); p["field"] != "id" {
			t.Errorf("field = %v, want id: %s", p["field"], r.Raw)
		}
	})
}

// TestServerStatusFromResults: GET /v1/servers/{name}/status says a server
// was reachable once a script started there, and unreachable, with why,
// when the last attempt on it ended before its script started.
func TestServerStatusFromResults(t *testing.T) {
	e := newEnv(t)
	e.resetFixtures(t)
	server := "st-" + uniqueSuffix()
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	// plan plans a script on the server in a unit of its own: a script's id
	// is its unit's, server's and backend's.
	plan := func() (unit, id uuid.UUID) {
		unit = uuid.New()
		id = events.ScriptID(unit, server, "vhost")
		e.publishResults(t, server, &events.ScriptPlanned{ID: id, Unit: unit, Server: server, Backend: "vhost", State: events.StateReceived, Time: at,
			Operations: opRefs("vhost", "save website/st")})
		return unit, id
	}

	firstUnit, first := plan()
	r := e.call(t, "GET", "/v1/servers/"+server+"/status", e.viewer, nil, nil)
	r.want(t, http.StatusNotFound) // planned is not run
	e.call(t, "GET", "/v1/servers/never-"+server+"/status", e.viewer, nil, nil).want(t, http.StatusNotFound)

	steps := []struct {
		name      string
		result    events.Result
		script    uuid.UUID
		state     string
		reachable bool
		reason    string
		seen      time.Time
	}{
		{"a script starts", &events.ScriptStarted{ID: first, Unit: firstUnit, Server: server, Backend: "vhost", Attempt: 1, Time: at.Add(1 * time.Minute)},
			first, "STARTED", true, "", at.Add(1 * time.Minute)},
		{"it fails", &events.ScriptFinished{ID: first, Unit: firstUnit, Server: server, Backend: "vhost", Attempt: 1, State: events.StateFailure, ExitCode: 1, Reason: "exit status 1",
			Started: at.Add(1 * time.Minute), Time: at.Add(2 * time.Minute)},
			first, "FAILURE", true, "", at.Add(2 * time.Minute)},
		{"the next cannot connect", &events.ScriptFinished{ID: uuid.Nil, Server: server, Backend: "vhost", Attempt: 1, State: events.StateTimeout, ExitCode: -1,
			Reason: "dial tcp 10.0.0.9:22: i/o timeout", Time: at.Add(3 * time.Minute)},
			uuid.Nil, "TIMEOUT", false, "dial tcp 10.0.0.9:22: i/o timeout", at.Add(3 * time.Minute)},
		{"a start makes it reachable again", &events.ScriptStarted{ID: uuid.Nil, Server: server, Backend: "vhost", Attempt: 2, Time: at.Add(4 * time.Minute)},
			uuid.Nil, "STARTED", true, "", at.Add(4 * time.Minute)},
		{"a method error before the start", &events.ScriptFinished{ID: uuid.Nil, Server: server, Backend: "vhost", Attempt: 1, State: events.StateError, ExitCode: -1,
			Reason: "ssh: handshake failed: host key mismatch", Time: at.Add(5 * time.Minute)},
			uuid.Nil, "ERROR", false, "ssh: handshake failed: host key mismatch", at.Add(5 * time.Minute)},
		{"a timeout after the start", &events.ScriptFinished{ID: uuid.Nil, Server: server, Backend: "vhost", Attempt: 1, State: events.StateTimeout, ExitCode: -1,
			Reason: "ran past its timeout of 1m", Started: at.Add(5 * time.Minute), Time: at.Add(7 * time.Minute)},
			uuid.Nil, "TIMEOUT", true, "", at.Add(7 * time.Minute)},
	}
	for _, st := range steps {
		// uuid.Nil in a step: a script of the step's own.
		id := st.script
		if id == uuid.Nil {
			var unit uuid.UUID
			unit, id = plan()
			switch r := st.result.(type) {
			case *events.ScriptStarted:
				r.ID, r.Unit = id, unit
			case *events.ScriptFinished:
				r.ID, r.Unit = id, unit
			}
		}
		e.publishResults(t, server, st.result)
		s := e.getOK(t, "/v1/servers/"+server+"/status")
		reason, _ := s["reason"].(string)
		if s["name"] != server || s["last_script"] != id.String() || s["last_state"] != st.state || s["reachable"] != st.reachable || reason != st.reason {
			t.Errorf("%s: %v\nwant last script %s in %s, reachable %v, reason %q", st.name, s, id, st.state, st.reachable, st.reason)
		}
		if seen, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(s["last_seen"])); !seen.Equal(st.seen) {
			t.Errorf("%s: last_seen %v, want %v", st.name, s["last_seen"], st.seen)
		}
	}

	// The executor of a first attempt, redelivered while it hung, reports
	// late that it could not connect; the second attempt runs meanwhile:
	// the latest attempt reached the server.
	lateUnit, late := plan()
	e.publishResults(t, server,
		&events.ScriptStarted{ID: late, Unit: lateUnit, Server: server, Backend: "vhost", Attempt: 2, Time: at.Add(8 * time.Minute)},
		&events.ScriptFinished{ID: late, Unit: lateUnit, Server: server, Backend: "vhost", Attempt: 1, State: events.StateTimeout, ExitCode: -1,
			Reason: "dial tcp 10.0.0.9:22: i/o timeout", Time: at.Add(9 * time.Minute)})
	s := e.getOK(t, "/v1/servers/"+server+"/status")
	if s["last_script"] != late.String() || s["last_state"] != "STARTED" || s["reachable"] != true || s["reason"] != nil {
		t.Errorf("after a late end of an older attempt: %v\nwant %s STARTED, reachable, no reason", s, late)
	}
}

// TestResourceHistory: GET /v1/resources/{type}/{name}/history lists the
// operations on a resource newest first — each script's with its state
// now, each dropped one with why — and pages through them each once.
func TestResourceHistory(t *testing.T) {
	e := newEnv(t)
	e.resetFixtures(t)
	sfx := uniqueSuffix()
	typ := "site-" + sfx
	server := "hist-" + sfx
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	u1, u2, u3 := uuid.New(), uuid.New(), uuid.New()
	p1, p3 := events.ScriptID(u1, server, "vhost"), events.ScriptID(u3, server, "vhost")

	// Unit 1 saves the shop; unit 2's save finds no route; unit 3 saves
	// and reloads the shop in one script, and saves the blog.
	seq1 := e.publishResults(t, server, &events.ScriptPlanned{ID: p1, Unit: u1, Server: server, Backend: "vhost", State: events.StateReceived,
		Time: at, Operations: opRefs("vhost", "save "+typ+"/shop")})[0]
	seq2 := e.publishResults(t, "", &events.UnitPlanned{Unit: u2, Sequence: 2, Operations: 1, Time: at.Add(time.Minute), Dropped: []events.DroppedOp{
		{Operation: events.OperationRef{Backend: "spare", Action: "save", Type: typ, Name: "shop"}, Reason: "no route of backend spare takes it"}}})[0]
	seq3 := e.publishResults(t, server, &events.ScriptPlanned{ID: p3, Unit: u3, Server: server, Backend: "vhost", State: events.StateReceived,
		Time: at.Add(2 * time.Minute), Operations: opRefs("vhost", "save "+typ+"/shop", "reload "+typ+"/shop", "save "+typ+"/blog")})[0]

	type op struct {
		seq                                    uint64
		unit                                   uuid.UUID
		action, backend, script, server, state string
		reason                                 string
	}
	check := func(t *testing.T, items []map[string]any, want []op) {
		t.Helper()
		if len(items) != len(want) {
			t.Fatalf("%d operations, want %d: %v", len(items), len(want), items)
		}
		for i, w := range want {
			it := items[i]
			reason, _ := it["reason"].(string)
			script, _ := it["script"].(string)
			srv, _ := it["server"].(string)
			if it["seq"] != float64(w.seq) || it["unit"] != w.unit.String() || it["action"] != w.action || it["backend"] != w.backend ||
				script != w.script || srv != w.server || it["state"] != w.state || reason != w.reason {
				t.Errorf("operation %d = %v\nwant %+v", i, it, w)
			}
		}
	}
	shop := "/v1/resources/" + typ + "/shop/history"
	want := []op{
		{seq3, u3, "save", "vhost", p3.String(), server, "RECEIVED", ""},
		{seq3, u3, "reload", "vhost", p3.String(), server, "RECEIVED", ""},
		{seq2, u2, "save", "spare", "", "", "DROPPED", "no route of backend spare takes it"},
		{seq1, u1, "save", "vhost", p1.String(), server, "RECEIVED", ""},
	}
	check(t, pageItems(t, e.getOK(t, shop)), want)

	// The scripts' states now, not when they were planned.
	e.publishResults(t, server,
		&events.ScriptStarted{ID: p1, Unit: u1, Server: server, Backend: "vhost", Attempt: 1, Time: at},
		&events.ScriptFinished{ID: p1, Unit: u1, Server: server, Backend: "vhost", Attempt: 1, State: events.StateSuccess, Started: at, Time: at},
		&events.ScriptStarted{ID: p3, Unit: u3, Server: server, Backend: "vhost", Attempt: 1, Time: at},
		&events.ScriptFinished{ID: p3, Unit: u3, Server: server, Backend: "vhost", Attempt: 1, State: events.StateFailure, ExitCode: 1, Reason: "exit status 1", Started: at, Time: at},
	)
	want[0].state, want[0].reason = "FAILURE", "exit status 1"
	want[1].state, want[1].reason = "FAILURE", "exit status 1"
	want[3].state = "SUCCESS"
	check(t, pageItems(t, e.getOK(t, shop)), want)
	check(t, pageItems(t, e.getOK(t, "/v1/resources/"+typ+"/blog/history")), []op{{seq3, u3, "save", "vhost", p3.String(), server, "FAILURE", "exit status 1"}})

	for _, limit := range []int{1, 2, 3, 4} {
		t.Run(fmt.Sprintf("%d a page", limit), func(t *testing.T) {
			var all []map[string]any
			for _, p := range e.walkPages(t, shop+"?", limit) {
				all = append(all, p...)
			}
			check(t, all, want)
		})
	}

	for _, path := range []string{"/v1/resources/" + typ + "/none/history", "/v1/resources/other-" + sfx + "/shop/history"} {
		e.call(t, "GET", path, e.viewer, nil, nil).want(t, http.StatusNotFound)
	}

	t.Run("a page after the records expired", func(t *testing.T) {
		page := e.getOK(t, shop+"?limit=1")
		next, _ := page["next"].(string)
		if next == "" {
			t.Fatalf("no next: %v", page)
		}
		if _, err := e.Results.DB().PruneResults(context.Background(), time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		page = e.getOK(t, shop+"?limit=1&after="+url.QueryEscape(next))
		if items, ok := page["items"].([]any); !ok || len(items) != 0 {
			t.Errorf("items = %v, want []", page["items"])
		}
	})
}
