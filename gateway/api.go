package gateway

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/projections"
	"github.com/orchestra-fleet/orchestra/services"
)

// Limits of the API.
const (
	MaxBody          = 8 << 20 // bytes of one request body
	DefaultPageSize  = 100
	MaxPageSize      = 1000
	DefaultReadWait  = 5 * time.Second
	HeaderSequence   = "Orchestra-Sequence"     // on writes: where the change landed
	HeaderMinSeq     = "Orchestra-Min-Sequence" // on reads: wait for the read model to get there
	HeaderIdempotent = "Idempotency-Key"
)

// Reader is what the API reads the model from.
type Reader interface {
	Get(ctx context.Context, table, key string) (projections.Row, error)
	List(ctx context.Context, q projections.Query) ([]projections.Row, error)
}

// Previewer plans a change that is not in the log (a dry run) once its
// model has reached seq.
type Previewer interface {
	Preview(ctx context.Context, seq uint64, unit []events.Payload) (projections.UnitPlan, error)
}

// Waiter tells how far a read model is and waits for it to get further.
type Waiter interface {
	WaitFor(ctx context.Context, seq uint64) error
	Seq() uint64
}

// api serves /v1.
type api struct {
	svc      *services.Service
	rows     Reader
	model    Waiter
	planner  Previewer
	records  PlanRecords
	logs     Logs
	feed     Feed
	replays  Replays
	results  Results
	wait     time.Duration
	idem     IdempotencyStore
	now      func() time.Time
	busy     sync.Map // scope + key → struct{}: idempotent requests running now
	log      *slog.Logger
	readWait time.Duration
}

// Route is one endpoint of the API: its method and path pattern, and the
// weakest role that may call it.
type Route struct {
	Method, Path, Role string
	handle             func(a *api, w http.ResponseWriter, r *http.Request, p services.Principal) error
}

// kindEndpoint is the set of endpoints of one model kind.
type kindEndpoint struct {
	kind, table, path, role string
}

var kindEndpoints = []kindEndpoint{
	{services.KindServer, projections.TableServers, "/v1/servers", services.RoleAdmin},
	{services.KindBackend, projections.TableBackends, "/v1/backends", services.RoleAdmin},
	{services.KindRoute, projections.TableRoutes, "/v1/routes", services.RoleAdmin},
	{services.KindSite, projections.TableSites, "/v1/sites", services.RoleAdmin},
}

// Routes lists every endpoint of /v1; the OpenAPI document describes exactly
// these (a test checks both ways).
func Routes() []Route {
	var rs []Route
	for _, k := range kindEndpoints {
		name := func(r *http.Request) string { return r.PathValue("name") }
		rs = append(rs,
			Route{"GET", k.path, services.RoleViewer, k.list(func(*http.Request) string { return "" })},
			Route{"POST", k.path, k.role, k.create(func(*http.Request) string { return "" })},
			Route{"GET", k.path + "/{name}", services.RoleViewer, k.get(name)},
			Route{"PUT", k.path + "/{name}", k.role, k.put(name)},
			Route{"DELETE", k.path + "/{name}", k.role, k.delete(name)},
		)
	}
	res := kindEndpoint{services.KindResource, projections.TableResources, "/v1/resources", services.RoleOperator}
	typ := func(r *http.Request) string { return r.PathValue("type") }
	resName := func(r *http.Request) string { return services.ResourceName(r.PathValue("type"), r.PathValue("name")) }
	rs = append(rs,
		Route{"GET", "/v1/resources", services.RoleViewer, res.list(func(r *http.Request) string { return r.URL.Query().Get("type") })},
		Route{"GET", "/v1/resources/{type}", services.RoleViewer, res.list(typ)},
		Route{"POST", "/v1/resources/{type}", res.role, res.create(typ)},
		Route{"GET", "/v1/resources/{type}/{name}", services.RoleViewer, res.get(resName)},
		Route{"PUT", "/v1/resources/{type}/{name}", res.role, res.put(resName)},
		Route{"DELETE", "/v1/resources/{type}/{name}", res.role, res.delete(resName)},
		Route{"POST", "/v1/resources/{type}/{name}/actions/{action}", services.RoleOperator, (*api).action},
		Route{"POST", "/v1/servers/{name}/sync", services.RoleOperator, (*api).sync},
		Route{"GET", "/v1/servers/{name}/status", services.RoleViewer, (*api).serverStatus},
		Route{"GET", "/v1/server-status", services.RoleViewer, (*api).serverStatuses},
		Route{"GET", "/v1/resources/{type}/{name}/history", services.RoleViewer, (*api).history},
		Route{"GET", "/v1/scripts", services.RoleViewer, (*api).listScripts},
		Route{"GET", "/v1/scripts/{id}", services.RoleViewer, (*api).script},
		Route{"GET", "/v1/units/{id}", services.RoleViewer, (*api).unit},
		Route{"GET", "/v1/stream", services.RoleViewer, (*api).stream},
		Route{"POST", "/v1/replay", services.RoleAdmin, (*api).startReplay},
		Route{"GET", "/v1/replay", services.RoleViewer, (*api).replayStatus},
		Route{"POST", "/v1/scripts/{id}/retry", services.RoleOperator, (*api).retry},
		Route{"POST", "/v1/apply", services.RoleOperator, (*api).apply},
		Route{"POST", "/v1/plan", services.RoleOperator, (*api).plan},
		Route{"GET", "/v1/tokens", services.RoleAdmin, (*api).listTokens},
		Route{"POST", "/v1/tokens", services.RoleAdmin, (*api).createToken},
		Route{"DELETE", "/v1/tokens/{name}", services.RoleAdmin, (*api).revokeToken},
		Route{"POST", "/v1/sites/{name}/commands", services.RoleOperator, (*api).siteCommand},
		Route{"GET", "/v1/sites/{name}/state", services.RoleViewer, (*api).siteState},
		Route{"GET", "/v1/runs", services.RoleViewer, (*api).listRuns},
		Route{"GET", "/v1/runs/{id}", services.RoleViewer, (*api).run},
		Route{"POST", "/v1/runs/{id}/cancel", services.RoleOperator, (*api).cancelRun},
		Route{"GET", "/v1/openapi.json", services.RoleViewer, (*api).openAPI},
	)
	return rs
}

