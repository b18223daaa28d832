package gateway_test

import (
	"bufio"
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
)

// sseEvent is one Server-Sent Event as a client reads it.
type sseEvent struct {
	ID    string
	Event string
	Data  string
}

// sseStream is an open GET /v1/stream.
type sseStream struct {
	resp   *http.Response
	events chan sseEvent
	cancel context.CancelFunc
}

// openStream opens GET /v1/stream?query with headers; it fails the test
// unless the answer is 200.
func (e *env) openStream(t *testing.T, query string, headers map[string]string) *sseStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "GET", e.URL+"/v1/stream?"+query, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+e.viewer)
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		cancel()
		t.Fatalf("GET /v1/stream?%s = %d %s", query, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	s := &sseStream{resp: resp, events: make(chan sseEvent, 1024), cancel: cancel}
	go func() {
		defer close(s.events)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 4<<20)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.Event != "" {
					s.events <- ev
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, "id: "):
				ev.ID = line[4:]
			case strings.HasPrefix(line, "event: "):
				ev.Event = line[7:]
			case strings.HasPrefix(line, "data: "):
				ev.Data = line[6:]
			}
		}
	}()
	t.Cleanup(s.close)
	return s
}

func (s *sseStream) close() {
	s.cancel()
	s.resp.Body.Close()
}

// next returns the next event, failing the test after a while without one.
func (s *sseStream) next(t *testing.T) sseEvent {
	t.Helper()
	select {
	case ev, ok := <-s.events:
		if !ok {
			t.Fatal("the stream ended")
		}
		return ev
	case <-time.After(20 * time.Second):
		t.Fatal("no event for 20s")
	}
	return sseEvent{}
}

// all reads events until the stream ends.
func (s *sseStream) all(t *testing.T) []sseEvent {
	t.Helper()
	var out []sseEvent
	for {
		select {
		case ev, ok := <-s.events:
			if !ok {
				return out
			}
			out = append(out, ev)
		case <-time.After(20 * time.Second):
			t.Fatalf("the stream did not end; %d events so far", len(out))
		}
	}
}

// publishResult publishes r about script id on server, returning its
// sequence.
func (e *env) publishResult(t *testing.T, server string, id uuid.UUID, r events.Result) uint64 {
	t.Helper()
	subject, err := events.ScriptSubject(server, id, r.ResultType())
	if err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	ack, err := e.JS.Publish(context.Background(), subject, data)
	if err != nil {
		t.Fatal(err)
	}
	return ack.Sequence
}

// scriptRun publishes a whole run of one script (its id derived from unit,
// server and backend) with n output chunks, and returns the sequences.
func (e *env) scriptRun(t *testing.T, server string, unit uuid.UUID, backend string, n int) []uint64 {
	t.Helper()
	id := events.ScriptID(unit, server, backend)
	now := time.Now().UTC()
	seqs := []uint64{
		e.publishResult(t, server, id, &events.ScriptPlanned{ID: id, Unit: unit, Server: server, Backend: backend, State: events.StateReceived, Time: now}),
		e.publishResult(t, server, id, &events.ScriptStarted{ID: id, Unit: unit, Server: server, Backend: backend, Attempt: 1, Time: now}),
	}
	for i := range n {
		seqs = append(seqs, e.publishResult(t, server, id, &events.ScriptOutput{ID: id, Attempt: 1, Stream: events.Stdout, Offset: int64(i * 6), Data: fmt.Appendf(nil, "line%d\n", i)}))
	}
	return append(seqs, e.publishResult(t, server, id, &events.ScriptFinished{ID: id, Unit: unit, Server: server, Backend: backend, Attempt: 1, State: events.StateSuccess, Started: now, Time: now}))
}

// ids are the sequences of events, failing the test on an event without
// one.
func ids(t *testing.T, evs []sseEvent) []uint64 {
	t.Helper()
	out := make([]uint64, 0, len(evs))
	for _, ev := range evs {
		n, err := strconv.ParseUint(ev.ID, 10, 64)
		if err != nil {
			t.Fatalf("event %+v has no sequence id", ev)
		}
		out = append(out, n)
	}
	return out
}

