package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/infra/planbus"
)

// accepted checks r is the 202 (or status) of a request that appended one
// unit of one event, at the end of the log, and returns the unit and its
// sequence.
func (e *env) accepted(t *testing.T, r response, status int, before uint64) (uuid.UUID, uint64) {
	t.Helper()
	body := r.want(t, status)
	seq := e.lastSeq(t)
	if seq != before+1 {
		t.Fatalf("the request wrote %d events, want 1", seq-before)
	}
	if body["sequence"] != float64(seq) || r.Header.Get("Orchestra-Sequence") != strconv.FormatUint(seq, 10) {
		t.Fatalf("sequence %v, Orchestra-Sequence %q; the stream is at %d", body["sequence"], r.Header.Get("Orchestra-Sequence"), seq)
	}
	s, _ := body["unit"].(string)
	unit, err := uuid.Parse(s)
	if err != nil {
		t.Fatalf("unit %q: %v", body["unit"], err)
	}
	return unit, seq
}

// plansOf waits for the planner to plan up to seq and returns the plans of
// unit on server's queue of the EXEC stream.
func (e *env) plansOf(t *testing.T, server string, unit uuid.UUID, seq uint64) []events.Plan {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := e.Dispatcher.WaitFor(ctx, seq); err != nil {
		t.Fatalf("the planner did not reach sequence %d: %v", seq, err)
	}
	subject, err := events.ExecSubject(server)
	if err != nil {
		t.Fatal(err)
	}
	st, err := e.JS.Stream(ctx, events.StreamExec)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatal(err)
	}
	n := info.State.Subjects[subject]
	if n == 0 {
		return nil
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		t.Fatal(err)
	}
	var out []events.Plan
	for i := uint64(0); i < n; i++ {
		msg, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
		if err != nil {
			t.Fatalf("read plan %d of %d on %s: %v", i+1, n, subject, err)
		}
		var p events.Plan
		if err := json.Unmarshal(msg.Data(), &p); err != nil {
			t.Fatalf("a message on %s is not a plan: %v", subject, err)
		}
		if p.Unit != unit {
			continue
		}
		if p.Server != server || p.Sequence != seq {
			t.Errorf("the plan of unit %s on %s is for %s at sequence %d, want %s at %d", unit, subject, p.Server, p.Sequence, server, seq)
		}
		if h := msg.Headers(); h.Get(planbus.HeaderUnit) != unit.String() || h.Get(planbus.HeaderSequence) != strconv.FormatUint(seq, 10) {
			t.Errorf("plan headers %v", h)
		}
		out = append(out, p)
	}
	return out
}

// onlyScript checks plans is one plan of one script of backend and returns
// the script.
func onlyScript(t *testing.T, plans []events.Plan, server, backend string) events.PlanScript {
	t.Helper()
	if len(plans) != 1 {
		t.Fatalf("%d plans of the unit for %s, want 1: %+v", len(plans), server, plans)
	}
	p := plans[0]
	if len(p.Scripts) != 1 {
		t.Fatalf("the plan for %s has %d scripts, want 1: %+v", server, len(p.Scripts), p.Scripts)
	}
	s := p.Scripts[0]
	if s.Backend != backend || s.ID != events.ScriptID(p.Unit, server, backend) {
		t.Fatalf("script %s of backend %s, want backend %s with id %s", s.ID, s.Backend, backend, events.ScriptID(p.Unit, server, backend))
	}
	return s
}

// opsOf decodes the operations of a RetryResult list.
func opsOf(t *testing.T, v any) []events.OperationRef {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var ops []events.OperationRef
	if err := json.Unmarshal(data, &ops); err != nil {
		t.Fatalf("%s is not a list of operations: %v", data, err)
	}
	return ops
}

// refusal is a request the API refuses without writing.
type refusal struct {
	name, path string
	token      string // "" for the operator token
	body       any
	status     int
	field      string
	words      []string
}

func (e *env) refuse(t *testing.T, cases []refusal) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tok := c.token
			if tok == "" {
				tok = e.operator
			}
			before := e.lastSeq(t)
			r := e.call(t, "POST", c.path, tok, c.body, nil)
			r.want(t, c.status)
			if got, _ := r.Body["field"].(string); got != c.field {
				t.Errorf("field = %q, want %q: %s", got, c.field, r.Raw)
			}
			detail, _ := r.Body["detail"].(string)
			for _, w := range c.words {
				if !strings.Contains(detail, w) {
					t.Errorf("detail %q does not mention %q", detail, w)
				}
			}
			if after := e.lastSeq(t); after != before {
				t.Errorf("the refused request wrote %d events", after-before)
			}
		})
	}
}

