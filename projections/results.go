package projections

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/google/uuid"

	"github.com/orchestra-fleet/orchestra/events"
)

// ResultsName is the checkpoint name of the results read models.
const ResultsName = "results"

// The results read models — script logs, units of work, servers and
// resource history — are folded from RESULTS (the planner's records and
// the executors' results). A script's log gathers many messages (planned,
// started, output chunks, finished), so unlike Model the fold reads what
// it has folded before: the store loads each record it asks for into a
// working set, the fold changes it, and the store writes back what
// changed with the checkpoint, in one transaction.

// ResultEnvelope is a result with where it is in RESULTS.
type ResultEnvelope struct {
	Sequence uint64
	Subject  string
	Server   string    // the server a script's subject names
	Time     time.Time // when the stream stored it
	// Result is nil when Err says why the message is not a well-formed
	// result; nil with no Err, the envelope is a position only (RESULTS
	// has gone past this sequence and retention removed what was before).
	Result events.Result
	Err    error
}

// UnitLog is a unit of work's roll-up: what was planned, dropped, and
// what became of each script.
type UnitLog struct {
	Unit       uuid.UUID          `json:"unit"`
	Sequence   uint64             `json:"sequence"` // EVENTS sequence of the unit's last event
	Operations int                `json:"operations"`
	Dropped    []events.DroppedOp `json:"dropped"`
	Scripts    []UnitScript       `json:"scripts"`
	Counts     UnitCounts         `json:"counts"`
	Planned    time.Time          `json:"planned"`
}

// UnitScript is one script of a unit and its state now.
type UnitScript struct {
	ID      uuid.UUID `json:"id"`
	Server  string    `json:"server"`
	Backend string    `json:"backend"`
	Async   bool      `json:"async,omitempty"`
	State   string    `json:"state"`
}

// UnitCounts counts a unit's scripts by what became of them.
type UnitCounts struct {
	Queued    int `json:"queued"`    // RECEIVED
	Running   int `json:"running"`   // STARTED
	Succeeded int `json:"succeeded"` // SUCCESS or NOTHING
	Failed    int `json:"failed"`    // every other final state
}

// count recounts u's scripts.
func (u *UnitLog) count() {
	u.Counts = UnitCounts{}
	for _, s := range u.Scripts {
		switch s.State {
		case events.StateReceived:
			u.Counts.Queued++
		case events.StateStarted:
			u.Counts.Running++
		case events.StateSuccess, events.StateNothing:
			u.Counts.Succeeded++
		default:
			u.Counts.Failed++
		}
	}
}

// ServerStatus is what the results say about a server.
type ServerStatus struct {
	Name       string    `json:"name"`
	LastScript uuid.UUID `json:"last_script"`
	LastState  string    `json:"last_state"`
	LastSeen   time.Time `json:"last_seen"` // the last result from the server
	// Reachable: the last attempt on the server got to run its script (or
	// the last script never needed it to); false when it could not
	// connect or its method failed before the script started.
	Reachable bool   `json:"reachable"`
	Reason    string `json:"reason,omitempty"` // why it is unreachable
}

// ResourceOp is one operation on a resource, as its history lists it:
// the script that carried it, or the reason it was dropped.
type ResourceOp struct {
	Sequence uint64    `json:"seq"` // RESULTS sequence of the record
	Unit     uuid.UUID `json:"unit"`
	Action   string    `json:"action"`
	Backend  string    `json:"backend"`
	Script   uuid.UUID `json:"script,omitzero"`
	Server   string    `json:"server,omitempty"`
	State    string    `json:"state"` // the script's state, or DROPPED
	Reason   string    `json:"reason,omitempty"`
	Time     time.Time `json:"time"`
	Index    int       `json:"-"` // position among the record's operations
}

// HistoryCursor is a position in a resource's history, which goes from
// the newest record to the oldest and, within a record, in the order of
// its operations: the zero value is the start.
type HistoryCursor struct {
	Seq   uint64
	Index int
}

// ErrRejected is a result that can never be folded: the store records it
// as rejected and goes on.
var ErrRejected = errors.New("rejected")

// StateDropped is the state of an operation no route took.
const StateDropped = "DROPPED"

// Working is the part of the read models a fold changes, loaded by the
// store. Script and Unit return nil for records the store does not hold
// (yet); a record given to Put is written with the checkpoint.
type Working interface {
	Script(id uuid.UUID) (*ScriptLog, error)
	Unit(id uuid.UUID) (*UnitLog, error)
	Server(name string) (*ServerStatus, error)
	PutScript(l *ScriptLog)
	PutUnit(u *UnitLog)
	PutServer(s *ServerStatus)
	// AddOperations records operations on resources; each carries its
	// type and name in op.
	AddOperations(ops []ResourceOpOf)
}

