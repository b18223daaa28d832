// Package lease makes one process of many the active one for a task: a
// key in a JetStream key-value bucket whose entries expire, held by
// renewing it. When the holder dies its key expires and another process
// takes it; a holder that cannot renew in time stops its task.
package lease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Lease is one task's lease, as one holder contends for it.
type Lease struct {
	kv     jetstream.KeyValue
	key    string
	holder string
	ttl    time.Duration
	log    *slog.Logger
}

// New returns the lease key of bucket kv (whose entries expire after ttl,
// streams.LeaseBucket) for holder: a name that stays the
// same when the same process starts again (its host and data directory),
// so that it takes its own lease back at once after a crash.
func New(kv jetstream.KeyValue, key, holder string, ttl time.Duration, log *slog.Logger) *Lease {
	return &Lease{kv: kv, key: key, holder: holder, ttl: ttl, log: log}
}

// Run runs task while this holder has the lease, and contends for it
// again when it is lost, until ctx ends. The task's context ends when the
// lease is lost; an error of the task while the lease holds ends Run.
func (l *Lease) Run(ctx context.Context, task func(context.Context) error) error {
	for {
		rev, err := l.acquire(ctx)
		if err != nil {
			return nil // ctx ended
		}
		l.log.Info("this process is the active one", "lease", l.key, "holder", l.holder)
		tctx, cancel := context.WithCancelCause(ctx)
		renewed := make(chan uint64, 1)
		go func() { renewed <- l.renew(tctx, rev, cancel) }()
		err = task(tctx)
		lost := context.Cause(tctx)
		cancel(nil)
		last := <-renewed
		switch {
		case ctx.Err() != nil:
			l.release(last)
			return nil
		case errors.Is(lost, errLost):
			l.log.Warn("lost the lease; the task stopped and waits to be the active one again", "lease", l.key, "err", err)
		case err != nil:
			l.release(last)
			return err
		default:
			l.release(last)
			return nil
		}
	}
}

var errLost = errors.New("lease lost")

// acquire waits until the key is this holder's, and returns its revision.
func (l *Lease) acquire(ctx context.Context) (uint64, error) {
	waiting := false
	for {
		rev, err := l.kv.Create(ctx, l.key, []byte(l.holder))
		if err == nil {
			return rev, nil
		}
		wait := l.ttl / 4
		if errors.Is(err, jetstream.ErrKeyExists) {
			if e, gerr := l.kv.Get(ctx, l.key); gerr == nil && string(e.Value()) == l.holder {
				// Ours from before a restart: take it back at once.
				if rev, err := l.kv.Update(ctx, l.key, []byte(l.holder), e.Revision()); err == nil {
					return rev, nil
				}
			} else if gerr == nil {
				if !waiting {
					l.log.Info("another process is the active one; this one waits", "lease", l.key, "holder", string(e.Value()))
					waiting = true
				}
				// A holder that stopped renewing loses the lease ttl after
				// its last renewal: try again then, not up to ttl/4 later
				// (bounded both ways, should the clocks disagree).
				wait = min(wait, max(time.Until(e.Created().Add(l.ttl)), l.ttl/40))
			}
		} else if ctx.Err() == nil {
			l.log.Warn("contending for the lease failed; trying again", "lease", l.key, "err", err)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(wait):
		}
	}
}

// renew renews the lease every ttl/3 until ctx ends; when it cannot for
// longer than the lease lasts, it ends the task with errLost. It returns
// the last revision it held.
func (l *Lease) renew(ctx context.Context, rev uint64, lost context.CancelCauseFunc) uint64 {
	t := time.NewTicker(l.ttl / 3)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return rev
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, l.ttl/3)
		next, err := l.kv.Update(rctx, l.key, []byte(l.holder), rev)
		cancel()
		switch {
		case err == nil:
			rev, last = next, time.Now()
		case errors.Is(err, jetstream.ErrKeyExists), time.Since(last) > l.ttl*2/3:
			// Taken by another holder, or it may have expired by now.
			lost(fmt.Errorf("%w: %v", errLost, err))
			return rev
		}
	}
}

// release gives the lease up, so another process need not wait for it to
// expire.
func (l *Lease) release(rev uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if l.kv.Delete(ctx, l.key, jetstream.LastRevision(rev)) == nil {
		return
	}
	// A renewal cut short may have landed: delete the key if it is still
	// this holder's.
	if e, err := l.kv.Get(ctx, l.key); err == nil && string(e.Value()) == l.holder {
		_ = l.kv.Delete(ctx, l.key, jetstream.LastRevision(e.Revision()))
	}
}
