package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/projections"
	"github.com/orchestra-fleet/orchestra/services"
)

// GET /v1/stream: RESULTS as Server-Sent Events — the planner's records
// and every start, chunk of output and end of a script — live, filtered,
// resumable. Each event's id is its RESULTS sequence: a client that
// reconnects with Last-Event-ID gets what follows it, once and in order.
// When retention has removed some of what it asks for, a `gap` event says
// which sequences are gone before the stream goes on.

// Feed reads RESULTS in order.
type Feed interface {
	// Bounds are the first and last sequences RESULTS holds; first is
	// last+1 when it is empty.
	Bounds(ctx context.Context) (first, last uint64, err error)
	// Tail calls fn with each message under q.Subjects from q.From on, in
	// order, until ctx ends or fn fails; with q.Follow false it stops
	// after the last message stored when it was called.
	Tail(ctx context.Context, q TailQuery, fn func(TailItem) error) error
}

// TailQuery says where a Tail starts and what it reads.
type TailQuery struct {
	Subjects []string // filters; none: every result
	From     uint64   // the first sequence; 0: Since
	Since    time.Time
	Follow   bool
}

// TailItem is one message of a Tail, decoded; Err says why it could not
// be.
type TailItem struct {
	projections.ResultEnvelope
}

// ResultKinds are the kinds of results, for ?kind=.
var ResultKinds = []string{"UnitPlanned", "ScriptPlanned", "ScriptStarted", "ScriptOutput", "ScriptFinished"}

// StreamEvent is the data of one event of GET /v1/stream.
type StreamEvent struct {
	Seq     uint64        `json:"seq"`
	Time    time.Time     `json:"time"`
	Kind    string        `json:"kind"`
	Server  string        `json:"server,omitempty"`
	Script  uuid.UUID     `json:"script,omitzero"`
	Unit    uuid.UUID     `json:"unit,omitzero"`
	Backend string        `json:"backend,omitempty"`
	Result  events.Result `json:"result"`
}

// StreamGap is the data of a gap event: sequences From to To are gone.
type StreamGap struct {
	From uint64 `json:"from"`
	To   uint64 `json:"to"`
}

// maxKnownScripts bounds what a stream remembers of scripts.
const maxKnownScripts = 10000

// keepAlive is how often an idle stream sends a comment, so that proxies
// and clients see it is alive.
const keepAlive = 15 * time.Second

// streamQuery is a parsed GET /v1/stream.
type streamQuery struct {
	kinds  []string
	server string
	unit   uuid.UUID
	after  uint64 // Last-Event-ID; resume after it
	resume bool
	idName string // where after came from: the header or ?last_event_id=
	since  time.Time
	follow bool
}

func (a *api) parseStream(r *http.Request) (streamQuery, error) {
	var s streamQuery
	q, err := params(r, "kind", "server", "unit", "since", "follow", "last_event_id")
	if err != nil {
		return s, err
	}
	for _, k := range q["kind"] {
		for k := range strings.SplitSeq(k, ",") {
			if !slices.Contains(ResultKinds, k) {
				return s, services.FieldErrorf(services.EBADREQUEST, "kind", "%q is not a kind; want one or more of %s", k, strings.Join(ResultKinds, ", "))
			}
			if !slices.Contains(s.kinds, k) {
				s.kinds = append(s.kinds, k)
			}
		}
	}
	if s.server = q.Get("server"); s.server != "" {
		if _, err := events.Token(s.server); err != nil {
			return s, services.FieldErrorf(services.EBADREQUEST, "server", "%q is not a server name", s.server)
		}
	}
	if s.server != "" && slices.Contains(s.kinds, "UnitPlanned") {
		return s, services.FieldErrorf(services.EBADREQUEST, "kind", "UnitPlanned records are about no one server: with server=, ask for script results")
	}
	if s.unit, err = uuidParam("unit", q.Get("unit")); err != nil {
		return s, err
	}
	if s.since, err = parseTime(q, "since", a.now()); err != nil {
		return s, err
	}
	s.follow = true
	if f := q.Get("follow"); f != "" {
		if s.follow, err = strconv.ParseBool(f); err != nil {
			return s, services.FieldErrorf(services.EBADREQUEST, "follow", "%q is not true or false", f)
		}
	}
	name, id := "Last-Event-ID", r.Header.Get("Last-Event-ID")
	if id == "" && q.Has("last_event_id") {
		name, id = "last_event_id", q.Get("last_event_id")
	}
	if id != "" {
		if s.after, err = strconv.ParseUint(id, 10, 64); err != nil {
			return s, services.FieldErrorf(services.EBADREQUEST, name, "%q is not an event id this stream gave (a sequence)", id)
		}
		s.resume, s.idName = true, name
	}
	return s, nil
}