// ResourceOpOf is a ResourceOp with the resource it is about.
type ResourceOpOf struct {
	Type, Name string
	ResourceOp
}

// FoldResult folds one result into the read models.
//
// An envelope without a result changes nothing: a position, or a message
// that is not a well-formed result, which the store records as rejected
// and the runner reports.
func FoldResult(w Working, e ResultEnvelope) error {
	switch r := e.Result.(type) {
	case *events.UnitPlanned:
		return foldUnit(w, e.Sequence, r)
	case *events.ScriptPlanned:
		l, err := scriptLog(w, r.ID, e.Sequence)
		if err != nil {
			return err
		}
		l.Fold(r)
		l.Updated = e.Time
		w.PutScript(l)
		ops := make([]ResourceOpOf, len(r.Operations))
		for i, op := range r.Operations {
			ops[i] = ResourceOpOf{op.Type, op.Name, ResourceOp{Sequence: e.Sequence, Unit: r.Unit, Action: op.Action,
				Backend: op.Backend, Script: r.ID, Server: r.Server, State: r.State, Reason: r.Reason, Time: r.Time}}
		}
		w.AddOperations(ops)
		return touch(w, l)
	case *events.ScriptStarted:
		return foldScript(w, e, r.ID, r.Attempt)
	case *events.ScriptOutput:
		l, err := w.Script(r.ID)
		if err != nil || l == nil {
			return err // output of a script whose start expired: nothing to add it to
		}
		if e.Server != "" && l.Server != e.Server {
			return fmt.Errorf("%w: output of script %s of server %q published under server %q", ErrRejected, r.ID, l.Server, e.Server)
		}
		l.Fold(r)
		l.Updated = e.Time
		w.PutScript(l)
		return nil
	case *events.ScriptFinished:
		return foldScript(w, e, r.ID, r.Attempt)
	}
	return nil
}

// scriptLog is id's log, a new one first seen at seq if there is none.
func scriptLog(w Working, id uuid.UUID, seq uint64) (*ScriptLog, error) {
	l, err := w.Script(id)
	if err != nil || l != nil {
		return l, err
	}
	return &ScriptLog{ScriptEntry: ScriptEntry{ID: id, Seq: seq}}, nil
}

// foldScript folds a start or an end of an attempt into a script's log,
// its unit and its server. A result of an attempt older than the latest
// says nothing of the server now.
func foldScript(w Working, e ResultEnvelope, id uuid.UUID, attempt int) error {
	l, err := scriptLog(w, id, e.Sequence)
	if err != nil {
		return err
	}
	stale := attempt < l.Attempt
	r := e.Result
	l.Fold(r)
	l.Updated = e.Time
	w.PutScript(l)
	if stale {
		return touch(w, l)
	}
	s, err := w.Server(l.Server)
	if err != nil {
		return err
	}
	if s == nil {
		s = &ServerStatus{Name: l.Server}
	}
	s.LastScript, s.LastState = l.ID, l.State
	switch r := r.(type) {
	case *events.ScriptStarted:
		s.LastSeen, s.Reachable, s.Reason = r.Time, true, ""
	case *events.ScriptFinished:
		s.LastSeen = r.Time
		// An attempt that never started could not reach the server.
		s.Reachable = !r.Started.IsZero() || (r.State != events.StateTimeout && r.State != events.StateError)
		if s.Reachable {
			s.Reason = ""
		} else {
			s.Reason = r.Reason
		}
	}
	w.PutServer(s)
	return touch(w, l)
}

// touch brings the unit's entry for l up to date, when the unit's record
// is already there.
func touch(w Working, l *ScriptLog) error {
	u, err := w.Unit(l.Unit)
	if err != nil || u == nil {
		return err
	}
	i := slices.IndexFunc(u.Scripts, func(s UnitScript) bool { return s.ID == l.ID })
	if i < 0 || u.Scripts[i].State == l.State {
		return nil
	}
	u.Scripts[i].State = l.State
	u.count()
	w.PutUnit(u)
	return nil
}

