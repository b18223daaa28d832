package projections

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
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
	log   *slog.Logger

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

// NewRunner returns a runner for proj. An event it cannot apply, or a
// commit that fails, is retried with backoff and reported to log with the
// event's sequence: the read model stops there rather than skip it.
func NewRunner(proj Projection, store Store, src Source, log *slog.Logger) *Runner {
	return &Runner{proj: proj, store: store, src: src, log: log}
}

// Run follows the log until ctx ends or a batch cannot be applied.
func (r *Runner) Run(ctx context.Context) error {
	from, err := r.store.Checkpoint(ctx, r.proj.Name())
	if err != nil {
		return fmt.Errorf("projection %s: %w", r.proj.Name(), err)
	}
	r.moved(from)
	c := newCommitter(r.proj.Name(), func(ctx context.Context, seq uint64, rows []Row) error {
		return r.store.Commit(ctx, r.proj.Name(), seq, rows)
	}, r.moved, r.log)
	return c.run(ctx, func(ctx context.Context) error {
		return r.src.Follow(ctx, from+1, func(batch []events.Envelope) error {
			var rows []Row
			for _, e := range batch {
				err := retry(ctx, r.log, r.proj.Name(), e.Sequence, func() error {
					out, err := r.proj.Apply(e)
					if err == nil {
						rows = append(rows, out...)
					}
					return err
				})
				if err != nil {
					return fmt.Errorf("projection %s: event %d: %w", r.proj.Name(), e.Sequence, err)
				}
			}
			return c.add(ctx, rows, batch[len(batch)-1].Sequence)
		})
	})
}

// EventError is a failure to apply the event at Seq: what a store returns
// when a fold fails inside a commit, so that the failure is reported at
// the event rather than at the end of its batch.
type EventError struct {
	Seq uint64
	Err error
}

func (e *EventError) Error() string { return fmt.Sprintf("event %d: %v", e.Seq, e.Err) }
func (e *EventError) Unwrap() error { return e.Err }

// Backoff of a projection that fails on an event.
const (
	firstRetry = 100 * time.Millisecond
	maxRetry   = 30 * time.Second
)

// retry runs fn until it succeeds or ctx ends, waiting longer after each
// failure, and reports each failure to log with the sequence of the event
// it failed on: the one an *EventError in the error names, or seq. With a
// nil log there is no retry: fn's error is returned.
func retry(ctx context.Context, log *slog.Logger, projection string, seq uint64, fn func() error) error {
	wait := firstRetry
	for {
		err := fn()
		if err == nil || log == nil {
			return err
		}
		at := seq
		var ee *EventError
		if errors.As(err, &ee) {
			at = ee.Seq
		}
		log.Error("projection failed on an event; retrying", "projection", projection, "seq", at, "err", err, "retry_in", wait)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return err
		}
		wait = min(2*wait, maxRetry)
	}
}

// committer commits what a follower has read, rows and checkpoint in one
// transaction, no sooner than MinCommitInterval after the previous commit,
// in its own goroutine: the follower goes on reading meanwhile, and waits
// only when maxPendingRows are pending.
type committer[T any] struct {
	name   string
	commit func(ctx context.Context, seq uint64, items []T) error
	after  func(seq uint64) // runs after each commit; may be nil
	log    *slog.Logger     // where failed commits are reported before a retry; nil: no retry

	mu    sync.Mutex
	rows  []T
	last  uint64        // sequence of the last event read; 0: nothing pending
	ready chan struct{} // has a value when something is pending
	room  chan struct{} // has a value when rows drop below maxPendingRows
}

func newCommitter[T any](name string, commit func(context.Context, uint64, []T) error, after func(uint64), log *slog.Logger) *committer[T] {
	return &committer[T]{name: name, commit: commit, after: after, log: log,
		ready: make(chan struct{}, 1), room: make(chan struct{}, 1)}
}

// run runs follow and the commit loop until either fails or ctx ends. What
// is pending when ctx ends is committed before run returns.
func (c *committer[T]) run(ctx context.Context, follow func(context.Context) error) error {
	inner, cancel := context.WithCancel(ctx)
	defer cancel()
	committed := make(chan error, 1)
	go func() {
		err := c.loop(inner)
		cancel()
		committed <- err
	}()
	err := follow(inner)
	cancel()
	if cerr := <-committed; cerr != nil && !errors.Is(cerr, context.Canceled) {
		return cerr
	}
	if ctx.Err() != nil {
		// Failed commits are retried for a while, not for ever: the
		// process is stopping.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalFlush)
		defer cancel()
		if ferr := c.flush(fctx); ferr != nil {
			return ferr
		}
	}
	return err
}

// add hands over rows read up to sequence last.
func (c *committer[T]) add(ctx context.Context, rows []T, last uint64) error {
	for {
		c.mu.Lock()
		if len(c.rows) < maxPendingRows {
			c.rows = append(c.rows, rows...)
			c.last = last
			c.mu.Unlock()
			select {
			case c.ready <- struct{}{}:
			default:
			}
			return nil
		}
		c.mu.Unlock()
		select {
		case <-c.room:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// loop commits what is pending, no sooner than MinCommitInterval after the
// previous commit.
func (c *committer[T]) loop(ctx context.Context) error {
	var last time.Time
	for {
		select {
		case <-c.ready:
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
		if err := c.flush(ctx); err != nil {
			return err
		}
		last = time.Now()
	}
}

// finalFlush bounds the retries of the commit a stopping committer makes.
const finalFlush = 10 * time.Second

// flush commits what is pending, retrying (when it reports failures) until
// ctx ends. A commit under way finishes even when ctx ends: cancelling it
// would only throw its work away.
func (c *committer[T]) flush(ctx context.Context) error {
	c.mu.Lock()
	rows, seq := c.rows, c.last
	c.rows, c.last = nil, 0
	c.mu.Unlock()
	select {
	case c.room <- struct{}{}:
	default:
	}
	if seq == 0 {
		return nil
	}
	err := retry(ctx, c.log, c.name, seq, func() error { return c.commit(context.WithoutCancel(ctx), seq, rows) })
	if err != nil {
		return fmt.Errorf("projection %s: commit %d: %w", c.name, seq, err)
	}
	if c.after != nil {
		c.after(seq)
	}
	return nil
}
