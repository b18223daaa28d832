package projections_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/infra/eventstore"
	"github.com/orchestra-fleet/orchestra/infra/natstest"
	"github.com/orchestra-fleet/orchestra/infra/planbus"
	"github.com/orchestra-fleet/orchestra/infra/routeexpr"
	"github.com/orchestra-fleet/orchestra/infra/sqlite"
	"github.com/orchestra-fleet/orchestra/projections"
	"github.com/orchestra-fleet/orchestra/services"
)

// rig is the planner on real parts: an embedded JetStream server with the
// streams, the event store, the write side to make units of work, and the
// planbus outbox.
type rig struct {
	env   *natstest.Env
	reg   *events.Registry
	store *eventstore.Store
	svc   *services.Service
}

func newRig(t testing.TB) *rig {
	t.Helper()
	r := &rig{env: natstest.Start(t), reg: registry(t)}
	ctx := context.Background()
	var err error
	if r.store, err = eventstore.New(ctx, eventstore.Config{JetStream: r.env.JS, Registry: r.reg}); err != nil {
		t.Fatal(err)
	}
	if r.svc, err = services.New(services.Config{Store: r.store, Registry: r.reg, Compiler: routeexpr.Compiler{}, Sealer: sealer(t)}); err != nil {
		t.Fatal(err)
	}
	// Server a takes the sites with an even n, server b every site.
	r.apply(t,
		`{"kind":"Server","name":"a","method":"local","address":"127.0.0.1"}`,
		`{"kind":"Server","name":"b","method":"local","address":"127.0.0.1"}`,
		`{"kind":"Backend","name":"site","type":"website","prepare":"echo on {{ .server.name }}","actions":{"save":"echo save {{ .name }}"}}`,
		`{"kind":"Route","backend":"site","server":"a","match":"int(resource.attrs.n) % 2 == 0"}`,
		`{"kind":"Route","backend":"site","server":"b"}`)
	return r
}

// apply commits the documents as one unit and returns its last sequence.
func (r *rig) apply(t testing.TB, docs ...string) uint64 {
	t.Helper()
	req := services.ApplyRequest{}
	for _, d := range docs {
		o, err := services.DecodeObject([]byte(d))
		if err != nil {
			t.Fatal(err)
		}
		req.Objects = append(req.Objects, o)
	}
	res, err := r.svc.Apply(context.Background(), services.System, req)
	if err != nil {
		t.Fatal(err)
	}
	return res.Sequence
}

// sites applies one website per unit, n from..to-1, and returns the last
// sequence.
func (r *rig) sites(t testing.TB, from, to int) uint64 {
	t.Helper()
	var seq uint64
	for n := from; n < to; n++ {
		seq = r.apply(t, fmt.Sprintf(`{"kind":"Resource","type":"website","name":"s%d","attrs":{"n":%d}}`, n, n))
	}
	return seq
}

