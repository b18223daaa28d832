package gateway_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/gateway"
	"github.com/orchestra-fleet/orchestra/infra/eventstore"
	"github.com/orchestra-fleet/orchestra/infra/natsserver"
	"github.com/orchestra-fleet/orchestra/infra/natstest"
	"github.com/orchestra-fleet/orchestra/infra/planbus"
	"github.com/orchestra-fleet/orchestra/infra/readmodel"
	"github.com/orchestra-fleet/orchestra/infra/routeexpr"
	"github.com/orchestra-fleet/orchestra/infra/secrets"
	"github.com/orchestra-fleet/orchestra/infra/sqlite"
	"github.com/orchestra-fleet/orchestra/projections"
	"github.com/orchestra-fleet/orchestra/services"
)

// env is the API on real parts: an embedded JetStream server, the JetStream
// event store, the write side, the model projection on a SQLite file kept
// up to date by a running projection runner, and the gateway's handler
// served over HTTP on a loopback port.
type env struct {
	URL    string
	NATS   string // the embedded server's client URL on loopback
	JS     jetstream.JetStream
	Svc    *services.Service
	DB     *sqlite.DB
	Runner *projections.Runner
	// Store is the event store, for fixtures no API call can write.
	Store *eventstore.Store
	// Results are the results read models (their own file).
	Results *readmodel.Model
	// Dispatcher plans every unit onto the EXEC stream through Bus.
	Dispatcher *projections.Dispatcher
	Bus        *planbus.Bus

	// Tokens, one per role; the admin one is the bootstrap token.
	admin, operator, viewer string

	// doc is the served OpenAPI document; every response to a documented
	// operation is checked against it.
	doc    *openAPI
	client *http.Client
}

// envOption changes the gateway configuration of an env.
type envOption func(*gateway.Config)

// withReadWait bounds how long reads wait for the read model.
func withReadWait(d time.Duration) envOption {
	return func(c *gateway.Config) { c.ReadWait = d }
}

// newEnv starts an env that stops when the test ends. Anything the API
// logs at error level fails the test.
func newEnv(t testing.TB, opts ...envOption) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	nats := natstest.StartAt(t, natsserver.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0"})
	reg, err := events.NewRegistry(events.Catalog()...)
	if err != nil {
		t.Fatal(err)
	}
	store, err := eventstore.New(ctx, eventstore.Config{JetStream: nats.JS, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	sealer, err := secrets.New(key)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := services.New(services.Config{Store: store, Registry: reg, Compiler: routeexpr.Compiler{}, Sealer: sealer})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Sync(ctx); err != nil {
		t.Fatal(err)
	}

	db, err := sqlite.Open(filepath.Join(t.TempDir(), "model.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := db.Close(); err != nil {
			t.Errorf("close the read model: %v", err)
		}
	})
	runner := projections.NewRunner(projections.NewModel(reg), db, store, slog.New(slog.DiscardHandler))
	planner := projections.NewPlanner(reg, routeexpr.Compiler{})
	bus, err := planbus.New(ctx, nats.JS)
	if err != nil {
		t.Fatal(err)
	}
	dispatcher := projections.NewDispatcher(reg, db, store, bus, projections.Renderer{Compiler: routeexpr.Compiler{}, Sealer: sealer})
	// The results read models in a file of their own, replayable, as
	// orchestra up keeps them.
	logger := slog.New(failOnError{t, slog.NewTextHandler(testWriter{t}, nil)})
	newResults := func(db *sqlite.DB) readmodel.Runner { return projections.NewResultsRunner(db, bus, logger) }
	results, err := readmodel.Open(projections.ResultsName, t.TempDir(), newResults, newResults, logger)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 4)
	go func() { done <- runner.Run(runCtx) }()
	go func() { done <- results.Run(runCtx) }()
	go func() { done <- dispatcher.Run(runCtx) }()
	go func() {
		done <- store.Follow(runCtx, 1, func(batch []events.Envelope) error {
			for _, e := range batch {
				if err := planner.Observe(e); err != nil {
					return err
				}
			}
			return nil
		})
	}()
	t.Cleanup(func() {
		stop()
		for range 4 {
			if err := <-done; !errors.Is(err, context.Canceled) {
				t.Errorf("a log follower stopped: %v", err)
			}
		}
	})

	ready := make(chan struct{})
	close(ready)
	cfg := gateway.Config{
		// Generous, so a loaded machine does not turn slow reads into 503s;
		// TestReadWaitIsBounded sets its own.
		ReadWait: 20 * time.Second,
		Ready:    ready,
		Metrics: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain; version=0.0.4")
			_, _ = io.WriteString(w, "# HELP orchestra_up 1 when up\norchestra_up 1\n")
		}),
		Service:     svc,
		Rows:        db,
		Model:       runner,
		Planner:     planner,
		Scripts:     bus,
		Logs:        readmodel.ResultsView{Model: results, Bus: bus},
		Feed:        bus,
		Replays:     readmodel.NewReplays(runCtx, logger, results),
		Idempotency: db,
		Logger:      slog.New(failOnError{t, slog.NewTextHandler(testWriter{t}, nil)}),
	}
	for _, o := range opts {
		o(&cfg)
	}
	h, err := gateway.NewHandler(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)

	e := &env{URL: srv.URL, NATS: nats.Server.ClientURL(), JS: nats.JS, Svc: svc, Store: store, DB: db, Results: results, Runner: runner, Dispatcher: dispatcher, Bus: bus,
		client: &http.Client{Timeout: time.Minute}}
	boot, err := svc.Bootstrap(ctx, nil)
	if err != nil || boot.Token == "" {
		t.Fatalf("bootstrap: %+v, %v", boot, err)
	}
	e.admin = boot.Token
	for _, r := range []struct {
		role string
		dst  *string
	}{{services.RoleOperator, &e.operator}, {services.RoleViewer, &e.viewer}} {
		tok, err := svc.CreateToken(ctx, services.System, r.role, r.role)
		if err != nil {
			t.Fatal(err)
		}
		*r.dst = tok.Token
	}

	r := e.call(t, "GET", "/v1/openapi.json", e.viewer, nil, nil)
	if r.Status != http.StatusOK {
		t.Fatalf("GET /v1/openapi.json = %d %s", r.Status, r.Raw)
	}
	if e.doc, err = parseOpenAPI(r.Raw); err != nil {
		t.Fatal(err)
	}
	return e
}

