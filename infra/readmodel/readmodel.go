// Package readmodel keeps each read model in an SQLite file of its own,
// one generation at a time, and rebuilds it by replay beside the one the
// API reads (orchestra replay).
package readmodel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/orchestra-fleet/orchestra/gateway"
	"github.com/orchestra-fleet/orchestra/infra/files"
	"github.com/orchestra-fleet/orchestra/infra/planbus"
	"github.com/orchestra-fleet/orchestra/infra/sqlite"
	"github.com/orchestra-fleet/orchestra/projections"
	"github.com/orchestra-fleet/orchestra/services"
)

// A read model lives in a file of its own, one generation at a time:
// DIR/<name>-<generation>.db (DIR/<name>.db at first), the current one
// named in DIR/<name>.current.
// A replay builds the next generation from sequence 1 beside the current
// one, which goes on following the log and answering the API; once the new
// one has caught up, the API switches to it and the old file is removed.

// Runner is what keeps a read model up to date.
type Runner interface {
	Run(ctx context.Context) error
	Seq() uint64
	WaitFor(ctx context.Context, seq uint64) error
}

// generation is one file of a read model and the runner that fills it.
type generation struct {
	file    string
	db      *sqlite.DB
	readers sync.WaitGroup // reads in flight: the file stays open until they end
	closed  bool           // no more reads: set under Model.swap before waiting for readers
	runner  Runner
	cancel  context.CancelFunc
	done    chan error // the runner's end
}

// Model is a read model, swappable by a replay.
type Model struct {
	name string // projection name, also the file's
	dir  string
	// live makes the runner that follows the log for db; replay the one
	// that rebuilds db from sequence 1 (without feeding anything else).
	live, replay func(db *sqlite.DB) Runner
	log          *slog.Logger

	cur      atomic.Pointer[generation]
	swap     sync.RWMutex    // held to take a reader's place on cur, and to replace cur
	mu       sync.Mutex      // one replay at a time
	runCtx   context.Context // Run's, which live runners run under; nil until Run
	failures chan error      // a live runner that failed: ends Run
}

// Open opens the current generation of the read model name in dir. live
// makes the runner that follows the log for a file; replay the one that
// rebuilds it from sequence 1 without feeding anything else.
func Open(name, dir string, live, replay func(db *sqlite.DB) Runner, log *slog.Logger) (*Model, error) {
	m := &Model{name: name, dir: dir, live: live, replay: replay, log: log}
	return m, m.open()
}

func (m *Model) open() error {
	file := m.name + ".db"
	if b, err := os.ReadFile(m.pointer()); err == nil {
		file = strings.TrimSpace(string(b))
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("read model %s: %w", m.name, err)
	}
	if file != filepath.Base(file) || !strings.HasSuffix(file, ".db") {
		return fmt.Errorf("read model %s: %s names %q, not a file of %s", m.name, m.pointer(), file, m.dir)
	}
	// A replay cut short by a stop leaves its file behind; one stopped
	// between naming the new file and removing the old, the old.
	orphans, _ := filepath.Glob(filepath.Join(m.dir, m.name+"-*.db"))
	orphans = append(orphans, filepath.Join(m.dir, m.name+".db")) // the first generation, replaced
	for _, o := range orphans {
		if filepath.Base(o) != file {
			if err := removeDB(o); err != nil {
				m.log.Warn("removing what a replay cut short left", "file", o, "err", err)
			}
		}
	}
	db, err := sqlite.Open(filepath.Join(m.dir, file))
	if err != nil {
		return err
	}
	m.cur.Store(&generation{file: file, db: db, runner: m.live(db)})
	m.failures = make(chan error, 1)
	return nil
}

func (m *Model) pointer() string { return filepath.Join(m.dir, m.name+".current") }

// start runs g's runner until ctx ends or stop is called.
func (m *Model) start(ctx context.Context, g *generation) {
	rctx, cancel := context.WithCancel(ctx)
	g.cancel, g.done = cancel, make(chan error, 1)
	go func() {
		err := g.runner.Run(rctx)
		if err != nil && rctx.Err() == nil {
			select {
			case m.failures <- fmt.Errorf("read model %s: %w", m.name, err):
			default:
			}
		}
		g.done <- err
	}()
}

