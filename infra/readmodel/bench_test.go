package readmodel_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/infra/benchlogs"
	"github.com/orchestra-fleet/orchestra/infra/benchpair"
	"github.com/orchestra-fleet/orchestra/infra/natstest"
	"github.com/orchestra-fleet/orchestra/infra/planbus"
	"github.com/orchestra-fleet/orchestra/infra/sqlite"
	"github.com/orchestra-fleet/orchestra/projections"
)

// publishAsync publishes results onto RESULTS without waiting for each
// acknowledgement.
func publishAsync(b *testing.B, js jetstream.JetStream, server string, rs []events.Result) {
	b.Helper()
	for _, r := range rs {
		subject := scriptSubject(b, server, r)
		data, _ := json.Marshal(r)
		if _, err := js.PublishAsync(subject, data); err != nil {
			b.Fatal(err)
		}
	}
}

func waitAcks(b *testing.B, js jetstream.JetStream) {
	b.Helper()
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		b.Fatal("publishing did not complete")
	}
}

// BenchmarkResultsReplay: rebuilding the results read models from
// sequence 1 (decode, fold, SQLite commits, the query indexes at the end),
// against reading the same messages with a bare ordered consumer.
func BenchmarkResultsReplay(b *testing.B) {
	const scripts = 4000 // × 5 results
	env := natstest.Start(b)
	ctx := context.Background()
	bus, err := planbus.New(ctx, env.JS)
	if err != nil {
		b.Fatal(err)
	}
	at := time.Now().UTC()
	for i := range scripts {
		_, rs := benchlogs.Script(uuid.New(), fmt.Sprint("web", i%50), "vhost", at, events.StateSuccess)
		publishAsync(b, env.JS, fmt.Sprint("web", i%50), rs)
	}
	waitAcks(b, env.JS)
	last, err := bus.LastResult(ctx)
	if err != nil {
		b.Fatal(err)
	}
	stream, err := env.JS.Stream(ctx, events.StreamResults)
	if err != nil {
		b.Fatal(err)
	}
	raw := func() {
		cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
		if err != nil {
			b.Fatal(err)
		}
		it, err := cons.Messages(jetstream.PullMaxMessages(500))
		if err != nil {
			b.Fatal(err)
		}
		defer it.Stop()
		for {
			msg, err := it.Next()
			if err != nil {
				b.Fatal(err)
			}
			if meta, _ := msg.Metadata(); meta.Sequence.Stream >= last {
				return
			}
		}
	}
	dir := b.TempDir()
	n := 0
	ours := func() {
		n++
		db, err := sqlite.Open(filepath.Join(dir, fmt.Sprintf("replay-%d.db", n)))
		if err != nil {
			b.Fatal(err)
		}
		defer db.Close()
		// As Model.Replay does: the query indexes are built at the end.
		if err := db.DeferQueryIndexes(ctx); err != nil {
			b.Fatal(err)
		}
		r := projections.NewResultsRunner(db, bus, slog.New(slog.DiscardHandler))
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- r.Run(rctx) }()
		if err := r.WaitFor(ctx, last); err != nil {
			b.Fatal(err)
		}
		cancel()
		<-done
		if err := db.BuildQueryIndexes(ctx); err != nil {
			b.Fatal(err)
		}
	}
	var p benchpair.Pair
	b.ResetTimer()
	p.Run(b, 1, raw, ours)
	b.StopTimer()
	p.Report(b, b.N*int(last))
	b.ReportMetric(float64(b.N)*float64(last)/p.Ours.Seconds(), "orchestra-results/s")
	b.ReportMetric(float64(b.N)*float64(last)/p.Raw.Seconds(), "raw-results/s")
}

