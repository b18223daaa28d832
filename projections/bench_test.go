package projections_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/infra/benchpair"
	"github.com/orchestra-fleet/orchestra/projections"
	"github.com/orchestra-fleet/orchestra/services"
)

// BenchmarkPlanner: a planner catching up with a backlog of units of work
// — started, then collecting, routing, rendering, publishing the plans and
// records, marking and committing until it has planned the last unit —
// against raw asynchronous JetStream publishes of one plan-sized message
// per operation, in the same run. Each block is 400 operations. Ops are the
// operations planned (each reaches 1.5 servers on average); %raw compares
// operations planned per second with messages published per second. Target
// ≥ 25 %.
func BenchmarkPlanner(b *testing.B) {
	const perBlock = 400
	for _, size := range []int{1, 10} {
		b.Run(fmt.Sprintf("ops-per-unit=%d", size), func(b *testing.B) {
			r := newRig(b)
			bus, db := r.bus(b), openDB(b)
			plan := rawPlan(b)
			var p benchpair.Pair
			ops := 0
			for round := 0; ops < b.N; round++ {
				// The backlog: units appended while no planner runs.
				var last uint64
				for u := range perBlock / size {
					var docs []string
					for i := range size {
						n := u*size + i
						docs = append(docs, fmt.Sprintf(`{"kind":"Resource","type":"website","name":"s%d","attrs":{"n":%d,"round":%d}}`, n, n, round))
					}
					last = r.apply(b, docs...)
				}
				p.Block(1, func() {
					futures := make([]jetstream.PubAckFuture, 0, perBlock)
					for range perBlock {
						f, err := r.env.JS.PublishMsgAsync(&nats.Msg{Subject: "orchestra.exec.raw", Data: plan,
							Header: nats.Header{jetstream.MsgIDHeader: {uuid.NewString()}}})
						if err != nil {
							b.Fatal(err)
						}
						futures = append(futures, f)
					}
					for _, f := range futures {
						select {
						case <-f.Ok():
						case err := <-f.Err():
							b.Fatal(err)
						}
					}
				}, func() {
					d := r.start(b, db, bus)
					d.wait(b, last)
					if err := d.stop(); err != nil {
						b.Fatal(err)
					}
				})
				ops += perBlock
			}
			p.Report(b, ops)
		})
	}
}

// rawPlan is a plan message as big as the planner's for one operation.
func rawPlan(b *testing.B) []byte {
	unit := uuid.New()
	data, err := json.Marshal(events.Plan{Unit: unit, Sequence: 1, Server: "b", Time: time.Now(), Scripts: []events.PlanScript{{
		ID: events.ScriptID(unit, "b", "site"), Backend: "site", Executable: "/bin/bash", Timeout: "5m0s",
		Operations: []events.OperationRef{{Backend: "site", Action: "save", Type: "website", Name: "s1"}},
		Script:     projections.DefaultPrepare + "\n# save 'website/s1'\nORC_NAME='s1' ORC_TYPE='website' ORC_ACTION='save'\nORC_ATTR_n='1'\necho save 's1'\n" + projections.DefaultCommit,
	}}})
	if err != nil {
		b.Fatal(err)
	}
	return data
}

// BenchmarkPlanLatency: from an apply of one resource (its append
// included) to its plans on the servers' queues, with the planner running,
// against a raw JetStream publish → consume on the same server. Reports p50
// and p99 of each.
func BenchmarkPlanLatency(b *testing.B) {
	r := newRig(b)
	d := r.start(b, openDB(b), r.bus(b))
	ctx := context.Background()
	st, err := r.env.JS.Stream(ctx, events.StreamExec)
	if err != nil {
		b.Fatal(err)
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{"orchestra.exec.latency"}, DeliverPolicy: jetstream.DeliverNewPolicy})
	if err != nil {
		b.Fatal(err)
	}
	msgs, err := cons.Messages()
	if err != nil {
		b.Fatal(err)
	}
	defer msgs.Stop()
	var raw, ours []time.Duration
	for i := range b.N {
		t0 := time.Now()
		if _, err := r.env.JS.Publish(ctx, "orchestra.exec.latency", []byte("x")); err != nil {
			b.Fatal(err)
		}
		if _, err := msgs.Next(); err != nil {
			b.Fatal(err)
		}
		raw = append(raw, time.Since(t0))

		t0 = time.Now()
		res, err := r.svc.Apply(ctx, services.System, services.ApplyRequest{Objects: []services.Object{resource(b, i)}})
		if err != nil {
			b.Fatal(err)
		}
		d.wait(b, res.Sequence)
		ours = append(ours, time.Since(t0))
	}
	benchpair.ReportQuantiles(b, "orchestra", ours)
	benchpair.ReportQuantiles(b, "raw", raw)
}

func resource(b *testing.B, n int) services.Object {
	o, err := services.DecodeObject([]byte(fmt.Sprintf(`{"kind":"Resource","type":"website","name":"lat","attrs":{"n":%d}}`, n)))
	if err != nil {
		b.Fatal(err)
	}
	return o
}