// token returns the env's token of role.
func (e *env) token(role string) string {
	switch role {
	case services.RoleAdmin:
		return e.admin
	case services.RoleOperator:
		return e.operator
	case services.RoleViewer:
		return e.viewer
	}
	panic("no token for role " + role)
}

// response is an HTTP answer; Body is the decoded JSON object, if any.
type response struct {
	Status int
	Header http.Header
	Body   map[string]any
	Raw    []byte
}

// do sends a request and returns its status, headers and decoded JSON body
// (nil when there is none). See call.
func (e *env) do(t testing.TB, method, path, token string, body any, headers map[string]string) (int, http.Header, map[string]any) {
	t.Helper()
	r := e.call(t, method, path, token, body, headers)
	return r.Status, r.Header, r.Body
}

// call sends a request to the API: path may hold a query; token, when not
// empty, goes in Authorization: Bearer; body is sent as is when it is a
// string or []byte (json.RawMessage), as JSON otherwise, not at all when
// nil. The response must not be a 500, a JSON one must decode, a problem
// must carry its status, and a response of a documented operation must be
// one of its documented responses and fit its schema.
func (e *env) call(t testing.TB, method, path, token string, body any, headers map[string]string) response {
	t.Helper()
	r, err := e.send(method, path, token, body, headers)
	if err != nil {
		t.Fatal(err)
	}
	for _, msg := range e.check(method, path, r) {
		t.Error(msg)
	}
	return r
}

// send is call without the checks, safe to use from any goroutine.
func (e *env) send(method, path, token string, body any, headers map[string]string) (response, error) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	case json.RawMessage:
		rd = bytes.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			return response{}, err
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, e.URL+path, rd)
	if err != nil {
		return response{}, err
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return response{}, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, fmt.Errorf("%s %s: reading the body: %w", method, path, err)
	}
	r := response{Status: resp.StatusCode, Header: resp.Header, Raw: raw}
	if ct := resp.Header.Get("Content-Type"); strings.HasPrefix(ct, "application/json") || strings.HasPrefix(ct, "application/problem+json") {
		if err := json.Unmarshal(raw, &r.Body); err != nil {
			return r, fmt.Errorf("%s %s = %d: the body is not a JSON object: %w\n%s", method, path, r.Status, err, raw)
		}
	}
	return r, nil
}