// foldUnit records a unit's plan. Scripts whose results came first keep
// their state.
func foldUnit(w Working, seq uint64, r *events.UnitPlanned) error {
	u := &UnitLog{Unit: r.Unit, Sequence: r.Sequence, Operations: r.Operations, Dropped: r.Dropped, Planned: r.Time,
		Scripts: make([]UnitScript, len(r.Scripts))}
	if u.Dropped == nil {
		u.Dropped = []events.DroppedOp{}
	}
	for i, s := range r.Scripts {
		u.Scripts[i] = UnitScript{ID: s.ID, Server: s.Server, Backend: s.Backend, Async: s.Async, State: s.State}
		l, err := w.Script(s.ID)
		if err != nil {
			return err
		}
		if l != nil && l.State != "" {
			u.Scripts[i].State = l.State
		}
	}
	u.count()
	w.PutUnit(u)
	ops := make([]ResourceOpOf, len(r.Dropped))
	for i, d := range r.Dropped {
		op := d.Operation
		ops[i] = ResourceOpOf{op.Type, op.Name, ResourceOp{Sequence: seq, Unit: r.Unit, Action: op.Action,
			Backend: op.Backend, State: StateDropped, Reason: d.Reason, Time: r.Time}}
	}
	w.AddOperations(ops)
	return nil
}

// ScriptFilter selects script logs; empty fields select everything.
type ScriptFilter struct {
	Server, Backend, State string
	Unit                   uuid.UUID
	Type, Name             string    // the resource an operation of the script is about; Name needs Type
	Since, Until           time.Time // created in [Since, Until)
	Before                 uint64    // only logs with Seq below this: the cursor
	Limit                  int
}

// EntryDoc is a script entry as the read model stores it.
type EntryDoc struct {
	Seq   uint64
	Entry json.RawMessage // a ScriptEntry
}

// ResultsReader answers queries of the results read models.
type ResultsReader interface {
	Script(ctx context.Context, id uuid.UUID) (ScriptLog, error)
	// Scripts lists script entries, newest first, as stored (JSON of a
	// ScriptEntry): a listing passes them on without decoding them.
	Scripts(ctx context.Context, f ScriptFilter) ([]EntryDoc, error)
	Unit(ctx context.Context, id uuid.UUID) (UnitLog, error)
	ServerStatus(ctx context.Context, name string) (ServerStatus, error)
	// ServerStatuses is every server's status, by name.
	ServerStatuses(ctx context.Context) ([]ServerStatus, error)
	History(ctx context.Context, typ, name string, after HistoryCursor, limit int) ([]ResourceOp, error)
}

// ResultsStore keeps the results read models and their checkpoint.
// infra/sqlite implements it.
type ResultsStore interface {
	Checkpoint(ctx context.Context, projection string) (uint64, error)
	// CommitResults folds batch into the read models with FoldResult,
	// records the envelopes that carry an Err as rejected, and moves the
	// checkpoint to seq, in one transaction.
	CommitResults(ctx context.Context, seq uint64, batch []ResultEnvelope) error
}

// ResultsSource feeds the results read models RESULTS live, from a
// sequence on, in batches. The batch slice is reused between calls.
type ResultsSource interface {
	FollowResults(ctx context.Context, from uint64, fn func([]ResultEnvelope) error) error
}

// ResultsRunner keeps the results read models up to date, as Runner does
// the model's.
type ResultsRunner struct {
	store ResultsStore
	src   ResultsSource
	log   *slog.Logger

	progress
}

// NewResultsRunner returns a runner of the results read models in store.
// A batch that cannot be committed is retried with backoff and reported to
// log with its sequence; a message that is not a well-formed result (not
// JSON, or about another server than its subject's) is reported to log
// with its sequence and recorded as rejected in the store — retrying it
// could only fail again, and would hold every server's logs back.
func NewResultsRunner(store ResultsStore, src ResultsSource, log *slog.Logger) *ResultsRunner {
	return &ResultsRunner{store: store, src: src, log: log}
}

// Run follows RESULTS until ctx ends.
func (r *ResultsRunner) Run(ctx context.Context) error {
	from, err := r.store.Checkpoint(ctx, ResultsName)
	if err != nil {
		return fmt.Errorf("projection %s: %w", ResultsName, err)
	}
	r.moved(from)
	c := newCommitter(ResultsName, r.store.CommitResults, r.moved, r.log)
	return c.run(ctx, func(ctx context.Context) error {
		return r.src.FollowResults(ctx, from+1, func(batch []ResultEnvelope) error {
			for _, e := range batch {
				if e.Err != nil {
					r.log.Error("a message on RESULTS is not a well-formed result; recorded as rejected and passed over",
						"seq", e.Sequence, "subject", e.Subject, "err", e.Err)
				}
			}
			return c.add(ctx, batch, batch[len(batch)-1].Sequence)
		})
	})
}
