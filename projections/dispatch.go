package projections

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/services"
)

// Outbox is where the dispatcher's plans and records go: infra/planbus
// implements it on JetStream.
type Outbox interface {
	// Mark is the EVENTS sequence up to which units have been planned and
	// published, as every planning process sees it; 0 at first.
	Mark(ctx context.Context) (uint64, error)
	// SetMark moves the mark to seq. It fails when another process moved
	// it since this one last read or set it: two planners never publish.
	SetMark(ctx context.Context, seq uint64) error
	// Published is the EVENTS sequence of the last unit whose plan is on
	// server's queue, or on any server's queue when server is "" (0: none).
	Published(ctx context.Context, server string) (uint64, error)
	// Send publishes plans and records and returns once every one is
	// stored. Each carries an id, so sending it again stores it once.
	Send(ctx context.Context, plans []events.Plan, records []events.Result) error
	// MaxPlan is the largest plan message the outbox can carry, in bytes.
	MaxPlan() int
}

// DispatcherName is the dispatcher's checkpoint and the table of its model.
const DispatcherName = "planner"

// Dispatcher is the planner at work: it follows the log in commit order,
// keeps its PlanModel in the store with a checkpoint, and plans every unit
// of work exactly once, publishing one plan per server and a record of
// every script and unit.
//
// Exactly once rests on three things. Plans and records carry ids derived
// from the unit, so a unit published twice in a row is stored once. The
// outbox's mark says how far publishing got, so units the mark covers are
// only folded, never published again, even when the store was lost. And
// units between the mark and the last plan on the queues at start-up (a
// crash after publishing, before the mark caught up) are published only to
// servers whose queue does not have them yet. The mark moves with each
// commit of the model, just before it.
type Dispatcher struct {
	progress
	reg      *events.Registry
	store    Store
	src      Source
	out      Outbox
	renderer Renderer

	model    *PlanModel
	mark     uint64            // units at or below were published before this run began
	marked   uint64            // the mark as this run last set it (the commit loop's)
	horizon  uint64            // units at or below may be on a queue already
	lastPlan map[string]uint64 // server → sequence of its last queued plan, for units below horizon
}

// NewDispatcher returns a dispatcher. renderer opens secrets for the
// plans; the dispatcher also has it show them masked for the records.
func NewDispatcher(reg *events.Registry, store Store, src Source, out Outbox, renderer Renderer) *Dispatcher {
	renderer.Show = true
	if renderer.MaxScript <= 0 || renderer.MaxScript > out.MaxPlan() {
		renderer.MaxScript = out.MaxPlan()
	}
	return &Dispatcher{reg: reg, store: store, src: src, out: out, renderer: renderer}
}

// Run plans until ctx ends or planning fails. Each batch of the log is
// planned and published at once; the model, the checkpoint and the mark
// follow in the background, at most every MinCommitInterval.
func (d *Dispatcher) Run(ctx context.Context) error {
	if err := d.start(ctx); err != nil {
		return fmt.Errorf("planner: %w", err)
	}
	// No retries: a commit that fails (another planner moved the mark)
	// stops the planner.
	c := newCommitter(DispatcherName, func(ctx context.Context, seq uint64, rows []Row) error {
		if err := d.setMark(ctx, seq); err != nil {
			return err
		}
		return d.store.Commit(ctx, DispatcherName, seq, rows)
	}, nil, nil)
	var unit []events.Envelope
	return c.run(ctx, func(ctx context.Context) error {
		return d.src.Follow(ctx, d.Seq()+1, func(batch []events.Envelope) error {
			var b outgoing
			for _, e := range batch {
				unit = append(unit, e)
				if e.UnitIndex < e.UnitSize-1 {
					continue // the rest of the unit is in the next batch
				}
				if err := d.unit(ctx, unit, &b); err != nil {
					return fmt.Errorf("planner: unit %s at %d: %w", e.Unit, e.Sequence, err)
				}
				unit = unit[:0]
			}
			if b.last == 0 {
				return nil
			}
			if b.publish {
				if err := d.out.Send(ctx, b.plans, b.records); err != nil {
					return fmt.Errorf("planner: %w", err)
				}
			}
			d.moved(b.last)
			return c.add(ctx, b.rows, b.last)
		})
	})
}

