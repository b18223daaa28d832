package eventstore_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/infra/benchpair"
	"github.com/orchestra-fleet/orchestra/infra/natsserver"
	"github.com/orchestra-fleet/orchestra/infra/natstest"
	"github.com/orchestra-fleet/orchestra/services"
)

// Every benchmark here pairs Orchestra's operation with the raw JetStream
// operation under it; see infra/benchpair for the metrics.

func payload(name string) *events.ServerSaved {
	return &events.ServerSaved{Server: events.Server{Name: name, Address: name, Port: 22, Method: "ssh", Active: true}, Changed: []string{"port"}}
}

// rawMsg is the message a hand-written JetStream client would send for the
// same change: the payload, a message id, and the compare-and-set headers.
func rawMsg(b *testing.B, subject, filter string, expected uint64, name string) *nats.Msg {
	data, err := json.Marshal(payload(name))
	if err != nil {
		b.Fatal(err)
	}
	return &nats.Msg{Subject: subject, Data: data, Header: nats.Header{
		jetstream.MsgIDHeader:                   []string{uuid.NewString()},
		jetstream.ExpectedLastSubjSeqHeader:     []string{strconv.FormatUint(expected, 10)},
		jetstream.ExpectedLastSubjSeqSubjHeader: []string{filter},
	}}
}

// fsyncModes runs a benchmark on each durability setting of `orchestra up
// --fsync`: interval (the default) and always.
func fsyncModes(b *testing.B, bench func(b *testing.B, env *natstest.Env)) {
	for _, always := range []bool{false, true} {
		name := "fsync=interval"
		if always {
			name = "fsync=always"
		}
		b.Run(name, func(b *testing.B) {
			bench(b, natstest.StartAt(b, natsserver.Config{DataDir: b.TempDir(), SyncAlways: always}))
		})
	}
}

// BenchmarkAppendOneEvent: a one-event unit (a CAS publish) against a raw
// publish with compare-and-set and a message id. Target ≥ 60 %.
func BenchmarkAppendOneEvent(b *testing.B) { fsyncModes(b, benchAppendOneEvent) }

func benchAppendOneEvent(b *testing.B, env *natstest.Env) {
	s := newStore(b, env)
	ctx := context.Background()
	agg := events.Aggregate{Type: events.AggServer, ID: "bench"}
	var version, rawVersion uint64
	var p benchpair.Pair
	const block = 64
	for done := 0; done < b.N; done += block {
		n := min(block, b.N-done)
		p.Block(n, func() {
			ack, err := env.JS.PublishMsg(ctx, rawMsg(b, "orchestra.evt.raw.bench.Saved", "orchestra.evt.raw.bench.>", rawVersion, "bench"))
			if err != nil {
				b.Fatal(err)
			}
			rawVersion = ack.Sequence
		}, func() {
			u, err := services.NewUnit(events.Meta{Actor: "bench"}, time.Now())
			if err != nil {
				b.Fatal(err)
			}
			u.Expect(agg, version)
			if err := u.Add(agg, payload("bench")); err != nil {
				b.Fatal(err)
			}
			a, err := s.Append(ctx, u)
			if err != nil {
				b.Fatal(err)
			}
			version = a.Last
		})
	}
	p.Report(b, b.N)
}

// BenchmarkAppendUnit: units of 3 and 100 events, each on its own new
// aggregate, against a raw atomic batch of the same messages. Target ≥ 80 %.
func BenchmarkAppendUnit(b *testing.B) {
	for _, size := range []int{3, 100} {
		b.Run(fmt.Sprintf("events=%d", size), func(b *testing.B) {
			fsyncModes(b, func(b *testing.B, env *natstest.Env) {
				s := newStore(b, env)
				ctx := context.Background()
				var p benchpair.Pair
				seq := 0
				const block = 8
				for done := 0; done < b.N; done += block {
					n := min(block, b.N-done)
					p.Block(n, func() {
						msgs := make([]*nats.Msg, size)
						for i := range msgs {
							seq++
							name := fmt.Sprintf("raw-%d", seq)
							msgs[i] = rawMsg(b, "orchestra.evt.raw."+name+".Saved", "orchestra.evt.raw."+name+".>", 0, name)
						}
						if _, err := jetstreamext.PublishMsgBatch(ctx, env.JS, msgs); err != nil {
							b.Fatal(err)
						}
					}, func() {
						u, err := services.NewUnit(events.Meta{Actor: "bench"}, time.Now())
						if err != nil {
							b.Fatal(err)
						}
						for range size {
							seq++
							agg := events.Aggregate{Type: events.AggServer, ID: fmt.Sprintf("srv-%d", seq)}
							u.Expect(agg, 0)
							if err := u.Add(agg, payload(agg.ID)); err != nil {
								b.Fatal(err)
							}
						}
						if _, err := s.Append(ctx, u); err != nil {
							b.Fatal(err)
						}
					})
				}
				p.Report(b, b.N)
			})
		})
	}
}

// BenchmarkReplay: Read over the whole log, decoding every envelope, against
// a raw ordered consumer reading the same messages. Target ≥ 70 %.
func BenchmarkReplay(b *testing.B) {
	const total = 20000
	env := natstest.Start(b)
	s := newStore(b, env)
	ctx := context.Background()
	for i := 0; i < total; i += 100 {
		u, _ := services.NewUnit(events.Meta{Actor: "bench"}, time.Now())
		for j := range 100 {
			agg := events.Aggregate{Type: events.AggServer, ID: fmt.Sprintf("srv-%d", i+j)}
			u.Expect(agg, 0)
			_ = u.Add(agg, payload(agg.ID))
		}
		if _, err := s.Append(ctx, u); err != nil {
			b.Fatal(err)
		}
	}
	var p benchpair.Pair
	b.ResetTimer()
	p.Block(b.N, func() {
		cons, err := env.JS.OrderedConsumer(ctx, events.StreamEvents, jetstream.OrderedConsumerConfig{})
		if err != nil {
			b.Fatal(err)
		}
		it, err := cons.Messages(jetstream.PullMaxMessages(4096))
		if err != nil {
			b.Fatal(err)
		}
		for n := 0; n < total; n++ {
			if _, err := it.Next(); err != nil {
				b.Fatal(err)
			}
		}
		it.Stop()
	}, func() {
		n := 0
		for _, err := range s.Read(ctx, 1) {
			if err != nil {
				b.Fatal(err)
			}
			n++
		}
		if n != total {
			b.Fatalf("replayed %d of %d", n, total)
		}
	})
	p.Report(b, b.N*total)
	b.ReportMetric(float64(b.N*total)/p.Ours.Seconds(), "orchestra-events/s")
	b.ReportMetric(float64(b.N*total)/p.Raw.Seconds(), "raw-events/s")
}