func (r *rig) bus(t testing.TB) *planbus.Bus {
	t.Helper()
	b, err := planbus.New(context.Background(), r.env.JS)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func openDB(t testing.TB) *sqlite.DB {
	t.Helper()
	db, err := sqlite.Open(filepath.Join(t.TempDir(), "model.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// running is a dispatcher at work.
type running struct {
	*projections.Dispatcher
	cancel   context.CancelFunc
	finished chan struct{} // closed when Run has returned err
	err      error
}

func (r *rig) start(t testing.TB, db *sqlite.DB, out projections.Outbox) *running {
	t.Helper()
	d := projections.NewDispatcher(r.reg, db, r.store, out, projections.Renderer{Compiler: routeexpr.Compiler{}, Sealer: sealer(t)})
	ctx, cancel := context.WithCancel(context.Background())
	run := &running{Dispatcher: d, cancel: cancel, finished: make(chan struct{})}
	go func() {
		run.err = d.Run(ctx)
		close(run.finished)
	}()
	t.Cleanup(func() { run.stop() })
	return run
}

// stop ends the dispatcher and returns how it ended (nil when stopped).
func (d *running) stop() error {
	d.cancel()
	return d.ended()
}

// ended waits for the dispatcher to end by itself and returns why.
func (d *running) ended() error {
	<-d.finished
	if errors.Is(d.err, context.Canceled) {
		return nil
	}
	return d.err
}

// wait waits until the dispatcher has planned up to seq; it fails the test
// at once when the dispatcher stops.
func (d *running) wait(t testing.TB, seq uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go func() {
		select {
		case <-d.finished:
			cancel()
		case <-ctx.Done():
		}
	}()
	if err := d.WaitFor(ctx, seq); err != nil {
		select {
		case <-d.finished:
			t.Fatalf("the planner stopped at %d before reaching %d: %v", d.Seq(), seq, d.err)
		default:
			t.Fatalf("the planner did not reach %d (at %d)", seq, d.Seq())
		}
	}
}

// queued reads every message of subject filter on stream, decoded into T.
func queued[T any](t *testing.T, js jetstream.JetStream, stream, filter string) []T {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}})
	if err != nil {
		t.Fatal(err)
	}
	var out []T
	for {
		msg, err := cons.Next(jetstream.FetchMaxWait(300 * time.Millisecond))
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded) {
			return out
		}
		if err != nil {
			return out
		}
		var v T
		if err := json.Unmarshal(msg.Data(), &v); err != nil {
			t.Fatal(err)
		}
		out = append(out, v)
	}
}

// planCount counts the plans on each server's queue by unit, and fails on
// a unit planned twice for one server.
func planCount(t *testing.T, js jetstream.JetStream) map[string]int {
	t.Helper()
	out := map[string]int{}
	seen := map[string]bool{}
	for _, p := range queued[events.Plan](t, js, events.StreamExec, events.SubjectExec) {
		key := p.Unit.String() + "@" + p.Server
		if seen[key] {
			t.Errorf("unit %s is planned twice for %s", p.Unit, p.Server)
		}
		seen[key] = true
		out[p.Server]++
	}
	return out
}

// Every unit is planned once, to the servers whose routes match, with a
// record of the unit and of each script; a restarted planner goes on where
// it stopped and publishes nothing twice.
func TestDispatcherPlansEveryUnitOnce(t *testing.T) {
	r := newRig(t)
	last := r.sites(t, 0, 10)
	bus := r.bus(t)
	db := openDB(t)
	d := r.start(t, db, bus)
	d.wait(t, last)
	if got := planCount(t, r.env.JS); got["a"] != 5 || got["b"] != 10 {
		t.Fatalf("plans per server = %v, want a:5 b:10", got)
	}
	units := queued[events.UnitPlanned](t, r.env.JS, events.StreamResults, events.SubjectUnits)
	scripts := queued[events.ScriptPlanned](t, r.env.JS, events.StreamResults, "orchestra.res.>")
	if len(units) != 10 || len(scripts) != 15 {
		t.Fatalf("%d unit records and %d script records, want 10 and 15", len(units), len(scripts))
	}
	for _, s := range scripts {
		if s.State != events.StateReceived || !strings.Contains(s.Script, "echo on '"+s.Server+"'") {
			t.Errorf("script record %+v", s)
		}
	}
	if err := d.stop(); err != nil {
		t.Fatal(err)
	}

	// Units appended while no planner runs, and a unit that calls for no
	// operation, are planned by the next one; nothing is sent again.
	r.apply(t, `{"kind":"Server","name":"b","method":"local","address":"127.0.0.1","labels":{"x":"y"}}`)
	last = r.sites(t, 10, 12)
	d = r.start(t, db, bus)
	d.wait(t, last)
	if got := planCount(t, r.env.JS); got["a"] != 6 || got["b"] != 12 {
		t.Fatalf("plans per server after a restart = %v, want a:6 b:12", got)
	}
	if err := d.stop(); err != nil { // a stop commits what is pending
		t.Fatal(err)
	}
	if cp, err := db.Checkpoint(context.Background(), projections.DispatcherName); err != nil || cp != last {
		t.Fatalf("checkpoint %d, %v; want %d", cp, err, last)
	}
}