// serve wraps a route's handler: authenticate, authorize, run, map errors.
func (a *api) serve(rt Route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, err := a.authenticate(r)
		if err == nil && !p.Can(rt.Role) {
			err = services.Errorf(services.EFORBIDDEN, "%s %s needs the %s role; this token (%s) is %s", rt.Method, rt.Path, rt.Role, p.Name, p.Role)
		}
		if err == nil {
			r.Body = http.MaxBytesReader(w, r.Body, MaxBody)
			if r.Method != http.MethodGet && r.Header.Get(HeaderIdempotent) != "" {
				err = a.idempotent(w, r, p, func(w http.ResponseWriter) error { return rt.handle(a, w, r, p) })
			} else {
				err = rt.handle(a, w, r, p)
			}
		}
		if err != nil {
			a.writeError(w, r, err)
		}
	})
}

func (a *api) authenticate(r *http.Request) (services.Principal, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return services.Principal{}, services.Errorf(services.EUNAUTHORIZED, "no token: send Authorization: Bearer <token> (the CLI reads ORCHESTRA_TOKEN)")
	}
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		return services.Principal{}, services.Errorf(services.EUNAUTHORIZED, "the Authorization header must be \"Bearer <token>\"")
	}
	return a.svc.Authenticate(strings.TrimSpace(tok))
}

// statuses maps the error vocabulary to HTTP, in one place.
var statuses = map[string]int{
	services.EINVALID:      http.StatusUnprocessableEntity,
	services.EBADREQUEST:   http.StatusBadRequest,
	services.ECONFLICT:     http.StatusConflict,
	services.ENOTFOUND:     http.StatusNotFound,
	services.EUNAUTHORIZED: http.StatusUnauthorized,
	services.EFORBIDDEN:    http.StatusForbidden,
	services.ETOOLARGE:     http.StatusRequestEntityTooLarge,
	services.EUNAVAILABLE:  http.StatusServiceUnavailable,
	services.EINTERNAL:     http.StatusInternalServerError,
}

var titles = map[string]string{
	services.EINVALID:      "Invalid input",
	services.EBADREQUEST:   "Bad request",
	services.ECONFLICT:     "Conflict",
	services.ENOTFOUND:     "Not found",
	services.EUNAUTHORIZED: "Unauthorized",
	services.EFORBIDDEN:    "Forbidden",
	services.ETOOLARGE:     "Too large",
	services.EUNAVAILABLE:  "Unavailable",
	services.EINTERNAL:     "Internal error",
}