// TestStreamResumesWithLastEventID: a live stream, cut and resumed with
// Last-Event-ID while results keep coming, delivers every result of its
// filter once and in order; a replay of the same range (follow=false)
// delivers the same.
func TestStreamResumesWithLastEventID(t *testing.T) {
	e := newEnv(t)
	server := "sse-" + uuid.NewString()[:8]
	start := time.Now().Add(-time.Second).UTC().Format(time.RFC3339Nano)
	unit := uuid.New()

	want := e.scriptRun(t, server, unit, "vhost", 5)
	e.scriptRun(t, "other-"+server, unit, "vhost", 2) // another server: filtered out
	consumers := e.resultConsumers(t)
	s := e.openStream(t, "server="+server+"&since="+start, nil)
	var got []sseEvent
	for range 4 {
		got = append(got, s.next(t))
	}
	s.close()
	// Results stored while no one listens, and while the next one does.
	want = append(want, e.scriptRun(t, server, uuid.New(), "vhost", 3)...)
	s = e.openStream(t, "server="+server, map[string]string{"Last-Event-ID": got[len(got)-1].ID})
	want = append(want, e.scriptRun(t, server, uuid.New(), "vhost", 3)...)
	for len(got) < len(want) {
		got = append(got, s.next(t))
	}
	if g := ids(t, got); !slices.Equal(g, want) {
		t.Fatalf("live events %v, want %v", g, want)
	}
	for _, ev := range got {
		var data struct {
			Seq     uint64          `json:"seq"`
			Kind    string          `json:"kind"`
			Server  string          `json:"server"`
			Backend string          `json:"backend"`
			Result  json.RawMessage `json:"result"`
		}
		if err := json.Unmarshal([]byte(ev.Data), &data); err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(data.Seq) != ev.ID || data.Kind != ev.Event || data.Server != server || data.Backend != "vhost" || len(data.Result) < 2 {
			t.Errorf("event %s %s: data %s", ev.ID, ev.Event, ev.Data)
		}
	}

	replay := e.openStream(t, "follow=false&server="+server+"&since="+start, nil).all(t)
	if g := ids(t, replay); !slices.Equal(g, want) {
		t.Fatalf("replayed events %v, want %v", g, want)
	}
	// A kind named twice is one filter.
	outputs := e.openStream(t, "follow=false&kind=ScriptOutput,ScriptOutput&server="+server+"&since="+start, nil).all(t)
	if len(outputs) != 11 {
		t.Errorf("kind=ScriptOutput gave %d events, want 11", len(outputs))
	}
	for _, ev := range outputs {
		if ev.Event != "ScriptOutput" {
			t.Errorf("kind=ScriptOutput gave a %s", ev.Event)
		}
	}
	// Every stream's consumer goes with it.
	s.close()
	deadline := time.Now().Add(10 * time.Second)
	for e.resultConsumers(t) > consumers {
		if time.Now().After(deadline) {
			t.Fatalf("RESULTS has %d consumers after the streams ended, %d before", e.resultConsumers(t), consumers)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// resultConsumers is how many consumers RESULTS has.
func (e *env) resultConsumers(t *testing.T) int {
	t.Helper()
	stream, err := e.JS.Stream(context.Background(), events.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Consumers
}

// TestStreamFiltersByUnit: a unit's stream has its scripts' output, though
// output chunks do not name their unit, and nothing of other units.
func TestStreamFiltersByUnit(t *testing.T) {
	e := newEnv(t)
	server := "unit-" + uuid.NewString()[:8]
	start := time.Now().Add(-time.Second).UTC().Format(time.RFC3339Nano)
	unit, other := uuid.New(), uuid.New()
	want := e.scriptRun(t, server, unit, "vhost", 2)
	e.scriptRun(t, server, other, "vhost", 2)
	want = append(want, e.scriptRun(t, server, unit, "mail", 1)...)
	got := e.openStream(t, "follow=false&unit="+unit.String()+"&since="+start, nil).all(t)
	if g := ids(t, got); !slices.Equal(g, want) {
		t.Fatalf("unit events %v, want %v", g, want)
	}
}

// TestStreamSaysWhatRetentionRemoved: resuming from an event retention has
// removed starts with a gap event naming what is gone.
func TestStreamSaysWhatRetentionRemoved(t *testing.T) {
	e := newEnv(t)
	server := "gap-" + uuid.NewString()[:8]
	seqs := e.scriptRun(t, server, uuid.New(), "vhost", 4)
	stream, err := e.JS.Stream(context.Background(), events.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	keep := seqs[3]
	if err := stream.Purge(context.Background(), jetstream.WithPurgeSequence(keep)); err != nil {
		t.Fatal(err)
	}
	got := e.openStream(t, "follow=false&server="+server, map[string]string{"Last-Event-ID": "1"}).all(t)
	if len(got) == 0 || got[0].Event != "gap" || got[0].ID != "" {
		t.Fatalf("events %+v, want a gap first", got)
	}
	var gap struct{ From, To uint64 }
	if err := json.Unmarshal([]byte(got[0].Data), &gap); err != nil || gap.From != 2 || gap.To != keep-1 {
		t.Errorf("gap %s, want from 2 to %d", got[0].Data, keep-1)
	}
	if g := ids(t, got[1:]); !slices.Equal(g, seqs[3:]) {
		t.Errorf("after the gap %v, want %v", g, seqs[3:])
	}
}

// TestStreamRefusesBadInput: a 400 naming the parameter, before any event.
func TestStreamRefusesBadInput(t *testing.T) {
	e := newEnv(t)
	e.scriptRun(t, "bad-input", uuid.New(), "vhost", 1)
	for _, c := range []struct {
		name, query string
		headers     map[string]string
		field       string
	}{
		{"unknown kind", "kind=ScriptDone", nil, "kind"},
		{"unknown parameter", "sever=web1", nil, "sever"},
		{"unit records of a server", "kind=UnitPlanned&server=web1", nil, "kind"},
		{"bad unit", "unit=nope", nil, "unit"},
		{"bad follow", "follow=maybe", nil, "follow"},
		{"bad since", "since=yesterday", nil, "since"},
		{"id not a number", "", map[string]string{"Last-Event-ID": "abc"}, "Last-Event-ID"},
		{"id in the future", "", map[string]string{"Last-Event-ID": "999999999"}, "Last-Event-ID"},
		{"query id in the future", "last_event_id=999999999", nil, "last_event_id"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := e.call(t, "GET", "/v1/stream?"+c.query, e.viewer, nil, c.headers).want(t, http.StatusBadRequest)
			if r["field"] != c.field {
				t.Errorf("field = %v, want %s: %v", r["field"], c.field, r)
			}
		})
	}
}
