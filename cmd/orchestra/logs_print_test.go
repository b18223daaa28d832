package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/gateway"
)

// TestLogPrinter: lines split over chunks print once whole, a last line
// without a newline prints at the script's end, streams of one script do
// not mix, and on a terminal each server keeps one colour.
func TestLogPrinter(t *testing.T) {
	id := uuid.New()
	ev := func(kind, server string, r events.Result) (gateway.StreamEvent, json.RawMessage) {
		data, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		return gateway.StreamEvent{Kind: kind, Server: server, Backend: "vhost", Script: id}, data
	}
	for _, color := range []bool{false, true} {
		var out strings.Builder
		p := &logPrinter{w: &out, color: color, partial: map[string]string{}}
		for _, step := range []struct {
			kind, server string
			r            events.Result
		}{
			{"ScriptStarted", "web1", &events.ScriptStarted{ID: id, Attempt: 1}},
			{"ScriptOutput", "web1", &events.ScriptOutput{ID: id, Attempt: 1, Stream: events.Stdout, Data: []byte("one\ntw")}},
			{"ScriptOutput", "web1", &events.ScriptOutput{ID: id, Attempt: 1, Stream: events.Stderr, Data: []byte("err")}},
			{"ScriptOutput", "web1", &events.ScriptOutput{ID: id, Attempt: 1, Stream: events.Stdout, Data: []byte("o\nthree")}},
			{"ScriptOutput", "web2", &events.ScriptOutput{ID: uuid.New(), Attempt: 1, Stream: events.Stdout, Data: []byte("other\n")}},
			{"ScriptFinished", "web1", &events.ScriptFinished{ID: id, Attempt: 1, State: events.StateFailure, ExitCode: 2, Duration: 1500 * time.Millisecond}},
		} {
			e, data := ev(step.kind, step.server, step.r)
			if err := p.print(e, data); err != nil {
				t.Fatal(err)
			}
		}
		got := out.String()
		pre1, pre2 := p.prefix("web1", "vhost"), p.prefix("web2", "vhost")
		want := pre1 + " ── script " + id.String() + " started (attempt 1)\n" +
			pre1 + " one\n" + pre1 + " two\n" + pre2 + " other\n" +
			pre1 + " three\n" + pre1 + " err\n" +
			pre1 + " ── script " + id.String() + " FAILURE, exit 2 in 1.5s\n"
		if got != want {
			t.Errorf("colour %v:\n%q\nwant\n%q", color, got, want)
		}
		if color != strings.Contains(got, "\x1b[") {
			t.Errorf("colour %v, yet the output is %q", color, got)
		}
		// A server's colour is the same whatever the backend.
		colour := func(prefix string) string { c, _, _ := strings.Cut(prefix, "web"); return c }
		if other := p.prefix("web1", "mail"); colour(other) != colour(pre1) || color != (colour(pre1) != "") {
			t.Errorf("colour %v: web1's prefixes %q and %q", color, pre1, other)
		}
	}
}