// writeError answers with the problem document for err. Internal errors
// are logged and not shown.
func (a *api) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		err = services.Errorf(services.ETOOLARGE, "the request body is over %d bytes", tooLarge.Limit)
	}
	code := services.ErrorCode(err)
	detail := err.Error()
	fieldName := ""
	var e *services.Error
	if errors.As(err, &e) {
		fieldName, detail = e.Field, e.Message
	}
	if code == services.EINTERNAL {
		a.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		detail = "an internal error occurred; the server log has the details"
	}
	if code == services.EUNAUTHORIZED {
		w.Header().Set("WWW-Authenticate", `Bearer realm="orchestra"`)
	}
	if code == services.EUNAVAILABLE {
		w.Header().Set("Retry-After", "1")
	}
	status := statuses[code]
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(problem{
		Type: "urn:orchestra:problem:" + code, Title: titles[code], Status: status, Detail: detail, Field: fieldName,
	})
}

// readBody reads a request body; an empty one is an error.
func readBody(r *http.Request) ([]byte, error) {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, err
		}
		return nil, services.Errorf(services.EINVALID, "reading the body: %v", err)
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, services.Errorf(services.EINVALID, "the body is empty; send a JSON document")
	}
	return b, nil
}

// condition reads If-Match / If-None-Match. A version ETag is "<seq>".
func condition(r *http.Request) (services.Condition, error) {
	var c services.Condition
	if m := strings.TrimSpace(r.Header.Get("If-Match")); m != "" {
		if m == "*" {
			c.MustExist = true
		} else {
			v, err := strconv.ParseUint(strings.Trim(strings.TrimPrefix(m, "W/"), `"`), 10, 64)
			if err != nil || v == 0 {
				return c, services.FieldErrorf(services.EINVALID, "If-Match", "%q is not an ETag this API gave (a quoted version such as \"42\")", m)
			}
			c.Version = v
		}
	}
	if m := strings.TrimSpace(r.Header.Get("If-None-Match")); m != "" {
		if m != "*" {
			return c, services.FieldErrorf(services.EINVALID, "If-None-Match", "only * is supported on writes")
		}
		c.MustNotBe = true
	}
	return c, nil
}

func etag(version uint64) string { return `"` + strconv.FormatUint(version, 10) + `"` }

// writeResult answers a single-object write.
func writeResult(w http.ResponseWriter, res services.ApplyResult, location string) {
	o := res.Objects[0]
	w.Header().Set(HeaderSequence, strconv.FormatUint(res.Sequence, 10))
	status := http.StatusOK
	if o.Version != 0 {
		w.Header().Set("ETag", etag(o.Version))
	}
	if o.Result == services.Created {
		status = http.StatusCreated
		w.Header().Set("Location", location)
	}
	writeJSON(w, status, struct {
		services.ObjectResult
		Unit     string `json:"unit,omitempty"`
		Sequence uint64 `json:"sequence"`
	}{o, res.Unit, res.Sequence})
}

// decode reads a single-object body of k's kind.
func (k kindEndpoint) decode(r *http.Request) (services.Object, error) {
	body, err := readBody(r)
	if err != nil {
		return services.Object{}, err
	}
	return services.DecodeSpec(k.kind, body)
}

func (k kindEndpoint) create(group func(*http.Request) string) func(*api, http.ResponseWriter, *http.Request, services.Principal) error {
	return func(a *api, w http.ResponseWriter, r *http.Request, p services.Principal) error {
		o, err := k.decode(r)
		if err != nil {
			return err
		}
		if g := group(r); g != "" {
			if err := o.Identify(services.ResourceName(g, o.Resource.Name)); err != nil {
				return err
			}
		}
		o.Cond.MustNotBe = true
		return a.write(w, r, p, o)
	}
}

func (k kindEndpoint) put(name func(*http.Request) string) func(*api, http.ResponseWriter, *http.Request, services.Principal) error {
	return func(a *api, w http.ResponseWriter, r *http.Request, p services.Principal) error {
		o, err := k.decode(r)
		if err != nil {
			return err
		}
		if err := o.Identify(name(r)); err != nil {
			return err
		}
		cond, err := condition(r)
		if err != nil {
			return err
		}
		if cond.Version != 0 {
			if o.Cond.Version != 0 && o.Cond.Version != cond.Version {
				return services.FieldErrorf(services.EINVALID, "version", "is %d, but If-Match says %d", o.Cond.Version, cond.Version)
			}
			o.Cond.Version = cond.Version
		}
		o.Cond.MustExist, o.Cond.MustNotBe = cond.MustExist, cond.MustNotBe
		return a.write(w, r, p, o)
	}
}

