package executor

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/orchestra-fleet/orchestra/events"
)

// Limits bound what the output of one script costs.
type Limits struct {
	// Events is how many bytes of output (both streams together) are
	// published as ScriptOutput chunks; what follows is only kept whole in
	// the output bucket. Default 1 MiB.
	Events int64
	// Object is how many bytes of each stream the output bucket keeps;
	// beyond it output is counted and dropped. Default 1 GiB.
	Object int64
	// Chunk is the largest ScriptOutput. Default 32 KiB.
	Chunk int
	// Flush is how long output waits to be published. Default 50 ms.
	Flush time.Duration
}

func (l *Limits) setDefaults() {
	if l.Events == 0 {
		l.Events = 1 << 20
	}
	if l.Object == 0 {
		l.Object = 1 << 30
	}
	if l.Chunk == 0 {
		l.Chunk = 32 << 10
	}
	if l.Flush == 0 {
		l.Flush = 50 * time.Millisecond
	}
}

// capture takes a script's stdout and stderr as the method copies them,
// publishes them in chunks while they are produced, and keeps each stream
// whole (in memory while it is small, then in a temporary file) for the
// output bucket when the chunks cannot carry everything.
type capture struct {
	res     *results
	server  string
	id      uuid.UUID
	attempt int
	limits  Limits

	mu      sync.Mutex
	budget  int64 // bytes the chunks may still carry
	streams [2]*stream
	futures []jetstream.PubAckFuture
	err     error // the first failed publish
	closed  bool  // finished: later writes (a session's copier still draining) are dropped
	stop    chan struct{}
	done    chan struct{}
}

// stream is one output stream of a capture.
type stream struct {
	c         *capture
	name      string
	total     int64  // bytes written
	sent      int64  // bytes published in chunks
	pending   []byte // written, not yet published
	truncated bool
	whole     []byte   // the whole stream while it fits in Limits.Events
	spool     *os.File // the whole stream once it does not
	dropped   int64    // bytes beyond Limits.Object
}

func newCapture(res *results, server string, id uuid.UUID, attempt int, l Limits) *capture {
	c := &capture{res: res, server: server, id: id, attempt: attempt, limits: l, budget: l.Events,
		stop: make(chan struct{}), done: make(chan struct{})}
	c.streams = [2]*stream{{c: c, name: events.Stdout}, {c: c, name: events.Stderr}}
	go c.tick()
	return c
}

func (c *capture) stdout() io.Writer { return c.streams[0] }
func (c *capture) stderr() io.Writer { return c.streams[1] }

// tick publishes pending output every Limits.Flush.
func (c *capture) tick() {
	defer close(c.done)
	t := time.NewTicker(c.limits.Flush)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			c.mu.Lock()
			for _, s := range c.streams {
				s.flush()
			}
			c.mu.Unlock()
		}
	}
}

// Write implements io.Writer. It never fails: the script must not notice
// where its output goes.
func (s *stream) Write(p []byte) (int, error) {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return len(p), nil
	}
	s.total += int64(len(p))
	s.keepWhole(p)
	if s.truncated {
		return len(p), nil
	}
	n := int64(len(p))
	if n > c.budget {
		n = c.budget
		s.truncated = true
	}
	c.budget -= n
	s.pending = append(s.pending, p[:n]...)
	for len(s.pending) >= c.limits.Chunk {
		s.send(s.pending[:c.limits.Chunk], false)
		s.pending = s.pending[c.limits.Chunk:]
	}
	if s.truncated {
		s.flush()
		marker := fmt.Sprintf("\n[orchestra: %s truncated after %d bytes of output]\n", s.name, c.limits.Events)
		s.send([]byte(marker), true)
	}
	return len(p), nil
}