// subjects are the RESULTS filters of s: the server and kinds narrow the
// subjects; the unit is filtered here.
func (s streamQuery) subjects() ([]string, error) {
	server := "*"
	if s.server != "" {
		tok, err := events.Token(s.server)
		if err != nil {
			return nil, err
		}
		server = tok
	}
	kinds := s.kinds
	if len(kinds) == 0 {
		kinds = []string{">"}
	}
	var out []string
	for _, k := range kinds {
		switch {
		case k == "UnitPlanned" && s.server == "":
			out = append(out, "orchestra.unit.*.UnitPlanned")
		case k == "UnitPlanned":
			// unit records are about no one server
		case k == ">" && s.server == "":
			out = append(out, events.SubjectResults, events.SubjectUnits)
		default:
			out = append(out, "orchestra.res."+server+".*."+k)
		}
	}
	return out, nil
}

func (a *api) stream(w http.ResponseWriter, r *http.Request, _ services.Principal) error {
	s, err := a.parseStream(r)
	if err != nil {
		return err
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		return errors.New("stream: the response writer cannot flush")
	}
	ctx := r.Context()
	first, last, err := a.feed.Bounds(ctx)
	if err != nil {
		return err
	}
	if s.resume && s.after > last {
		return services.FieldErrorf(services.EBADREQUEST, s.idName, "%d is beyond the last event, %d: it is not an id this stream gave", s.after, last)
	}
	subjects, err := s.subjects()
	if err != nil {
		return err
	}
	q := TailQuery{Subjects: subjects, Follow: s.follow}
	switch {
	case s.resume:
		q.From = s.after + 1
	case !s.since.IsZero():
		q.Since = s.since
	default:
		q.From = last + 1 // what comes from now on
	}
	f := newUnitFilter(ctx, a.logs, s.unit)

	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	if q.From > 0 && q.From < first {
		// Retention removed what the client asks for: say so.
		if err := writeEvent(w, 0, "gap", StreamGap{From: q.From, To: first - 1}); err != nil {
			return nil
		}
		q.From = first
	}
	if q.From > 1 {
		// Where the stream starts, as an id of its own: a client that
		// reconnects before any event resumes from here, not from "now".
		if _, err := fmt.Fprintf(w, "id: %d\n\n", q.From-1); err != nil {
			return nil
		}
	}
	flusher.Flush()

	writes := make(chan error, 1)
	tick := time.NewTicker(keepAlive)
	defer tick.Stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	items := make(chan TailItem, 64)
	go func() {
		writes <- a.feed.Tail(ctx, q, func(it TailItem) error {
			select {
			case items <- it:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
		close(items)
	}()
	known := map[uuid.UUID]scriptInfo{}
	unflushed := false
	for {
		select {
		case it, ok := <-items:
			if !ok {
				if err := <-writes; err != nil && ctx.Err() == nil {
					a.log.Warn("stream: reading results failed", "err", err)
				}
				return nil
			}
			if ev, keep := describe(ctx, it, known, a.logs); keep && f.keep(ev) {
				if err := writeEvent(w, it.Sequence, ev.Kind, ev); err != nil {
					return nil // the client went away
				}
				unflushed = true
			}
			if unflushed && len(items) == 0 {
				flusher.Flush()
				unflushed = false
			}
		case <-tick.C:
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
				return nil
			}
			flusher.Flush()
		case <-ctx.Done():
			return nil
		}
	}
}

// writeEvent writes one event; id 0 writes none (a gap is not a position).
func writeEvent(w http.ResponseWriter, id uint64, kind string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	var b strings.Builder
	if id > 0 {
		fmt.Fprintf(&b, "id: %d\n", id)
	}
	fmt.Fprintf(&b, "event: %s\ndata: %s\n\n", kind, data)
	_, err = fmt.Fprint(w, b.String())
	return err
}

// scriptInfo is what a stream has learnt of a script.
type scriptInfo struct {
	unit    uuid.UUID
	backend string
}

// describe turns a message into an event, with the script's server, unit
// and backend; known caches what earlier messages said of them. A message
// that is not a result is dropped (the read models report it).
func describe(ctx context.Context, it TailItem, known map[uuid.UUID]scriptInfo, logs Logs) (StreamEvent, bool) {
	ev := StreamEvent{Seq: it.Sequence, Time: it.Time, Result: it.Result}
	if it.Err != nil {
		return ev, false
	}
	ev.Kind = it.Subject[strings.LastIndexByte(it.Subject, '.')+1:]
	if tok, ok := strings.CutPrefix(it.Subject, "orchestra.res."); ok {
		tok, _, _ = strings.Cut(tok, ".")
		ev.Server, _ = events.ParseToken(tok)
	}
	switch r := it.Result.(type) {
	case *events.UnitPlanned:
		ev.Unit = r.Unit
	case *events.ScriptPlanned:
		ev.Script, ev.Unit, ev.Backend = r.ID, r.Unit, r.Backend
	case *events.ScriptStarted:
		ev.Script, ev.Unit, ev.Backend = r.ID, r.Unit, r.Backend
	case *events.ScriptFinished:
		ev.Script, ev.Unit, ev.Backend = r.ID, r.Unit, r.Backend
	case *events.ScriptOutput:
		ev.Script = r.ID
		if s, ok := known[r.ID]; ok {
			ev.Backend, ev.Unit = s.backend, s.unit
		} else if l, err := logs.Script(ctx, r.ID); err == nil {
			ev.Backend, ev.Unit = l.Backend, l.Unit
		}
	}
	if ev.Script != uuid.Nil && ev.Backend != "" {
		if len(known) >= maxKnownScripts {
			clear(known)
		}
		known[ev.Script] = scriptInfo{ev.Unit, ev.Backend}
	}
	return ev, true
}

// unitFilter keeps the events of one unit: its record, and the results of
// its scripts (output chunks do not name their unit, so the scripts are
// learnt from the unit's record and from what names the unit).
type unitFilter struct {
	unit    uuid.UUID
	scripts map[uuid.UUID]bool
}

func newUnitFilter(ctx context.Context, logs Logs, unit uuid.UUID) *unitFilter {
	f := &unitFilter{unit: unit, scripts: map[uuid.UUID]bool{}}
	if unit == uuid.Nil {
		return f
	}
	if u, err := logs.Unit(ctx, unit); err == nil {
		for _, s := range u.Scripts {
			f.scripts[s.ID] = true
		}
	}
	return f
}

func (f *unitFilter) keep(ev StreamEvent) bool {
	if f.unit == uuid.Nil {
		return true
	}
	if ev.Unit == f.unit {
		if ev.Script != uuid.Nil {
			f.scripts[ev.Script] = true
		}
		if u, ok := ev.Result.(*events.UnitPlanned); ok {
			for _, s := range u.Scripts {
				f.scripts[s.ID] = true
			}
		}
		return true
	}
	return f.scripts[ev.Script]
}