func (k kindEndpoint) delete(name func(*http.Request) string) func(*api, http.ResponseWriter, *http.Request, services.Principal) error {
	return func(a *api, w http.ResponseWriter, r *http.Request, p services.Principal) error {
		o, err := services.Named(k.kind, name(r))
		if err != nil {
			return err
		}
		if o.Cond, err = condition(r); err != nil {
			return err
		}
		o.Delete, o.Cond.MustExist = true, true
		return a.write(w, r, p, o)
	}
}

// write applies one object as a unit of work and answers with its result.
func (a *api) write(w http.ResponseWriter, r *http.Request, p services.Principal, o services.Object) error {
	res, err := a.svc.Apply(r.Context(), p, services.ApplyRequest{
		Objects: []services.Object{o}, Single: true, CorrelationID: correlation(r),
	})
	if err != nil {
		return err
	}
	writeResult(w, res, objectPath(res.Objects[0]))
	return nil
}

// objectPath is the URL path of the object o names: where Location points
// after a create.
func objectPath(o services.ObjectResult) string {
	base := "/v1/resources"
	for _, k := range kindEndpoints {
		if k.kind == o.Kind {
			base = k.path
		}
	}
	segs := strings.Split(o.Name, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return base + "/" + strings.Join(segs, "/")
}

// decodeApply reads the body of POST /v1/apply and /v1/plan.
func decodeApply(r *http.Request) (services.ApplyRequest, error) {
	body, err := readBody(r)
	if err != nil {
		return services.ApplyRequest{}, err
	}
	req, err := services.DecodeApply(body)
	req.CorrelationID = correlation(r)
	return req, err
}

func (a *api) apply(w http.ResponseWriter, r *http.Request, p services.Principal) error {
	req, err := decodeApply(r)
	if err != nil {
		return err
	}
	wait, err := a.applyWait(r)
	if err != nil {
		return err
	}
	res, err := a.svc.Apply(r.Context(), p, req)
	if err != nil {
		return err
	}
	out := applyResult{ApplyResult: res}
	if err := a.await(r.Context(), &out, wait); err != nil {
		a.log.Warn("apply: waiting for the scripts failed", "unit", res.Unit, "err", err)
	}
	w.Header().Set(HeaderSequence, strconv.FormatUint(res.Sequence, 10))
	writeJSON(w, http.StatusOK, out)
	return nil
}

// planResult is a dry run: what each object would become, and what would
// run where.
type planResult struct {
	Objects []services.ObjectResult `json:"objects"`
	projections.UnitPlan
}

// plan answers what an apply of the body would run where, appending
// nothing. Secrets in the scripts are masked.
func (a *api) plan(w http.ResponseWriter, r *http.Request, p services.Principal) error {
	req, err := decodeApply(r)
	if err != nil {
		return err
	}
	res, unit, err := a.svc.Preview(r.Context(), p, req)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.readWait)
	defer cancel()
	up, err := a.planner.Preview(ctx, res.Sequence, unit)
	if err != nil {
		return services.Errorf(services.EUNAVAILABLE, "the planner has not caught up with sequence %d within %s; retry", res.Sequence, a.readWait)
	}
	if up.Servers == nil {
		up.Servers = []projections.ServerPlan{}
	}
	if up.Dropped == nil {
		up.Dropped = []projections.Dropped{}
	}
	writeJSON(w, http.StatusOK, planResult{Objects: res.Objects, UnitPlan: up})
	return nil
}

// correlation is the caller's correlation id, when it is a usable one.
func correlation(r *http.Request) string {
	id := r.Header.Get("X-Correlation-Id")
	if len(id) > 128 || strings.ContainsFunc(id, func(c rune) bool { return c < '!' || c > '~' }) {
		return ""
	}
	return id
}

// awaitRead waits, bounded, until the read model has every change the
// caller asked to see: the sequence in ?sequence= or Orchestra-Min-Sequence,
// or by default every change this process has written or seen.
func (a *api) awaitRead(r *http.Request) error {
	want := a.svc.Seq()
	raw := r.URL.Query().Get("sequence")
	if raw == "" {
		raw = r.Header.Get(HeaderMinSeq)
	}
	if raw != "" {
		v, err := strconv.ParseUint(raw, 10, 64)
		if err != nil {
			return services.FieldErrorf(services.EBADREQUEST, "sequence", "%q is not a stream sequence", raw)
		}
		want = v
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.readWait)
	defer cancel()
	if err := a.model.WaitFor(ctx, want); err != nil {
		return services.Errorf(services.EUNAVAILABLE, "the read model is at sequence %d and did not reach %d within %s; retry", a.model.Seq(), want, a.readWait)
	}
	return nil
}