// keepWhole adds p to the whole copy of the stream, where whole outputs
// are kept.
func (s *stream) keepWhole(p []byte) {
	c := s.c
	if c.res.objects == nil {
		return
	}
	kept := int64(len(s.whole))
	if s.spool != nil {
		kept = s.total - int64(len(p)) - s.dropped
	}
	room := c.limits.Object - kept
	if room < int64(len(p)) {
		s.dropped += int64(len(p)) - max(room, 0)
		p = p[:max(room, 0)]
	}
	if len(p) == 0 {
		return
	}
	if s.spool == nil && int64(len(s.whole)+len(p)) <= c.limits.Events {
		s.whole = append(s.whole, p...)
		return
	}
	if s.spool == nil {
		f, err := os.CreateTemp("", "orchestra-output-*")
		if err != nil {
			c.fail(fmt.Errorf("spool output: %w", err))
			s.dropped += int64(len(p))
			return
		}
		_ = os.Remove(f.Name()) // unlinked: gone with the file handle
		s.spool = f
		if _, err := f.Write(s.whole); err != nil {
			c.fail(fmt.Errorf("spool output: %w", err))
		}
		s.whole = nil
	}
	if _, err := s.spool.Write(p); err != nil {
		c.fail(fmt.Errorf("spool output: %w", err))
	}
}

// flush publishes the pending output.
func (s *stream) flush() {
	if len(s.pending) > 0 {
		s.send(s.pending, false)
		s.pending = nil
	}
}

// send publishes one chunk; the caller holds the lock.
func (s *stream) send(data []byte, truncated bool) {
	c := s.c
	out := events.ScriptOutput{ID: c.id, Attempt: c.attempt, Stream: s.name, Offset: s.sent,
		Data: bytes.Clone(data), Truncated: truncated}
	msgID := fmt.Sprintf("%s.%d.%s.%d", c.id, c.attempt, s.name, s.sent)
	if truncated {
		msgID += ".truncated"
	} else {
		s.sent += int64(len(data))
	}
	f, err := c.res.publish(c.server, c.id, msgID, out)
	if err != nil {
		c.fail(err)
		return
	}
	c.futures = append(c.futures, f)
}

func (c *capture) fail(err error) {
	if c.err == nil {
		c.err = err
	}
}

// captured is what a capture reports when it is finished.
type captured struct {
	stdout, stderr int64  // bytes written
	object         string // where the whole output is kept; "" when it is not
	note           string // for the script's reason when part of the output was lost
}

// finish publishes what is pending, waits (bounded) until every chunk is
// stored and, when a stream was truncated, keeps both streams whole in the
// output bucket. Writes after it are dropped.
func (c *capture) finish(ctx context.Context) captured {
	close(c.stop)
	<-c.done
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	for _, s := range c.streams {
		s.flush()
		defer func() {
			if s.spool != nil {
				s.spool.Close()
			}
		}()
	}
	timeout := time.After(publishTimeout)
	for _, f := range c.futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			c.fail(fmt.Errorf("publish output: %w", err))
		case <-timeout:
			c.fail(fmt.Errorf("publish output: no acknowledgement within %s", publishTimeout))
		case <-ctx.Done():
			c.fail(ctx.Err())
		}
	}
	out := captured{stdout: c.streams[0].total, stderr: c.streams[1].total}
	if c.streams[0].truncated || c.streams[1].truncated {
		out.object, out.note = c.keep(ctx)
	}
	if c.err != nil {
		out.note = join(out.note, "output lost: "+c.err.Error())
	}
	return out
}

// keep stores both streams whole; the caller holds the lock.
func (c *capture) keep(ctx context.Context) (object, note string) {
	if c.res.objects == nil {
		return "", "output beyond the first chunks is not kept for this executor"
	}
	object = fmt.Sprintf("%s/%d", c.id, c.attempt)
	for _, s := range c.streams {
		var body io.Reader = bytes.NewReader(s.whole)
		size := int64(len(s.whole))
		if s.spool != nil {
			if _, err := s.spool.Seek(0, io.SeekStart); err != nil {
				c.fail(err)
				return "", ""
			}
			body, size = s.spool, s.total-s.dropped
		}
		if err := c.res.keep(ctx, object+"/"+s.name, size, body); err != nil {
			c.fail(err)
			return "", ""
		}
		if s.dropped > 0 {
			note = join(note, fmt.Sprintf("%s: the last %d bytes were dropped (more than %d)", s.name, s.dropped, c.limits.Object))
		}
	}
	return object, note
}

// join joins reasons with "; ", leaving out empty ones.
func join(a, b string) string {
	if a == "" || b == "" {
		return a + b
	}
	return a + "; " + b
}