// stop ends g's runner (it commits what it has read) and waits for it.
func stop(g *generation) {
	g.cancel()
	<-g.done
}

// Run follows the log with the current generation until ctx ends or its
// runner fails, then closes the file.
func (m *Model) Run(ctx context.Context) error {
	m.mu.Lock()
	m.runCtx = ctx
	m.start(ctx, m.cur.Load())
	m.mu.Unlock()
	var err error
	select {
	case <-ctx.Done():
		err = ctx.Err()
	case err = <-m.failures:
	}
	m.mu.Lock() // no replay swaps meanwhile
	defer m.mu.Unlock()
	g := m.cur.Load()
	stop(g)
	m.swap.Lock()
	g.closed = true
	m.swap.Unlock()
	g.readers.Wait()
	return errors.Join(err, g.db.Close())
}

// Replay builds a new generation from sequence 1, switches to it once it
// has caught up with the live one, and removes the old file. progress is
// called as it goes.
func (m *Model) Replay(ctx context.Context, progress func(gateway.ReplayStatus)) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.runCtx == nil || m.runCtx.Err() != nil {
		return fmt.Errorf("replay %s: the read model is not running", m.name)
	}
	file := fmt.Sprintf("%s-%s.db", m.name, uuid.Must(uuid.NewV7()))
	path := filepath.Join(m.dir, file)
	db, err := sqlite.Open(path)
	if err != nil {
		return err
	}
	next := &generation{file: file, db: db}
	abandon := func(err error) error {
		return errors.Join(err, db.Close(), removeDB(path))
	}
	if err := db.DeferQueryIndexes(ctx); err != nil {
		return abandon(err)
	}
	replay := func() {
		rctx, cancel := context.WithCancel(ctx)
		next.runner, next.cancel, next.done = m.replay(db), cancel, make(chan error, 1)
		go func() { next.done <- next.runner.Run(rctx) }()
	}
	replay()
	p := gateway.ReplayStatus{Projection: m.name, Started: time.Now()}

	// Catch up with the live generation: it moves on meanwhile, so wait
	// for where it is now, again, until nothing is left. Once caught up,
	// build the query indexes, then catch up with what came meanwhile.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	indexed := false
	for {
		p.Seq, p.Target = next.runner.Seq(), m.cur.Load().runner.Seq()
		progress(p)
		if p.Seq >= p.Target {
			if indexed {
				break
			}
			stop(next)
			if err := db.BuildQueryIndexes(ctx); err != nil {
				return abandon(err)
			}
			indexed = true
			replay()
			continue
		}
		select {
		case <-ctx.Done():
			stop(next)
			return abandon(ctx.Err())
		case err := <-next.done:
			next.cancel()
			return abandon(fmt.Errorf("replay %s: %w", m.name, err))
		case <-tick.C:
		}
	}
	// Switch: the replaying runner commits and stops; the old generation
	// stops; a live runner takes over the new file from its checkpoint.
	stop(next)
	old := m.cur.Load()
	stop(old)
	// The old copy may have moved on between the check and its stop: the
	// new one gets as far before it answers.
	if next.runner.Seq() < old.runner.Seq() {
		replay()
		err := waitOrEnd(ctx, next, old.runner.Seq())
		stop(next)
		if err != nil {
			m.start(m.runCtx, old)
			return abandon(fmt.Errorf("replay %s: %w", m.name, err))
		}
	}
	next.runner = m.live(db)
	m.swap.Lock()
	m.cur.Store(next)
	m.swap.Unlock()
	m.start(m.runCtx, next)
	old.readers.Wait() // reads of the old file end before it is closed
	if err := files.WriteAtomic(m.pointer(), []byte(file+"\n"), 0o600); err != nil {
		return fmt.Errorf("replay %s: %w", m.name, err)
	}
	err = errors.Join(old.db.Close(), removeDB(filepath.Join(m.dir, old.file)))
	now := time.Now()
	p.Seq, p.Done, p.Finished = next.runner.Seq(), true, &now
	progress(p)
	if err != nil {
		m.log.Warn("removing the old generation of a read model", "projection", m.name, "err", err)
	}
	return nil
}