// setMark moves the outbox's mark before a commit: every unit up to seq
// has been published (or called for nothing).
func (d *Dispatcher) setMark(ctx context.Context, seq uint64) error {
	if seq <= d.marked {
		return nil
	}
	if err := d.out.SetMark(ctx, seq); err != nil {
		return err
	}
	d.marked = seq
	return nil
}

// start loads the model and checkpoint and learns how far publishing got.
func (d *Dispatcher) start(ctx context.Context) error {
	cp, err := d.store.Checkpoint(ctx, DispatcherName)
	if err != nil {
		return err
	}
	d.model = NewPlanModel()
	if err := d.load(ctx); err != nil {
		return err
	}
	if d.mark, err = d.out.Mark(ctx); err != nil {
		return err
	}
	d.marked = d.mark
	if d.horizon, err = d.out.Published(ctx, ""); err != nil {
		return err
	}
	d.lastPlan = map[string]uint64{}
	d.moved(cp)
	return nil
}

// load reads the model the store holds.
func (d *Dispatcher) load(ctx context.Context) error {
	after := ""
	for {
		rows, err := d.store.List(ctx, Query{Table: DispatcherName, After: after, Limit: 1000})
		if err != nil {
			return fmt.Errorf("load model: %w", err)
		}
		for _, r := range rows {
			if err := d.model.restore(r); err != nil {
				return fmt.Errorf("load model: %s: %w", r.Key, err)
			}
		}
		if len(rows) < 1000 {
			return nil
		}
		after = rows[len(rows)-1].Key
	}
}

// outgoing is what a batch of units sends and commits.
type outgoing struct {
	plans   []events.Plan
	records []events.Result
	rows    []Row
	last    uint64 // sequence of the last complete unit
	publish bool   // a unit beyond the mark calls for plans or records
}

// unit plans one complete unit of work into b.
func (d *Dispatcher) unit(ctx context.Context, unit []events.Envelope, b *outgoing) error {
	payloads := make([]events.Payload, len(unit))
	for i, e := range unit {
		p, err := d.reg.Payload(e)
		if err != nil {
			return fmt.Errorf("event %d: %w", e.Sequence, err)
		}
		payloads[i] = p
		if row, ok := modelRow(e.Sequence, p); ok {
			b.rows = append(b.rows, row)
		}
	}
	last := unit[len(unit)-1]
	b.last = last.Sequence
	ops := d.model.Collect(payloads)
	if last.Sequence <= d.mark || len(ops) == 0 {
		return nil
	}
	b.publish = true
	plan := d.renderer.Plan(d.model, ops)
	rec := &events.UnitPlanned{Unit: last.Unit, Sequence: last.Sequence, Operations: len(ops), Time: last.Time,
		Scripts: []events.ScriptSummary{}, Dropped: make([]events.DroppedOp, 0, len(plan.Dropped))}
	for _, dr := range plan.Dropped {
		rec.Dropped = append(rec.Dropped, events.DroppedOp{Operation: dr.Operation.Ref(), Route: dr.Route, Reason: dr.Reason})
	}
	for _, sp := range plan.Servers {
		msg := events.Plan{Unit: last.Unit, Sequence: last.Sequence, Server: sp.Name, Time: last.Time}
		scripts := make([]*events.ScriptPlanned, len(sp.Scripts))
		for i, s := range sp.Scripts {
			scripts[i] = scriptRecord(last, sp.Name, s)
			if s.State == events.StateReceived {
				msg.Scripts = append(msg.Scripts, events.PlanScript{ID: scripts[i].ID, Backend: s.Backend,
					Executable: s.Executable, Timeout: s.Timeout, Async: s.Async, Operations: scripts[i].Operations, Script: s.Text})
			}
		}
		if len(msg.Scripts) > 0 {
			queued, err := d.queued(ctx, sp.Name, last.Sequence)
			if err != nil {
				return err
			}
			switch size := planSize(msg); {
			case size > d.out.MaxPlan():
				for _, r := range scripts {
					if r.State == events.StateReceived {
						r.State, r.Reason, r.Script = events.StateError, fmt.Sprintf("the plan for %s is %d bytes, more than the %d a message may carry; apply fewer resources at a time", sp.Name, size, d.out.MaxPlan()), ""
					}
				}
			case !queued:
				b.plans = append(b.plans, msg)
			}
		}
		for i, r := range scripts {
			rec.Scripts = append(rec.Scripts, events.ScriptSummary{ID: r.ID, Server: r.Server, Backend: r.Backend, State: r.State, Async: sp.Scripts[i].Async})
			b.records = append(b.records, r)
		}
	}
	b.records = append(b.records, rec)
	return nil
}