// TestActionRequest runs a custom action over HTTP and follows it to the
// plan on the server's queue.
func TestActionRequest(t *testing.T) {
	e := newEnv(t)
	e.resetFixtures(t)
	const path = "/v1/resources/website/shop/actions/reload"

	for _, c := range []struct {
		name string
		body any
	}{{"no body", nil}, {"empty object", "{}"}, {"blank body", " \n"}} {
		t.Run(c.name, func(t *testing.T) {
			before := e.lastSeq(t)
			unit, seq := e.accepted(t, e.call(t, "POST", path, e.operator, c.body, nil), http.StatusAccepted, before)
			s := onlyScript(t, e.plansOf(t, "web1", unit, seq), "web1", "vhost")
			want := []events.OperationRef{{Backend: "vhost", Action: "reload", Type: "website", Name: "shop"}}
			if !slices.Equal(s.Operations, want) {
				t.Errorf("operations %+v, want %+v", s.Operations, want)
			}
			if !strings.Contains(s.Script, "echo reload 'shop'") {
				t.Errorf("the script does not run the action on shop:\n%s", s.Script)
			}
			// No route takes vhost to spare, and the spare backend has no
			// reload: nothing for spare.
			if got := e.plansOf(t, "spare", unit, seq); len(got) != 0 {
				t.Errorf("plans for spare: %+v", got)
			}
		})
	}

	e.refuse(t, []refusal{
		{name: "action no backend defines", path: "/v1/resources/website/shop/actions/restart", status: 422, field: "action",
			words: []string{`"restart"`, "spare, vhost"}},
		{name: "delete", path: "/v1/resources/website/shop/actions/delete", status: 422, field: "action"},
		{name: "bad action", path: "/v1/resources/website/shop/actions/Reload", status: 422, field: "action"},
		{name: "bad type", path: "/v1/resources/Website/shop/actions/reload", status: 422, field: "type"},
		{name: "unknown resource", path: "/v1/resources/website/blog/actions/reload", status: 404, words: []string{"website/blog"}},
		{name: "not JSON", path: path, body: "reload please", status: 422},
		{name: "unknown field", path: path, body: obj{"force": true}, status: 422, field: "force"},
		{name: "trailing data", path: path, body: "{} {}", status: 422},
		{name: "viewer", path: path, token: e.viewer, status: 403, words: []string{"operator"}},
		{name: "viewer with a bad body", path: path, token: e.viewer, body: "nope", status: 403},
	})
}

// TestSyncRequest syncs a server over HTTP: one plan, for that server only,
// with a save of every resource its routes take.
func TestSyncRequest(t *testing.T) {
	e := newEnv(t)
	e.resetFixtures(t)
	// A second resource, and a route to spare too: an ordinary change of a
	// website now goes to both servers, a sync of web1 only to web1.
	e.call(t, "POST", "/v1/apply", e.admin, obj{"objects": []obj{
		{"kind": "Resource", "type": "website", "name": "blog", "attrs": obj{"domain": "blog.example.com"}},
		{"kind": "Route", "backend": "vhost", "server": "spare"},
	}}, nil).want(t, http.StatusOK)
	saves := []events.OperationRef{
		{Backend: "vhost", Action: "save", Type: "website", Name: "blog"},
		{Backend: "vhost", Action: "save", Type: "website", Name: "shop"},
	}
	byName := func(a, b events.OperationRef) int { return strings.Compare(a.Name, b.Name) }

	for _, c := range []struct {
		name string
		body any
	}{{"no body", nil}, {"all backends", "{}"}, {"one backend", obj{"backend": "vhost"}}} {
		t.Run(c.name, func(t *testing.T) {
			before := e.lastSeq(t)
			unit, seq := e.accepted(t, e.call(t, "POST", "/v1/servers/web1/sync", e.operator, c.body, nil), http.StatusAccepted, before)
			s := onlyScript(t, e.plansOf(t, "web1", unit, seq), "web1", "vhost")
			got := slices.SortedFunc(slices.Values(s.Operations), byName)
			if !slices.Equal(got, saves) {
				t.Errorf("operations %+v, want %+v", s.Operations, saves)
			}
			for _, name := range []string{"'blog'", "'shop'"} {
				if !strings.Contains(s.Script, "echo "+name) {
					t.Errorf("the script does not save %s:\n%s", name, s.Script)
				}
			}
			if got := e.plansOf(t, "spare", unit, seq); len(got) != 0 {
				t.Errorf("a sync of web1 planned for spare: %+v", got)
			}
		})
	}

	t.Run("spare", func(t *testing.T) {
		before := e.lastSeq(t)
		unit, seq := e.accepted(t, e.call(t, "POST", "/v1/servers/spare/sync", e.admin, nil, nil), http.StatusAccepted, before)
		s := onlyScript(t, e.plansOf(t, "spare", unit, seq), "spare", "vhost")
		if got := slices.SortedFunc(slices.Values(s.Operations), byName); !slices.Equal(got, saves) {
			t.Errorf("operations %+v, want %+v", s.Operations, saves)
		}
		if got := e.plansOf(t, "web1", unit, seq); len(got) != 0 {
			t.Errorf("a sync of spare planned for web1: %+v", got)
		}
	})

	e.refuse(t, []refusal{
		{name: "unknown backend", path: "/v1/servers/web1/sync", body: obj{"backend": "nope"}, status: 422, field: "backend",
			words: []string{`"nope"`, "web1", "vhost"}},
		{name: "backend without a route", path: "/v1/servers/web1/sync", body: obj{"backend": "spare"}, status: 422, field: "backend",
			words: []string{`"spare"`}},
		{name: "unknown server", path: "/v1/servers/web9/sync", status: 404, words: []string{"web9"}},
		{name: "backend not a string", path: "/v1/servers/web1/sync", body: obj{"backend": 1}, status: 422, field: "backend"},
		{name: "unknown field", path: "/v1/servers/web1/sync", body: obj{"backend": "vhost", "full": true}, status: 422, field: "full"},
		{name: "not JSON", path: "/v1/servers/web1/sync", body: "backend=vhost", status: 422},
		{name: "viewer", path: "/v1/servers/web1/sync", token: e.viewer, status: 403, words: []string{"operator"}},
	})
}