// waitOrEnd waits until g's runner reaches seq, it ends, or ctx ends.
func waitOrEnd(ctx context.Context, g *generation, seq uint64) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ended := make(chan error, 1)
	go func() {
		select {
		case err := <-g.done:
			g.done <- err // for stop
			ended <- fmt.Errorf("the replaying runner ended: %v", err)
			cancel()
		case <-wctx.Done():
		}
	}()
	if err := g.runner.WaitFor(wctx, seq); err != nil {
		select {
		case e := <-ended:
			return e
		default:
			return err
		}
	}
	return nil
}

// removeDB removes an SQLite file and its WAL files.
func removeDB(path string) error {
	var errs []error
	for _, suffix := range []string{"", "-wal", "-shm"} {
		if err := os.Remove(path + suffix); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// The views of the current generation the gateway reads.

// DB is the current generation's file. A replay may close it once it has
// switched: reads go through Use.
func (m *Model) DB() *sqlite.DB { return m.cur.Load().db }

// Use calls fn with the current generation's file, which stays open until
// fn returns, even when a replay switches meanwhile.
func (m *Model) Use(fn func(db *sqlite.DB) error) error {
	m.swap.RLock()
	g := m.cur.Load()
	if g.closed {
		m.swap.RUnlock()
		return services.Errorf(services.EUNAVAILABLE, "the %s read model is closed: Orchestra is stopping", m.name)
	}
	g.readers.Add(1)
	m.swap.RUnlock()
	defer g.readers.Done()
	return fn(g.db)
}

// read is Use for a read that returns a value.
func read[T any](m *Model, fn func(db *sqlite.DB) (T, error)) (T, error) {
	var v T
	err := m.Use(func(db *sqlite.DB) error {
		var err error
		v, err = fn(db)
		return err
	})
	return v, err
}

// Seq implements gateway.Waiter.
func (m *Model) Seq() uint64 { return m.cur.Load().runner.Seq() }

// WaitFor implements gateway.Waiter: a replay's switch does not lose a
// waiter, since the new generation has caught up when it is put in place.
func (m *Model) WaitFor(ctx context.Context, seq uint64) error {
	for {
		g := m.cur.Load()
		wctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		err := g.runner.WaitFor(wctx, seq)
		cancel()
		if err == nil || ctx.Err() != nil {
			return err
		}
	}
}

// Get implements gateway.Reader.
func (m *Model) Get(ctx context.Context, table, key string) (projections.Row, error) {
	return read(m, func(db *sqlite.DB) (projections.Row, error) { return db.Get(ctx, table, key) })
}

// List implements gateway.Reader.
func (m *Model) List(ctx context.Context, q projections.Query) ([]projections.Row, error) {
	return read(m, func(db *sqlite.DB) ([]projections.Row, error) { return db.List(ctx, q) })
}

var (
	_ gateway.Reader = (*Model)(nil)
	_ gateway.Waiter = (*Model)(nil)
)

// Replays runs replays of the read models, one at a time per read model,
// and keeps the latest status of each.
type Replays struct {
	ctx    context.Context // the process's: replays end with it
	models []*Model
	log    *slog.Logger

	mu     sync.Mutex
	status map[string]gateway.ReplayStatus
}

var _ gateway.Replays = (*Replays)(nil)

// NewReplays returns the replays of models, which end with ctx.
func NewReplays(ctx context.Context, log *slog.Logger, models ...*Model) *Replays {
	return &Replays{ctx: ctx, models: models, log: log}
}

// Start implements gateway.Replays.
func (r *Replays) Start(projection string) ([]gateway.ReplayStatus, error) {
	var todo []*Model
	var names []string
	for _, m := range r.models {
		names = append(names, m.name)
		if projection == "" || projection == m.name {
			todo = append(todo, m)
		}
	}
	if len(todo) == 0 {
		return nil, services.FieldErrorf(services.EINVALID, "projection", "%q is not a read model; want one of %s, or none for all", projection, strings.Join(names, ", "))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.status == nil {
		r.status = map[string]gateway.ReplayStatus{}
	}
	for _, m := range todo {
		if st, ok := r.status[m.name]; ok && st.Finished == nil {
			return nil, services.Errorf(services.ECONFLICT, "a replay of %s is running (at %d of %d); wait for it", m.name, st.Seq, st.Target)
		}
	}
	out := make([]gateway.ReplayStatus, len(todo))
	for i, m := range todo {
		st := gateway.ReplayStatus{Projection: m.name, Started: time.Now()}
		r.status[m.name], out[i] = st, st
		go func() {
			r.log.Info("replay started", "projection", m.name)
			err := m.Replay(r.ctx, func(p gateway.ReplayStatus) { r.set(p) })
			r.mu.Lock()
			defer r.mu.Unlock()
			st := r.status[m.name]
			if err != nil {
				now := time.Now()
				st.Error, st.Finished = err.Error(), &now
				r.status[m.name] = st
				if r.ctx.Err() != nil {
					r.log.Info("replay stopped with the process; the old copy stays", "projection", m.name)
				} else {
					r.log.Error("replay failed", "projection", m.name, "err", err)
				}
				return
			}
			r.log.Info("replay done; the API reads the new copy", "projection", m.name, "seq", st.Seq, "took", time.Since(st.Started).Round(time.Millisecond))
		}()
	}
	return out, nil
}

func (r *Replays) set(p gateway.ReplayStatus) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status[p.Projection] = p
}

// Status implements gateway.Replays.
func (r *Replays) Status() []gateway.ReplayStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []gateway.ReplayStatus
	for _, m := range r.models {
		if st, ok := r.status[m.name]; ok {
			out = append(out, st)
		}
	}
	return out
}

// ResultsView is the current generation of the results read models, as
// the gateway reads it.
type ResultsView struct {
	*Model
	Bus *planbus.Bus
}

var _ gateway.Logs = ResultsView{}

func (v ResultsView) Script(ctx context.Context, id uuid.UUID) (projections.ScriptLog, error) {
	return read(v.Model, func(db *sqlite.DB) (projections.ScriptLog, error) { return db.Script(ctx, id) })
}

func (v ResultsView) Scripts(ctx context.Context, f projections.ScriptFilter) ([]projections.EntryDoc, error) {
	return read(v.Model, func(db *sqlite.DB) ([]projections.EntryDoc, error) { return db.Scripts(ctx, f) })
}

func (v ResultsView) Unit(ctx context.Context, id uuid.UUID) (projections.UnitLog, error) {
	return read(v.Model, func(db *sqlite.DB) (projections.UnitLog, error) { return db.Unit(ctx, id) })
}

func (v ResultsView) ServerStatuses(ctx context.Context) ([]projections.ServerStatus, error) {
	return read(v.Model, func(db *sqlite.DB) ([]projections.ServerStatus, error) { return db.ServerStatuses(ctx) })
}

func (v ResultsView) ServerStatus(ctx context.Context, name string) (projections.ServerStatus, error) {
	return read(v.Model, func(db *sqlite.DB) (projections.ServerStatus, error) { return db.ServerStatus(ctx, name) })
}

func (v ResultsView) History(ctx context.Context, typ, name string, after projections.HistoryCursor, limit int) ([]projections.ResourceOp, error) {
	return read(v.Model, func(db *sqlite.DB) ([]projections.ResourceOp, error) {
		return db.History(ctx, typ, name, after, limit)
	})
}

// CatchUp implements gateway.Logs.
func (v ResultsView) CatchUp(ctx context.Context) error {
	last, err := v.Bus.LastResult(ctx)
	if err != nil {
		return err
	}
	return v.WaitFor(ctx, last)
}