// check lists what is wrong with r as the answer to method and path.
func (e *env) check(method, path string, r response) []string {
	var errs []string
	fail := func(format string, args ...any) {
		errs = append(errs, fmt.Sprintf("%s %s = %d: ", method, path, r.Status)+fmt.Sprintf(format, args...))
	}
	if r.Status >= 500 && r.Status != http.StatusServiceUnavailable {
		fail("%s", r.Raw)
	}
	if ct := r.Header.Get("Content-Type"); r.Status >= 400 {
		if !strings.HasPrefix(ct, "application/problem+json") {
			fail("Content-Type %q, want application/problem+json", ct)
		} else if r.Body["status"] != float64(r.Status) {
			fail("the problem says status %v", r.Body["status"])
		}
	}
	if e.doc != nil {
		if op := e.doc.find(method, path); op != nil {
			for _, msg := range e.doc.checkResponse(op, r.Status, r.Header, r.Raw) {
				fail("%s\n%s", msg, r.Raw)
			}
		}
	}
	return errs
}

// want fails the test unless r has status; it returns r's body.
func (r response) want(t testing.TB, status int) map[string]any {
	t.Helper()
	if r.Status != status {
		t.Fatalf("status %d, want %d: %s", r.Status, status, r.Raw)
	}
	return r.Body
}