// TestRetryRequest retries a logged script over HTTP.
func TestRetryRequest(t *testing.T) {
	e := newEnv(t)
	e.resetFixtures(t)
	path := "/v1/scripts/" + fixtureScript.String() + "/retry"
	save := []events.OperationRef{{Backend: "vhost", Action: "save", Type: "website", Name: "shop"}}

	var planned events.PlanScript
	t.Run("fixture script", func(t *testing.T) {
		before := e.lastSeq(t)
		r := e.call(t, "POST", path, e.operator, nil, nil)
		unit, seq := e.accepted(t, r, http.StatusAccepted, before)
		if got := opsOf(t, r.Body["retried"]); !slices.Equal(got, save) {
			t.Errorf("retried %+v, want %+v", got, save)
		}
		if skipped, ok := r.Body["skipped"].([]any); !ok || len(skipped) != 0 {
			t.Errorf("skipped %v, want an empty list", r.Body["skipped"])
		}
		planned = onlyScript(t, e.plansOf(t, "web1", unit, seq), "web1", "vhost")
		if !slices.Equal(planned.Operations, save) || !strings.Contains(planned.Script, "echo 'shop'") {
			t.Errorf("the retry planned %+v:\n%s", planned.Operations, planned.Script)
		}
	})

	t.Run("again", func(t *testing.T) {
		before := e.lastSeq(t)
		unit, seq := e.accepted(t, e.call(t, "POST", path, e.admin, "{}", nil), http.StatusAccepted, before)
		onlyScript(t, e.plansOf(t, "web1", unit, seq), "web1", "vhost")
	})

	t.Run("the retried script", func(t *testing.T) {
		if planned.ID == uuid.Nil {
			t.Skip("no script was planned")
		}
		// plansOf waited for the planner: its record of the script is on
		// RESULTS, so the script can be retried in turn.
		before := e.lastSeq(t)
		r := e.call(t, "POST", "/v1/scripts/"+planned.ID.String()+"/retry", e.operator, nil, nil)
		e.accepted(t, r, http.StatusAccepted, before)
		if got := opsOf(t, r.Body["retried"]); !slices.Equal(got, save) {
			t.Errorf("retried %+v, want %+v", got, save)
		}
	})

	e.refuse(t, []refusal{
		{name: "unknown script", path: "/v1/scripts/" + uuid.NewString() + "/retry", status: 404},
		{name: "not a UUID", path: "/v1/scripts/not-a-uuid/retry", status: 422, field: "id", words: []string{"not-a-uuid"}},
		{name: "not JSON", path: path, body: "again", status: 422},
		{name: "unknown field", path: path, body: obj{"operations": []string{"save"}}, status: 422, field: "operations"},
		{name: "viewer", path: path, token: e.viewer, status: 403, words: []string{"operator"}},
	})

	t.Run("nothing left", func(t *testing.T) {
		e.call(t, "DELETE", "/v1/resources/website/shop", e.operator, nil, nil).want(t, http.StatusOK)
		before := e.lastSeq(t)
		r := e.call(t, "POST", path, e.operator, nil, nil)
		body := r.want(t, http.StatusOK)
		if _, ok := body["unit"]; ok {
			t.Errorf("a retry with nothing left names a unit: %s", r.Raw)
		}
		if body["sequence"] != float64(before) || r.Header.Get("Orchestra-Sequence") != fmt.Sprint(before) {
			t.Errorf("sequence %v, Orchestra-Sequence %q, want %d", body["sequence"], r.Header.Get("Orchestra-Sequence"), before)
		}
		if got := opsOf(t, body["retried"]); got == nil || len(got) != 0 {
			t.Errorf("retried %v, want an empty list", body["retried"])
		}
		skipped, _ := body["skipped"].([]any)
		if len(skipped) != 1 {
			t.Fatalf("skipped %v, want the save of shop", body["skipped"])
		}
		sk := skipped[0].(map[string]any)
		if got := opsOf(t, []any{sk["operation"]}); !slices.Equal(got, save) || !strings.Contains(fmt.Sprint(sk["reason"]), "website/shop") {
			t.Errorf("skipped %v", sk)
		}
		if after := e.lastSeq(t); after != before {
			t.Errorf("a retry with nothing left wrote %d events", after-before)
		}
	})
}

