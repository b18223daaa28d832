package services

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/orchestra-fleet/orchestra/events"
)

// Config is what the write side needs from the outside.
type Config struct {
	Store    EventStore
	Registry *events.Registry
	Compiler MatchCompiler
	Sealer   Sealer
	Now      func() time.Time // default time.Now
}

func (c *Config) setDefaults() {
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Validate reports every missing dependency at once.
func (c Config) Validate() error {
	var errs []error
	if c.Store == nil {
		errs = append(errs, errors.New("services: Store is required"))
	}
	if c.Registry == nil {
		errs = append(errs, errors.New("services: Registry is required"))
	}
	if c.Compiler == nil {
		errs = append(errs, errors.New("services: Compiler is required"))
	}
	if c.Sealer == nil {
		errs = append(errs, errors.New("services: Sealer is required"))
	}
	return errors.Join(errs...)
}

// Service is the write side. Its commands, one file each:
//
//   - Apply (apply.go): save and delete model objects as one unit of work;
//   - CreateToken, RevokeToken, Bootstrap, Authenticate (token.go);
//   - Action, SyncServer, Retry: requests for the planner (request.go).
//
// It decides against an in-memory State folded from the log. Commands are
// serialized in this process, and every unit is guarded by the versions it
// was decided against, so a writer elsewhere makes it a conflict, never a
// lost update; a conflict re-reads the log and decides once more.
type Service struct {
	cfg Config

	writeMu sync.Mutex   // one command decides and appends at a time
	mu      sync.RWMutex // guards state
	state   *State
}

// New returns a service with an empty state; call Sync before serving.
func New(cfg Config) (*Service, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Service{cfg: cfg, state: NewState()}, nil
}

// Seq is the stream sequence of the last event the write model has folded:
// a read model that has reached it shows every write this service made.
func (s *Service) Seq() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.state.Seq()
}

// Sync folds every event the log has beyond the state.
func (s *Service) Sync(ctx context.Context) error {
	for e, err := range s.cfg.Store.Read(ctx, s.Seq()+1) {
		if err != nil {
			return fmt.Errorf("sync write model: %w", err)
		}
		if err := s.Observe(e); err != nil {
			return err
		}
	}
	return nil
}

// Observe folds one stored event; events already folded are skipped. The log
// follower calls it for every event in order, so changes made by other
// processes reach this one.
func (s *Service) Observe(e events.Envelope) error {
	p, err := s.cfg.Registry.Payload(e)
	if err != nil {
		return fmt.Errorf("fold event %d: %w", e.Sequence, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.state.Evolve(e, p)
	return nil
}

// commit appends u and folds its events into the state. payloads are u's
// payloads in unit order. When another writer's events came first, the state
// catches up from the log instead.
func (s *Service) commit(ctx context.Context, u *Unit, payloads []events.Payload) (Appended, error) {
	if err := u.Validate(); err != nil {
		return Appended{}, err
	}
	at, err := s.cfg.Store.Append(ctx, u)
	if err != nil {
		return Appended{}, err
	}
	s.mu.Lock()
	contiguous := at.First == s.state.Seq()+1
	if contiguous {
		for i, e := range u.Envelopes() {
			e.Sequence = at.First + uint64(i)
			s.state.Evolve(e, payloads[i])
		}
	}
	caughtUp := s.state.Seq() >= at.Last
	s.mu.Unlock()
	if !caughtUp {
		if err := s.Sync(ctx); err != nil {
			return at, err
		}
	}
	return at, nil
}

// serialized runs one command: alone among this process's commands, and
// once more after catching up with the log when the first decision may have
// been made against a state that was behind.
func serialized[T any](ctx context.Context, s *Service, decide func() (T, error)) (T, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	res, err := decide()
	if err == nil || !retryable(err) {
		return res, err
	}
	if err := s.Sync(ctx); err != nil {
		var zero T
		return zero, err
	}
	return decide()
}

// retryable reports whether a decision failed because the state may be
// behind the log: a conflict, or a missing object another process may just
// have created.
func retryable(err error) bool {
	switch ErrorCode(err) {
	case ECONFLICT, ENOTFOUND:
		return true
	}
	var ref *referenceError
	return errors.As(err, &ref)
}