// A planner whose store was lost (or rebuilt) folds the log again but
// publishes nothing the mark says was published, then plans new units
// with the model it folded.
func TestDispatcherWithALostStorePublishesNothingTwice(t *testing.T) {
	r := newRig(t)
	last := r.sites(t, 0, 6)
	bus := r.bus(t)
	d := r.start(t, openDB(t), bus)
	d.wait(t, last)
	if err := d.stop(); err != nil {
		t.Fatal(err)
	}
	counting := &countingOutbox{Outbox: r.bus(t)}
	d = r.start(t, openDB(t), counting)
	d.wait(t, last)
	if n := counting.plans.Load(); n != 0 {
		t.Fatalf("a planner with a new store sent %d plans of units already published", n)
	}
	last = r.apply(t, `{"kind":"Resource","type":"website","name":"s1","attrs":{"n":2}}`)
	d.wait(t, last)
	if n := counting.plans.Load(); n != 2 {
		t.Fatalf("the change after the rebuild sent %d plans, want 2 (a and b)", n)
	}
	if got := planCount(t, r.env.JS); got["a"] != 4 || got["b"] != 7 {
		t.Fatalf("plans per server = %v, want a:4 b:7", got)
	}
}

// A planner that dies after publishing a batch but before marking it
// does not publish that batch again: at start-up it finds the plans on the
// servers' queues. The test does not lean on JetStream's de-duplication
// window: it counts what the second planner hands the outbox.
func TestDispatcherRecoversAPublishedUnmarkedBatch(t *testing.T) {
	r := newRig(t)
	last := r.sites(t, 0, 8)
	db := openDB(t)
	d := r.start(t, db, failingMark{r.bus(t)})
	if err := d.ended(); err == nil || !strings.Contains(err.Error(), "mark") {
		t.Fatalf("the planner ended with %v, want the mark's failure", err)
	}
	if got := planCount(t, r.env.JS); got["a"] != 4 || got["b"] != 8 {
		t.Fatalf("plans after the failed batch = %v, want a:4 b:8", got)
	}
	counting := &countingOutbox{Outbox: r.bus(t)}
	d = r.start(t, db, counting)
	d.wait(t, last)
	if n := counting.plans.Load(); n != 0 {
		t.Fatalf("the restarted planner sent %d plans that were on the queues already", n)
	}
	last = r.sites(t, 8, 9)
	d.wait(t, last)
	if got := planCount(t, r.env.JS); got["a"] != 5 || got["b"] != 9 {
		t.Fatalf("plans per server = %v, want a:5 b:9", got)
	}
}

// Two planners on one log: the mark lets only one go on.
func TestSecondDispatcherStops(t *testing.T) {
	r := newRig(t)
	first := r.start(t, openDB(t), r.bus(t))
	second := r.start(t, openDB(t), r.bus(t))
	ended := make(chan error, 2)
	for _, d := range []*running{first, second} {
		go func() { ended <- d.ended() }()
	}
	deadline := time.Now().Add(30 * time.Second)
	for n := 0; ; n++ {
		r.sites(t, n, n+1)
		select {
		case err := <-ended:
			if err == nil || !strings.Contains(err.Error(), "another planner") {
				t.Fatalf("a planner ended with %v", err)
			}
		default:
			if time.Now().After(deadline) {
				t.Fatal("two planners ran side by side for 30s")
			}
			continue
		}
		break
	}
	planCount(t, r.env.JS) // fails on a unit planned twice
}

// countingOutbox counts the plans handed to it.
type countingOutbox struct {
	projections.Outbox
	plans atomic.Int64
}

func (c *countingOutbox) Send(ctx context.Context, plans []events.Plan, records []events.Result) error {
	c.plans.Add(int64(len(plans)))
	return c.Outbox.Send(ctx, plans, records)
}

// failingMark publishes but never marks: a crash between the two.
type failingMark struct{ projections.Outbox }

func (failingMark) SetMark(context.Context, uint64) error {
	return errors.New("mark: the process died here")
}