// TestScriptLog reads a script's log: the planner's record folded with
// what an executor reported of its attempts.
func TestScriptLog(t *testing.T) {
	e := newEnv(t)
	e.resetFixtures(t)
	ctx := context.Background()
	unit := uuid.New()
	id := events.ScriptID(unit, "web1", "vhost")
	publish := func(r events.Result) {
		t.Helper()
		subject, err := events.ScriptSubject("web1", id, r.ResultType())
		if err != nil {
			t.Fatal(err)
		}
		data, _ := json.Marshal(r)
		if _, err := e.JS.Publish(ctx, subject, data); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now().UTC()
	publish(&events.ScriptPlanned{ID: id, Unit: unit, Server: "web1", Backend: "vhost", State: events.StateReceived, Script: "echo ****", Time: now,
		Operations: []events.OperationRef{{Backend: "vhost", Action: "save", Type: "website", Name: "shop"}}})
	publish(&events.ScriptStarted{ID: id, Unit: unit, Server: "web1", Backend: "vhost", Attempt: 1, Time: now})
	publish(&events.ScriptOutput{ID: id, Attempt: 1, Stream: events.Stdout, Data: []byte("lost with attempt 1\n")})
	publish(&events.ScriptStarted{ID: id, Unit: unit, Server: "web1", Backend: "vhost", Attempt: 2, Executor: "local on test", Time: now})
	publish(&events.ScriptOutput{ID: id, Attempt: 2, Stream: events.Stdout, Data: []byte("hello\n")})
	publish(&events.ScriptOutput{ID: id, Attempt: 2, Stream: events.Stderr, Data: []byte("warn\n")})
	publish(&events.ScriptFinished{ID: id, Unit: unit, Server: "web1", Backend: "vhost", Attempt: 2, State: events.StateFailure, ExitCode: 2, Stdout: 6, Stderr: 5, Time: now})

	body := e.call(t, "GET", "/v1/scripts/"+id.String(), e.viewer, nil, nil).want(t, http.StatusOK)
	for field, want := range map[string]any{"state": "FAILURE", "exit_code": 2.0, "attempt": 2.0, "stdout": "hello\n", "stderr": "warn\n",
		"script": "echo ****", "executor": "local on test", "server": "web1", "stdout_bytes": 6.0} {
		if body[field] != want {
			t.Errorf("%s = %v, want %v", field, body[field], want)
		}
	}
	if ops, _ := body["operations"].([]any); len(ops) != 1 {
		t.Errorf("operations %v", body["operations"])
	}
	e.call(t, "GET", "/v1/scripts/"+uuid.NewString(), e.viewer, nil, nil).want(t, http.StatusNotFound)
	bad := e.call(t, "GET", "/v1/scripts/nope", e.viewer, nil, nil)
	if bad.Status != http.StatusUnprocessableEntity || !strings.Contains(string(bad.Raw), `"id"`) {
		t.Errorf("a bad id: %d %s", bad.Status, bad.Raw)
	}
}