// lastSeq is the EVENTS stream's last sequence: it moves once per event
// written, so a test can tell whether a call wrote anything.
func (e *env) lastSeq(t testing.TB) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := e.JS.Stream(ctx, events.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

// The fixture set the OpenAPI examples are written against (see the
// document's info.description).
var fixtureObjects = []map[string]any{
	{"kind": "Server", "name": "web1", "method": "local", "address": "127.0.0.1"},
	{"kind": "Server", "name": "spare", "method": "local", "address": "127.0.0.1"},
	{"kind": "Backend", "name": "vhost", "type": "website", "actions": map[string]string{"save": "echo {{ .name }}", "reload": "echo reload {{ .name }}"}},
	{"kind": "Backend", "name": "spare", "type": "website", "actions": map[string]string{"save": "echo {{ .name }}"}},
	{"kind": "Route", "backend": "vhost", "server": "web1"},
	{"kind": "Resource", "type": "website", "name": "shop", "attrs": map[string]any{"domain": "shop.example.com"}},
	{"kind": "Site", "name": "shop", "services": []map[string]any{
		{"name": "db", "rank": 0, "servers": []string{"web1"}, "start": "echo start db", "stop": "echo stop db", "status": "echo db is up"},
		{"name": "web", "rank": 1, "servers": []string{"web1"}, "scale": 2, "start": "echo start web", "stop": "echo stop web",
			"commands": map[string]string{"flush": "echo flush"}},
	}},
	{"kind": "Site", "name": "spare", "services": []map[string]any{{"name": "app", "servers": []string{"web1"}, "start": "echo start app"}}},
}

// fixtureUnit and fixtureScript are the unit and the script the planner's
// records of which are fixtures, for the examples of GET /v1/units/{id},
// GET /v1/scripts/{id} and POST /v1/scripts/{id}/retry. A script's id is
// derived from its unit, server and backend.
var (
	fixtureUnit   = uuid.MustParse("0192f1e0-6b1a-7c3e-9d2f-5a4b3c2d1e0f")
	fixtureScript = events.ScriptID(fixtureUnit, "web1", "vhost")
	// fixtureRun is a start of site shop, requested and never started (the
	// env has no site runner), for GET /v1/runs/{id} and its cancel.
	fixtureRun = uuid.MustParse("0192f1e0-6b1a-7c3e-9d2f-5a4b3c2d1e20")
)

// spareToken is the fixture token, for the example of DELETE /v1/tokens/{name}.
const spareToken = "spare-token"

// resetFixtures brings the model back to exactly the fixture set, in one
// apply that saves every fixture object (changing back what a test changed)
// and deletes every other object; and brings the tokens back to the env's
// three and the spare one.
func (e *env) resetFixtures(t testing.TB) {
	t.Helper()
	keep := map[string]bool{}
	for _, f := range fixtureObjects {
		keep[objectName(f)] = true
	}
	objects := slices.Clone(fixtureObjects)
	for _, kind := range []string{"servers", "backends", "routes", "resources", "sites"} {
		for _, doc := range e.listAll(t, "/v1/"+kind, e.admin) {
			if keep[objectName(doc)] {
				continue
			}
			del := map[string]any{"kind": doc["kind"], "delete": true}
			for _, k := range []string{"name", "type", "backend", "server"} {
				if v, ok := doc[k]; ok {
					del[k] = v
				}
			}
			objects = append(objects, del)
		}
	}
	e.call(t, "POST", "/v1/apply", e.admin, map[string]any{"objects": objects}, nil).want(t, http.StatusOK)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The fixture run: appended once; nothing ends it, a cancel included.
	switch run, ok := e.Svc.ActiveRun("shop"); {
	case !ok:
		label := events.StepLabel("shop", "db", 0, events.CommandStart)
		req := &events.RunRequested{Run: fixtureRun, Site: "shop", Command: events.CommandStart, MaxFailures: -1,
			Phases: []events.RunPhase{{Rank: 0, Command: events.CommandStart, Steps: []events.RunStep{{
				Script: events.ScriptID(fixtureRun, "web1", label), Label: label, Service: "db", Server: "web1",
				Command: events.CommandStart, Text: "echo start db\n"}}}}}
		u, err := services.NewUnit(events.Meta{Actor: services.RoleOperator}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		agg := events.Aggregate{Type: events.AggSiteRun, ID: "shop"}
		u.Expect(agg, 0)
		if err := u.Add(agg, req); err != nil {
			t.Fatal(err)
		}
		if _, err := e.Store.Append(ctx, u); err != nil {
			t.Fatalf("append the fixture run: %v", err)
		}
		if err := e.Svc.Sync(ctx); err != nil {
			t.Fatal(err)
		}
	case run != fixtureRun:
		t.Fatalf("site shop is running %s, not the fixture run", run)
	}
	rec := &events.ScriptPlanned{ID: fixtureScript, Unit: fixtureUnit, Sequence: 1, Server: "web1", Backend: "vhost", State: events.StateReceived,
		Operations: []events.OperationRef{{Backend: "vhost", Action: "save", Type: "website", Name: "shop"}}}
	unit := &events.UnitPlanned{Unit: fixtureUnit, Sequence: 1, Operations: 1,
		Scripts: []events.ScriptSummary{{ID: fixtureScript, Server: "web1", Backend: "vhost", State: events.StateReceived}}}
	if err := e.Bus.Send(ctx, nil, []events.Result{rec, unit}); err != nil {
		t.Fatal(err)
	}
	// A start on web1, so that the server has a status.
	started := events.ScriptStarted{ID: fixtureScript, Unit: fixtureUnit, Server: "web1", Backend: "vhost", Attempt: 1}
	subject, err := events.ScriptSubject("web1", fixtureScript, started.ResultType())
	if err != nil {
		t.Fatal(err)
	}
	data, _ := json.Marshal(started)
	if _, err := e.JS.Publish(ctx, subject, data, jetstream.WithMsgID(subject)); err != nil {
		t.Fatal(err)
	}
	tokens := map[string]bool{}
	for _, tok := range e.listAll(t, "/v1/tokens", e.admin) {
		tokens[tok["name"].(string)] = true
	}
	for name := range maps.Keys(tokens) {
		if !slices.Contains([]string{"admin", services.RoleOperator, services.RoleViewer, spareToken}, name) {
			if _, err := e.Svc.RevokeToken(ctx, services.System, name); err != nil {
				t.Fatal(err)
			}
		}
	}
	if !tokens[spareToken] {
		if _, err := e.Svc.CreateToken(ctx, services.System, spareToken, services.RoleViewer); err != nil {
			t.Fatal(err)
		}
	}
}

// objectName is the name of an apply document's object: "Route
// vhost@web1", "Resource website/shop".
func objectName(doc map[string]any) string {
	s := func(k string) string { v, _ := doc[k].(string); return v }
	switch s("kind") {
	case services.KindRoute:
		return services.KindRoute + " " + services.RouteName(s("backend"), s("server"))
	case services.KindResource:
		return services.KindResource + " " + services.ResourceName(s("type"), s("name"))
	}
	return s("kind") + " " + s("name")
}

// listAll reads every page of a listing.
func (e *env) listAll(t testing.TB, path, token string) []map[string]any {
	t.Helper()
	var out []map[string]any
	after := ""
	for {
		p := path + "?limit=1000"
		if after != "" {
			p += "&after=" + url.QueryEscape(after)
		}
		page := e.call(t, "GET", p, token, nil, nil).want(t, http.StatusOK)
		items, _ := page["items"].([]any)
		for _, it := range items {
			out = append(out, it.(map[string]any))
		}
		next, _ := page["next"].(string)
		if next == "" {
			return out
		}
		after = next
	}
}

// testWriter sends log output to the test log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// failOnError fails the test on every record at error level: the API logs
// only failures it could not map to a client error.
type failOnError struct {
	t testing.TB
	slog.Handler
}

func (h failOnError) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelError {
		h.t.Errorf("the API logged an error: %s", r.Message)
	}
	return h.Handler.Handle(ctx, r)
}

func (h failOnError) WithAttrs(as []slog.Attr) slog.Handler {
	return failOnError{h.t, h.Handler.WithAttrs(as)}
}

func (h failOnError) WithGroup(name string) slog.Handler {
	return failOnError{h.t, h.Handler.WithGroup(name)}
}
