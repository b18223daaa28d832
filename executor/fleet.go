package executor

import (
	"encoding/json"
	"fmt"
	"maps"
	"sync"

	"github.com/orchestra-fleet/orchestra/events"
)

// Fleet is the model's servers as the event log describes them. It follows
// the log as an observer and tells the executor when a server was added,
// changed or removed, so servers are picked up without a restart.
type Fleet struct {
	mu      sync.Mutex
	servers map[string]events.Server
	seq     uint64
	changed chan struct{}
}

// NewFleet returns an empty fleet.
func NewFleet() *Fleet {
	return &Fleet{servers: map[string]events.Server{}, changed: make(chan struct{})}
}

// Observe folds one event of the log.
func (f *Fleet) Observe(e events.Envelope) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if e.Sequence <= f.seq {
		return nil
	}
	f.seq = e.Sequence
	switch e.Type {
	case events.ServerSaved{}.EventType().Name:
		var p events.ServerSaved
		if err := json.Unmarshal(e.Payload, &p); err != nil {
			return fmt.Errorf("fleet: event %d: %w", e.Sequence, err)
		}
		f.servers[p.Server.Name] = p.Server
	case events.ServerDeleted{}.EventType().Name:
		var p events.ServerDeleted
		if err := json.Unmarshal(e.Payload, &p); err != nil {
			return fmt.Errorf("fleet: event %d: %w", e.Sequence, err)
		}
		delete(f.servers, p.Name)
	default:
		return nil
	}
	close(f.changed)
	f.changed = make(chan struct{})
	return nil
}

// Seq is the sequence of the last event observed.
func (f *Fleet) Seq() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.seq
}

// Server returns a server as it is now.
func (f *Fleet) Server(name string) (events.Server, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.servers[name]
	return s, ok
}

// Servers returns every server and a channel closed at the next change.
func (f *Fleet) Servers() (map[string]events.Server, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.servers), f.changed
}
