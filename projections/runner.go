package projections

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/orchestra-fleet/orchestra/events"
)

// Row is one document of a read model. Projections return rows; a Store
// keeps them.
type Row struct {
	Table   string
	Key     string
	Group   string // a second key rows are listed by (a resource's type); may be empty
	Version uint64 // stream sequence of the event that wrote the row
	Doc     json.RawMessage
	Deleted bool // remove the row instead of writing Doc
}

// Projection is a pure fold of the log into rows: no I/O, time only from the
// event.
type Projection interface {
	// Name identifies the projection's checkpoint.
	Name() string
	// Apply returns the row changes e causes, nil for events it ignores.
	Apply(e events.Envelope) ([]Row, error)
}

// ErrNotFound is returned by Store.Get for a key it does not hold.
var ErrNotFound = errors.New("not found")

// Query selects rows of one table, in key order, after a key.
type Query struct {
	Table string
	Group string // "" = every group
	After string // "" = from the first key
	Limit int
}

// Store keeps read-model rows and each projection's checkpoint.
// infra/sqlite implements it; projectionstest is its acceptance suite.
type Store interface {
	// Checkpoint is the stream sequence projection has reached, 0 if none.
	Checkpoint(ctx context.Context, projection string) (uint64, error)
	// Commit writes rows and moves projection's checkpoint to seq, in one
	// transaction. A seq at or below the checkpoint is refused: the rows
	// were committed before.
	Commit(ctx context.Context, projection string, seq uint64, rows []Row) error
	Get(ctx context.Context, table, key string) (Row, error)
	List(ctx context.Context, q Query) ([]Row, error)
}

// Source feeds a projection the log live, from a sequence on, in batches.
// The batch slice is reused between calls.
type Source interface {
	Follow(ctx context.Context, from uint64, fn func([]events.Envelope) error) error
}

// Runner keeps one projection's read model up to date: it follows the log
// from the checkpoint and commits the rows of what it read, with the last
// sequence, in one transaction.
//
// Commits are spaced by at least MinCommitInterval: an event that arrives
// after a quiet spell is committed at once, while a steady stream of writes
// is committed in batches, so the read model costs one transaction per
// interval instead of one per event and leaves the CPU to the writes.
type Runner struct {
	proj  Projection
	store Store
	src   Source

	progress
}

// progress is how far a projection has got, and a way to wait for it.
type progress struct {
	mu      sync.Mutex
	seq     uint64
	advance chan struct{} // closed and replaced whenever seq moves; nil until then
}

func (p *progress) moved(seq uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seq = seq
	if p.advance != nil {
		close(p.advance)
	}
	p.advance = make(chan struct{})
}

// Seq is the sequence the projection has reached.
func (p *progress) Seq() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seq
}

// WaitFor returns once the projection has reached seq, or ctx's error.
func (p *progress) WaitFor(ctx context.Context, seq uint64) error {
	for {
		p.mu.Lock()
		if p.advance == nil {
			p.advance = make(chan struct{})
		}
		reached, advance := p.seq >= seq, p.advance
		p.mu.Unlock()
		if reached {
			return nil
		}
		select {
		case <-advance:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// MinCommitInterval is the least time between two commits of a runner.
const MinCommitInterval = 2 * time.Millisecond

// maxPendingRows bounds what a runner holds before committing: beyond it,
// following waits for the commit.
const maxPendingRows = 5000

// NewRunner returns a runner for proj.
func NewRunner(proj Projection, store Store, src Source) *Runner {
	return &Runner{proj: proj, store: store, src: src}
}

// pending is what the runner has read and not yet committed.
type pending struct {
	mu    sync.Mutex
	rows  []Row
	last  uint64        // sequence of the last event read; 0: nothing pending
	ready chan struct{} // has a value when something is pending
	room  chan struct{} // has a value when rows drop below maxPendingRows
}

// Run follows the log until ctx ends or a batch cannot be applied.
func (r *Runner) Run(ctx context.Context) error {
	from, err := r.store.Checkpoint(ctx, r.proj.Name())
	if err != nil {
		return fmt.Errorf("projection %s: %w", r.proj.Name(), err)
	}
	r.moved(from)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	p := &pending{ready: make(chan struct{}, 1), room: make(chan struct{}, 1)}
	committed := make(chan error, 1)
	go func() {
		err := r.commitLoop(ctx, p)
		cancel()
		committed <- err
	}()
	err = r.src.Follow(ctx, from+1, func(batch []events.Envelope) error {
		var rows []Row
		for _, e := range batch {
			out, err := r.proj.Apply(e)
			if err != nil {
				return fmt.Errorf("projection %s: event %d: %w", r.proj.Name(), e.Sequence, err)
			}
			rows = append(rows, out...)
		}
		for {
			p.mu.Lock()
			if len(p.rows) < maxPendingRows {
				p.rows = append(p.rows, rows...)
				p.last = batch[len(batch)-1].Sequence
				p.mu.Unlock()
				select {
				case p.ready <- struct{}{}:
				default:
				}
				return nil
			}
			p.mu.Unlock()
			select {
			case <-p.room:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	})
	cancel()
	if cerr := <-committed; cerr != nil && !errors.Is(cerr, context.Canceled) {
		return cerr
	}
	return err
}

// commitLoop commits what is pending, no sooner than MinCommitInterval
// after the previous commit.
func (r *Runner) commitLoop(ctx context.Context, p *pending) error {
	var last time.Time
	for {
		select {
		case <-p.ready:
		case <-ctx.Done():
			return ctx.Err()
		}
		if wait := MinCommitInterval - time.Since(last); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			}
		}
		p.mu.Lock()
		rows, seq := p.rows, p.last
		p.rows, p.last = nil, 0
		p.mu.Unlock()
		select {
		case p.room <- struct{}{}:
		default:
		}
		if seq == 0 {
			continue
		}
		// A commit under way finishes even when the runner is stopping:
		// cancelling it would only throw its work away.
		if err := r.store.Commit(context.WithoutCancel(ctx), r.proj.Name(), seq, rows); err != nil {
			return fmt.Errorf("projection %s: commit %d: %w", r.proj.Name(), seq, err)
		}
		last = time.Now()
		r.moved(seq)
	}
}