// queued reports whether the plan of the unit at seq for server is on the
// server's queue already: only possible below the start-up horizon.
func (d *Dispatcher) queued(ctx context.Context, server string, seq uint64) (bool, error) {
	if seq > d.horizon {
		return false, nil
	}
	last, ok := d.lastPlan[server]
	if !ok {
		var err error
		if last, err = d.out.Published(ctx, server); err != nil {
			return false, err
		}
		d.lastPlan[server] = last
	}
	return seq <= last, nil
}

// scriptRecord is the record of script s of the unit ending with last.
func scriptRecord(last events.Envelope, server string, s Script) *events.ScriptPlanned {
	r := &events.ScriptPlanned{ID: events.ScriptID(last.Unit, server, s.Backend), Unit: last.Unit, Sequence: last.Sequence,
		Server: server, Backend: s.Backend, Operations: make([]events.OperationRef, len(s.Operations)),
		State: s.State, Reason: s.Reason, Script: s.Text, Time: last.Time}
	if s.Shown != "" {
		r.Script = s.Shown
	}
	for i, op := range s.Operations {
		r.Operations[i] = op.Ref()
	}
	return r
}

// planSize is the size of msg as JSON.
func planSize(msg events.Plan) int {
	data, err := json.Marshal(msg)
	if err != nil {
		return 0 // a plan always marshals
	}
	return len(data)
}

// Keys of the dispatcher's model rows: "<kind>/<name>".
const (
	rowServer   = "server/"
	rowBackend  = "backend/"
	rowRoute    = "route/"
	rowResource = "resource/"
)

// modelRow is the row an event of the model writes, if it is one.
func modelRow(seq uint64, p events.Payload) (Row, bool) {
	var key string
	var doc any
	switch p := p.(type) {
	case *events.ServerSaved:
		key, doc = rowServer+p.Server.Name, p.Server
	case *events.ServerDeleted:
		key = rowServer + p.Name
	case *events.BackendSaved:
		key, doc = rowBackend+p.Backend.Name, p.Backend
	case *events.BackendDeleted:
		key = rowBackend + p.Name
	case *events.RouteSaved:
		key, doc = rowRoute+services.RouteName(p.Route.Backend, p.Route.Server), p.Route
	case *events.RouteDeleted:
		key = rowRoute + services.RouteName(p.Backend, p.Server)
	case *events.ResourceSaved:
		key, doc = rowResource+services.ResourceName(p.Resource.Type, p.Resource.Name), p.Resource
	case *events.ResourceDeleted:
		key = rowResource + services.ResourceName(p.Type, p.Name)
	default:
		return Row{}, false
	}
	row := Row{Table: DispatcherName, Key: key, Version: seq, Deleted: doc == nil}
	if doc != nil {
		row.Doc, _ = json.Marshal(doc) // model values always marshal
	}
	return row, true
}

// restore puts one stored row back into m.
func (m *PlanModel) restore(r Row) error {
	var err error
	switch {
	case strings.HasPrefix(r.Key, rowServer):
		var v events.Server
		if err = json.Unmarshal(r.Doc, &v); err == nil {
			m.servers[v.Name] = v
		}
	case strings.HasPrefix(r.Key, rowBackend):
		var v events.Backend
		if err = json.Unmarshal(r.Doc, &v); err == nil {
			m.backends[v.Name] = v
		}
	case strings.HasPrefix(r.Key, rowRoute):
		var v events.Route
		if err = json.Unmarshal(r.Doc, &v); err == nil {
			m.routes[services.RouteName(v.Backend, v.Server)] = v
		}
	case strings.HasPrefix(r.Key, rowResource):
		var v events.Resource
		if err = json.Unmarshal(r.Doc, &v); err == nil {
			m.resources[services.ResourceName(v.Type, v.Name)] = v
		}
	default:
		err = errors.New("not a row of the planner's model")
	}
	return err
}