func (k kindEndpoint) get(name func(*http.Request) string) func(*api, http.ResponseWriter, *http.Request, services.Principal) error {
	return func(a *api, w http.ResponseWriter, r *http.Request, p services.Principal) error {
		return a.getRow(w, r, k.table, k.kind, name(r))
	}
}

func (a *api) getRow(w http.ResponseWriter, r *http.Request, table, kind, key string) error {
	if err := a.awaitRead(r); err != nil {
		return err
	}
	row, err := a.rows.Get(r.Context(), table, key)
	if errors.Is(err, projections.ErrNotFound) {
		return services.Errorf(services.ENOTFOUND, "%s %q does not exist", kind, key)
	}
	if err != nil {
		return err
	}
	w.Header().Set("ETag", etag(row.Version))
	w.Header().Set("Content-Type", "application/json")
	_, err = w.Write(append(row.Doc, '\n'))
	return err
}

// page is one page of a listing; Next is the cursor of the next page, empty
// on the last.
type page struct {
	Items []json.RawMessage `json:"items"`
	Next  string            `json:"next,omitempty"`
}

func (k kindEndpoint) list(group func(*http.Request) string) func(*api, http.ResponseWriter, *http.Request, services.Principal) error {
	return func(a *api, w http.ResponseWriter, r *http.Request, p services.Principal) error {
		return a.listRows(w, r, k.table, group(r))
	}
}

func (a *api) listRows(w http.ResponseWriter, r *http.Request, table, group string) error {
	q := r.URL.Query()
	limit, err := pageLimit(q)
	if err != nil {
		return err
	}
	after := ""
	if c := q.Get("after"); c != "" {
		b, err := base64.RawURLEncoding.DecodeString(c)
		if err != nil {
			return services.FieldErrorf(services.EBADREQUEST, "after", "is not a cursor this API gave")
		}
		after = string(b)
	}
	if err := a.awaitRead(r); err != nil {
		return err
	}
	rows, err := a.rows.List(r.Context(), projections.Query{Table: table, Group: group, After: after, Limit: limit + 1})
	if err != nil {
		return err
	}
	out := page{Items: make([]json.RawMessage, 0, len(rows))}
	if len(rows) > limit {
		rows = rows[:limit]
		out.Next = base64.RawURLEncoding.EncodeToString([]byte(rows[limit-1].Key))
	}
	for _, row := range rows {
		out.Items = append(out.Items, row.Doc)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (a *api) listTokens(w http.ResponseWriter, r *http.Request, _ services.Principal) error {
	return a.listRows(w, r, projections.TableTokens, "")
}

func (a *api) createToken(w http.ResponseWriter, r *http.Request, p services.Principal) error {
	body, err := readBody(r)
	if err != nil {
		return err
	}
	var req struct {
		Name string `json:"name"`
		Role string `json:"role"`
	}
	if err := services.DecodeJSON(body, &req); err != nil {
		return err
	}
	res, err := a.svc.CreateToken(r.Context(), p, req.Name, req.Role)
	if err != nil {
		return err
	}
	w.Header().Set(HeaderSequence, strconv.FormatUint(res.Sequence, 10))
	w.Header().Set("Location", "/v1/tokens/"+url.PathEscape(res.Name))
	writeJSON(w, http.StatusCreated, res)
	return nil
}

func (a *api) revokeToken(w http.ResponseWriter, r *http.Request, p services.Principal) error {
	seq, err := a.svc.RevokeToken(r.Context(), p, r.PathValue("name"))
	if err != nil {
		return err
	}
	w.Header().Set(HeaderSequence, strconv.FormatUint(seq, 10))
	writeJSON(w, http.StatusOK, map[string]any{"name": r.PathValue("name"), "result": "revoked", "sequence": seq})
	return nil
}

func (a *api) openAPI(w http.ResponseWriter, _ *http.Request, _ services.Principal) error {
	w.Header().Set("Content-Type", "application/json")
	_, err := w.Write(openAPIDocument)
	return err
}
