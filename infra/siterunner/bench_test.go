package siterunner_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/executor"
	"github.com/orchestra-fleet/orchestra/infra/benchpair"
	"github.com/orchestra-fleet/orchestra/infra/eventstore"
	"github.com/orchestra-fleet/orchestra/infra/natstest"
	"github.com/orchestra-fleet/orchestra/infra/planbus"
	"github.com/orchestra-fleet/orchestra/infra/routeexpr"
	"github.com/orchestra-fleet/orchestra/infra/secrets"
	"github.com/orchestra-fleet/orchestra/infra/siterunner"
	"github.com/orchestra-fleet/orchestra/infra/wmjet"
	"github.com/orchestra-fleet/orchestra/services"
)

// rig is the whole site pipeline in one process on an embedded JetStream:
// the write model following the log, the runner's Watermill handlers, and
// an executor running local servers.
type rig struct {
	js  jetstream.JetStream
	nc  *nats.Conn
	svc *services.Service
}

func newRig(b *testing.B) *rig {
	b.Helper()
	env := natstest.Start(b)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	b.Cleanup(func() { cancel(); wg.Wait() })
	reg, err := events.NewRegistry(events.Catalog()...)
	if err != nil {
		b.Fatal(err)
	}
	store, err := eventstore.New(ctx, eventstore.Config{JetStream: env.JS, Registry: reg})
	if err != nil {
		b.Fatal(err)
	}
	sealer, err := secrets.New(make([]byte, 32))
	if err != nil {
		b.Fatal(err)
	}
	svc, err := services.New(services.Config{Store: store, Registry: reg, Compiler: routeexpr.Compiler{}, Sealer: sealer})
	if err != nil {
		b.Fatal(err)
	}
	plans, err := planbus.New(ctx, env.JS)
	if err != nil {
		b.Fatal(err)
	}
	bus, err := siterunner.NewBus(ctx, env.JS, plans)
	if err != nil {
		b.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	runner := services.NewRunner(svc, bus, log)
	fleet := executor.NewFleet()
	ex, err := executor.New(ctx, executor.Config{JetStream: env.JS, Methods: map[string]executor.Method{services.MethodLocal: executor.Local{Host: "bench"}}, Logger: log})
	if err != nil {
		b.Fatal(err)
	}
	sub := wmjet.NewSubscriber(env.JS, siterunner.Topics(time.Minute))
	router, err := wmjet.NewRouter(log, wmjet.NewPublisher(env.JS), wmjet.RouterConfig{MaxRetries: 3, InitialInterval: 10 * time.Millisecond, MaxInterval: time.Second, PoisonTopic: "orchestra.notify.poison.bench"})
	if err != nil {
		b.Fatal(err)
	}
	siterunner.AddHandlers(router, sub, runner, svc, log)
	wg.Go(func() {
		_ = store.Follow(ctx, 1, func(batch []events.Envelope) error {
			for _, e := range batch {
				if err := svc.Observe(e); err != nil {
					return err
				}
				if err := fleet.Observe(e); err != nil {
					return err
				}
			}
			return nil
		})
	})
	wg.Go(func() { _ = ex.Run(ctx, fleet) })
	wg.Go(func() { _ = router.Run(ctx) })
	wg.Go(func() { <-ctx.Done(); _ = sub.Close() })
	<-router.Running()
	return &rig{js: env.JS, nc: env.Conn, svc: svc}
}

// BenchmarkSiteStart: `site start` of 100 services over 3 ranks on 20
// local servers, every command `true`, from the request until the run's
// end is stored. The overhead is that time less the commands' own: per
// phase, the busiest server's run time. Beside it, in the same run, the
// raw JetStream publish → consume latency it is reported against.
func BenchmarkSiteStart(b *testing.B) {
	r := newRig(b)
	ctx := context.Background()
	var docs []string
	for i := 1; i <= 20; i++ {
		docs = append(docs, fmt.Sprintf(`{"kind":"Server","name":"b%d","method":"local"}`, i))
	}
	var svcs []string
	for i := range 100 {
		svcs = append(svcs, fmt.Sprintf(`{"name":"svc%d","rank":%d,"servers":["b%d"],"start":"true"}`, i, i%3+1, i%20+1))
	}
	docs = append(docs, `{"kind":"Site","name":"bench","services":[`+strings.Join(svcs, ",")+`]}`)
	req, err := services.DecodeApply([]byte(`{"objects":[` + strings.Join(docs, ",") + `]}`))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := r.svc.Apply(ctx, services.System, req); err != nil {
		b.Fatal(err)
	}
	ends := make(chan events.RunFinished, 16)
	endSub, err := r.nc.Subscribe("orchestra.evt.siterun.*.RunFinished", func(m *nats.Msg) {
		var fin events.RunFinished // an event's payload is its message's data
		if json.Unmarshal(m.Data, &fin) == nil {
			ends <- fin
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer endSub.Unsubscribe()
	var mu sync.Mutex
	took := map[uuid.UUID]time.Duration{}
	finSub, err := r.nc.Subscribe("orchestra.res.*.*.ScriptFinished", func(m *nats.Msg) {
		var fin events.ScriptFinished
		if json.Unmarshal(m.Data, &fin) == nil {
			mu.Lock()
			took[fin.ID] = fin.Duration
			mu.Unlock()
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer finSub.Unsubscribe()

	raw := rawLatency(b, r.js)
	var totals, overheads, raws []time.Duration
	b.ResetTimer()
	for range b.N {
		raws = append(raws, raw())
		t0 := time.Now()
		res, err := r.svc.RequestRun(ctx, services.System, services.RunRequest{Site: "bench", Command: events.CommandStart})
		if err != nil {
			b.Fatal(err)
		}
		var fin events.RunFinished
		for fin.Run.String() != res.Run {
			select {
			case fin = <-ends:
			case <-time.After(2 * time.Minute):
				b.Fatal("the run did not end in 2 minutes")
			}
		}
		total := time.Since(t0)
		if fin.State != events.RunSuccess || fin.Succeeded != 100 {
			b.Fatalf("the run ended %s with %d succeeded", fin.State, fin.Succeeded)
		}
		// The commands' own time: per phase, the busiest server.
		var commands time.Duration
		mu.Lock()
		for _, ph := range res.Phases {
			per := map[string]time.Duration{}
			for _, st := range ph.Steps {
				per[st.Server] += took[st.Script]
			}
			var busiest time.Duration
			for _, d := range per {
				busiest = max(busiest, d)
			}
			commands += busiest
		}
		mu.Unlock()
		totals, overheads = append(totals, total), append(overheads, total-commands)
	}
	b.StopTimer()
	b.ReportMetric(benchpair.Millis(totals, .5), "run-p50-ms")
	b.ReportMetric(benchpair.Millis(overheads, .5), "overhead-p50-ms")
	b.ReportMetric(benchpair.Millis(raws, .5), "raw-pubsub-p50-ms")
}

// rawLatency returns a measurement of one JetStream publish until a
// consumer receives it, on a stream of its own.
func rawLatency(b *testing.B, js jetstream.JetStream) func() time.Duration {
	b.Helper()
	ctx := context.Background()
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "BENCH_RAW", Subjects: []string{"bench.raw"}})
	if err != nil {
		b.Fatal(err)
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverNewPolicy})
	if err != nil {
		b.Fatal(err)
	}
	it, err := cons.Messages()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(it.Stop)
	return func() time.Duration {
		var best time.Duration
		for i := range 20 {
			t0 := time.Now()
			if _, err := js.Publish(ctx, "bench.raw", []byte(`{}`)); err != nil {
				b.Fatal(err)
			}
			if _, err := it.Next(); err != nil {
				b.Fatal(err)
			}
			if d := time.Since(t0); i == 0 || d < best {
				best = d
			}
		}
		return best
	}
}