// BenchmarkScriptsQuery: GET /v1/scripts's query (a page of 100, with
// one of several filters in turn) over a read model of many script logs
// (1M by default; ORCHESTRA_BENCH_LOGS says how many), against reading a
// page of 100 rows by the table's own key. The read model is built once in
// the user's cache directory and reused by later runs.
func BenchmarkScriptsQuery(b *testing.B) {
	logs := benchlogs.Count(b)
	db, _ := benchlogs.Open(b, logs)
	ctx := context.Background()
	rnd := rand.New(rand.NewPCG(1, 2))
	filters := []struct {
		name string
		f    func() projections.ScriptFilter
	}{
		{"server", func() projections.ScriptFilter {
			return projections.ScriptFilter{Server: fmt.Sprint("web", rnd.IntN(100))}
		}},
		{"state", func() projections.ScriptFilter { return projections.ScriptFilter{State: events.StateFailure} }},
		{"server+state", func() projections.ScriptFilter {
			return projections.ScriptFilter{Server: fmt.Sprint("web", 10*rnd.IntN(10)), State: events.StateFailure}
		}},
		{"backend+state", func() projections.ScriptFilter {
			return projections.ScriptFilter{Backend: "mail", State: events.StateTimeout}
		}},
		{"server, older page", func() projections.ScriptFilter {
			return projections.ScriptFilter{Server: fmt.Sprint("web", rnd.IntN(100)), Before: uint64(1 + rnd.IntN(2*logs))}
		}},
		{"time range", func() projections.ScriptFilter {
			since := benchlogs.Start.Add(time.Duration(rnd.IntN(logs)) * time.Second)
			return projections.ScriptFilter{Since: since, Until: since.Add(time.Hour)}
		}},
	}
	var ours, raw []time.Duration
	worst := map[string][]time.Duration{}
	for i := range b.N {
		q := filters[i%len(filters)]
		f := q.f()
		f.Limit = 101
		t0 := time.Now()
		if _, err := db.Scripts(ctx, f); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if _, err := db.Scripts(ctx, projections.ScriptFilter{Before: uint64(1 + rnd.IntN(2*logs)), Limit: 101}); err != nil {
			b.Fatal(err)
		}
		ours, raw = append(ours, t1.Sub(t0)), append(raw, time.Since(t1))
		worst[q.name] = append(worst[q.name], t1.Sub(t0))
	}
	b.StopTimer()
	benchpair.ReportQuantiles(b, "filtered", ours)
	benchpair.ReportQuantiles(b, "raw", raw)
	for name, ds := range worst {
		b.Logf("%-20s p50 %6.2f ms  p99 %6.2f ms", name, benchpair.Millis(ds, .5), benchpair.Millis(ds, .99))
	}
}

// BenchmarkResultVisible: a result published until a read of the read
// models sees it (the runner following RESULTS, one commit), against a
// publish until a consumer receives it.
func BenchmarkResultVisible(b *testing.B) {
	env := natstest.Start(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	bus, err := planbus.New(ctx, env.JS)
	if err != nil {
		b.Fatal(err)
	}
	db, err := sqlite.Open(filepath.Join(b.TempDir(), "results.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	r := projections.NewResultsRunner(db, bus, slog.New(slog.DiscardHandler))
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()

	// The raw half: publish → an ordered consumer, on a stream of its own
	// (on RESULTS the runner would fold it too).
	rawSubject := "bench.raw"
	stream, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: "BENCH_RAW", Subjects: []string{rawSubject}})
	if err != nil {
		b.Fatal(err)
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{rawSubject}, DeliverPolicy: jetstream.DeliverNewPolicy})
	if err != nil {
		b.Fatal(err)
	}
	it, err := cons.Messages()
	if err != nil {
		b.Fatal(err)
	}
	defer it.Stop()
	var ours, raw []time.Duration
	at := time.Now().UTC()
	for range b.N {
		t0 := time.Now()
		if _, err := env.JS.Publish(ctx, rawSubject, []byte(`{}`)); err != nil {
			b.Fatal(err)
		}
		if _, err := it.Next(); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		unit := uuid.New()
		id := events.ScriptID(unit, "web1", "vhost")
		subject, _ := events.ScriptSubject("web1", id, "ScriptFinished")
		data, _ := json.Marshal(&events.ScriptFinished{ID: id, Unit: unit, Server: "web1", Backend: "vhost", Attempt: 1, State: events.StateSuccess, Time: at})
		ack, err := env.JS.Publish(ctx, subject, data)
		if err != nil {
			b.Fatal(err)
		}
		if err := r.WaitFor(ctx, ack.Sequence); err != nil {
			b.Fatal(err)
		}
		if _, err := db.Script(ctx, id); err != nil {
			b.Fatal(err)
		}
		ours, raw = append(ours, time.Since(t1)), append(raw, t1.Sub(t0))
		time.Sleep(projections.MinCommitInterval) // one at a time, as a quiet system sees them
	}
	b.StopTimer()
	benchpair.ReportQuantiles(b, "visible", ours)
	benchpair.ReportQuantiles(b, "raw", raw)
}
