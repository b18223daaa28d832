package gateway

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/projections"
	"github.com/orchestra-fleet/orchestra/services"
)

// Logs is the results read models: script logs, units of work, servers'
// status and resources' history.
type Logs interface {
	projections.ResultsReader
	// CatchUp waits until the read models hold every result stored
	// before the call: a read after it sees what an apply waited for.
	CatchUp(ctx context.Context) error
}

// States a script log can be in, for ?state=.
var scriptStates = []string{events.StateReceived, events.StateStarted, events.StateSuccess, events.StateFailure,
	events.StateTimeout, events.StateError, events.StateAborted, events.StateRevoked, events.StateNothing}

// entries is one page of a listing of read-model records.
type entries[T any] struct {
	Items []T    `json:"items"`
	Next  string `json:"next,omitempty"`
}

// params returns r's query parameters, refusing any not in known: a
// misspelt filter must not silently select everything.
func params(r *http.Request, known ...string) (url.Values, error) {
	q := r.URL.Query()
	var unknown []string
	for k := range q {
		if !slices.Contains(known, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		name := unknown[0]
		if name == "" {
			name = "(empty name)" // ?=x
		}
		return nil, services.FieldErrorf(services.EBADREQUEST, name, "is not a parameter of %s; it takes %s",
			r.URL.Path, strings.Join(known, ", "))
	}
	return q, nil
}

// pageLimit is ?limit=, DefaultPageSize when absent.
func pageLimit(q url.Values) (int, error) {
	s := q.Get("limit")
	if s == "" {
		return DefaultPageSize, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > MaxPageSize {
		return 0, services.FieldErrorf(services.EBADREQUEST, "limit", "%q is not a number from 1 to %d", s, MaxPageSize)
	}
	return n, nil
}

// seqCursor encodes a listing's position: the sequence its next page
// starts below, and the index within that sequence's record after which
// it starts (history) or -1.
func seqCursor(seq uint64, index int) string {
	return base64.RawURLEncoding.EncodeToString(fmt.Appendf(nil, "s%d.%d", seq, index))
}

// parseSeqCursor decodes ?after=; zero when absent.
func parseSeqCursor(q url.Values) (projections.HistoryCursor, error) {
	c := q.Get("after")
	if c == "" {
		return projections.HistoryCursor{}, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err == nil && len(b) > 1 && b[0] == 's' {
		s, i, ok := strings.Cut(string(b[1:]), ".")
		seq, serr := strconv.ParseUint(s, 10, 64)
		idx, ierr := strconv.Atoi(i)
		if ok && serr == nil && ierr == nil && seq > 0 && seq <= math.MaxInt64 && idx >= -1 {
			return projections.HistoryCursor{Seq: seq, Index: idx}, nil
		}
	}
	return projections.HistoryCursor{}, services.FieldErrorf(services.EBADREQUEST, "after", "is not a cursor this API gave (the next of a previous page)")
}

// parseTime reads a time parameter: RFC 3339, or a duration back from now.
func parseTime(q url.Values, name string, now time.Time) (time.Time, error) {
	raw := q.Get(name)
	if raw == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, raw); err == nil {
		if t.Year() < 1700 || t.Year() > 2200 {
			return time.Time{}, services.FieldErrorf(services.EBADREQUEST, name, "%q is out of range (years 1700 to 2200)", raw)
		}
		return t, nil
	}
	if d, err := time.ParseDuration(raw); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, services.FieldErrorf(services.EBADREQUEST, name, "%q is neither an RFC 3339 time (2026-01-02T15:04:05Z) nor a duration back from now (90m)", raw)
}

// uuidParam reads an id parameter; uuid.Nil when absent.
func uuidParam(name, raw string) (uuid.UUID, error) {
	if raw == "" {
		return uuid.Nil, nil
	}
	id, err := uuid.Parse(raw)
	if err != nil {
		return uuid.Nil, services.FieldErrorf(services.EBADREQUEST, name, "%q is not a UUID", raw)
	}
	return id, nil
}

// catchUp waits, at most readWait, for the results read models to hold
// what RESULTS held when the request came.
func (a *api) catchUp(r *http.Request) error {
	ctx, cancel := context.WithTimeout(r.Context(), a.readWait)
	defer cancel()
	if err := a.logs.CatchUp(ctx); err != nil {
		if r.Context().Err() == nil && ctx.Err() != nil {
			return services.Errorf(services.EUNAVAILABLE, "the script logs did not catch up with the results within %s; try again", a.readWait)
		}
		return err
	}
	return nil
}

// scriptFilter reads the filters of GET /v1/scripts.
func (a *api) scriptFilter(r *http.Request) (projections.ScriptFilter, int, error) {
	var f projections.ScriptFilter
	q, err := params(r, "server", "backend", "state", "unit", "resource", "since", "until", "limit", "after")
	if err != nil {
		return f, 0, err
	}
	f.Server, f.Backend, f.State = q.Get("server"), q.Get("backend"), strings.ToUpper(q.Get("state"))
	if f.State != "" && !slices.Contains(scriptStates, f.State) {
		return f, 0, services.FieldErrorf(services.EBADREQUEST, "state", "%q is not a state; want one of %s", q.Get("state"), strings.Join(scriptStates, ", "))
	}
	if f.Unit, err = uuidParam("unit", q.Get("unit")); err != nil {
		return f, 0, err
	}
	if res := q.Get("resource"); res != "" {
		var ok bool
		f.Type, f.Name, ok = strings.Cut(res, "/")
		if f.Type == "" || ok && f.Name == "" {
			return f, 0, services.FieldErrorf(services.EBADREQUEST, "resource", "%q is not TYPE or TYPE/NAME", res)
		}
	}
	now := a.now()
	if f.Since, err = parseTime(q, "since", now); err != nil {
		return f, 0, err
	}
	if f.Until, err = parseTime(q, "until", now); err != nil {
		return f, 0, err
	}
	cur, err := parseSeqCursor(q)
	if err != nil {
		return f, 0, err
	}
	f.Before = cur.Seq
	limit, err := pageLimit(q)
	return f, limit, err
}

// listScripts lists script logs, newest first.
func (a *api) listScripts(w http.ResponseWriter, r *http.Request, _ services.Principal) error {
	f, limit, err := a.scriptFilter(r)
	if err != nil {
		return err
	}
	if err := a.catchUp(r); err != nil {
		return err
	}
	f.Limit = limit + 1
	list, err := a.logs.Scripts(r.Context(), f)
	if err != nil {
		return err
	}
	out := entries[json.RawMessage]{Items: make([]json.RawMessage, 0, len(list))}
	if len(list) > limit {
		list = list[:limit]
		out.Next = seqCursor(list[limit-1].Seq, -1)
	}
	for _, d := range list {
		out.Items = append(out.Items, d.Entry)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// script shows one script's log.
func (a *api) script(w http.ResponseWriter, r *http.Request, _ services.Principal) error {
	id, err := scriptID(r)
	if err != nil {
		return err
	}
	if err := a.catchUp(r); err != nil {
		return err
	}
	log, err := a.logs.Script(r.Context(), id)
	if err != nil {
		return scriptErr(id, err)
	}
	writeJSON(w, http.StatusOK, log)
	return nil
}

// unit shows a unit of work's roll-up.
func (a *api) unit(w http.ResponseWriter, r *http.Request, _ services.Principal) error {
	id, err := uuid.Parse(r.PathValue("id"))
	if err != nil {
		return services.FieldErrorf(services.EINVALID, "id", "%q is not a unit id (a UUID)", r.PathValue("id"))
	}
	if err := a.catchUp(r); err != nil {
		return err
	}
	u, err := a.logs.Unit(r.Context(), id)
	if errors.Is(err, projections.ErrNotFound) {
		return services.Errorf(services.ENOTFOUND, "unit %s was not planned, or its record has expired", id)
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, u)
	return nil
}

// serverStatus shows what the results say of a server.
func (a *api) serverStatus(w http.ResponseWriter, r *http.Request, _ services.Principal) error {
	name := r.PathValue("name")
	if err := a.catchUp(r); err != nil {
		return err
	}
	s, err := a.logs.ServerStatus(r.Context(), name)
	if errors.Is(err, projections.ErrNotFound) {
		return services.Errorf(services.ENOTFOUND, "no script has run on server %q yet", name)
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, s)
	return nil
}

// serverStatuses lists what the results say of every server they name.
func (a *api) serverStatuses(w http.ResponseWriter, r *http.Request, _ services.Principal) error {
	if _, err := params(r); err != nil {
		return err
	}
	if err := a.catchUp(r); err != nil {
		return err
	}
	list, err := a.logs.ServerStatuses(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, entries[projections.ServerStatus]{Items: list})
	return nil
}

// history lists the operations on a resource, newest first.
func (a *api) history(w http.ResponseWriter, r *http.Request, _ services.Principal) error {
	q, err := params(r, "limit", "after")
	if err != nil {
		return err
	}
	limit, err := pageLimit(q)
	if err != nil {
		return err
	}
	after, err := parseSeqCursor(q)
	if err != nil {
		return err
	}
	if err := a.catchUp(r); err != nil {
		return err
	}
	typ, name := r.PathValue("type"), r.PathValue("name")
	ops, err := a.logs.History(r.Context(), typ, name, after, limit+1)
	if err != nil {
		return err
	}
	if len(ops) == 0 && after.Seq == 0 {
		return services.Errorf(services.ENOTFOUND, "no operation on %s/%s has been recorded, or the records have expired", typ, name)
	}
	out := entries[projections.ResourceOp]{Items: ops}
	if out.Items == nil {
		out.Items = []projections.ResourceOp{}
	}
	if len(ops) > limit {
		out.Items = ops[:limit]
		out.Next = seqCursor(ops[limit-1].Sequence, ops[limit-1].Index)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}
