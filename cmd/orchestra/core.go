package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/executor"
	"github.com/orchestra-fleet/orchestra/gateway"
	"github.com/orchestra-fleet/orchestra/infra/eventstore"
	"github.com/orchestra-fleet/orchestra/infra/files"
	"github.com/orchestra-fleet/orchestra/infra/lease"
	"github.com/orchestra-fleet/orchestra/infra/notify"
	"github.com/orchestra-fleet/orchestra/infra/planbus"
	"github.com/orchestra-fleet/orchestra/infra/readmodel"
	"github.com/orchestra-fleet/orchestra/infra/routeexpr"
	"github.com/orchestra-fleet/orchestra/infra/secrets"
	"github.com/orchestra-fleet/orchestra/infra/siterunner"
	"github.com/orchestra-fleet/orchestra/infra/sqlite"
	"github.com/orchestra-fleet/orchestra/infra/streams"
	"github.com/orchestra-fleet/orchestra/infra/wmjet"
	"github.com/orchestra-fleet/orchestra/projections"
	"github.com/orchestra-fleet/orchestra/services"
)

// Files of the data directory besides the JetStream store.
const (
	adminTokenFile = "admin.token"     // the first admin token, 0600
	secretKeyFile  = "secret.key"      // the key that seals resource secrets, 0600
	modelDBFile    = "model.db"        // the planner's state and idempotent answers (SQLite)
	readDir        = "read"            // the read models, one SQLite file each (see readModel)
	logsDir        = "logs"            // supervised processes' output, <service>.<index>.log
	groupsFile     = "supervised.json" // the process groups of supervised instances running now
)

// core is the write side, the read model and the API of one process.
type core struct {
	svc        *services.Service
	store      *eventstore.Store
	model      *readmodel.Model // servers, backends, routes, resources, tokens
	results    *readmodel.Model // script logs, units, servers' status, resource history
	replays    *readmodel.Replays
	retention  time.Duration
	dispatcher *projections.Dispatcher
	executor   *executor.Executor
	fleet      *executor.Fleet
	ssh        *executor.SSH
	supervisor *executor.Supervisor
	runner     *services.Runner
	lease      *lease.Lease // makes one of several processes the planner and site runner
	notifier   *notify.Notifier
	js         jetstream.JetStream
	nc         *nats.Conn
	log        *slog.Logger
}

// startCore opens the event store, catches the write model up with the log,
// issues the first admin token when there is none, and puts the API in
// place of the start-up handler.
func startCore(ctx context.Context, js jetstream.JetStream, dataDir string, db *sqlite.DB, sealer services.Sealer,
	handler *atomic.Pointer[http.Handler], gw gateway.Config, ex execFlags, nf notifyFlags, retention time.Duration, log *slog.Logger) (c *core, err error) {
	reg, err := events.NewRegistry(events.Catalog()...)
	if err != nil {
		return nil, err
	}
	store, err := eventstore.New(ctx, eventstore.Config{JetStream: js, Registry: reg})
	if err != nil {
		return nil, err
	}
	svc, err := services.New(services.Config{Store: store, Registry: reg, Compiler: routeexpr.Compiler{}, Sealer: sealer})
	if err != nil {
		return nil, err
	}
	planner := projections.NewPlanner(reg, routeexpr.Compiler{})
	fleet := executor.NewFleet()
	follower := logFollower{store, []observer{svc, planner, fleet}}
	if err := follower.catchUp(ctx); err != nil {
		return nil, err
	}
	if err := bootstrapToken(ctx, svc, filepath.Join(dataDir, adminTokenFile), log); err != nil {
		return nil, err
	}
	bus, err := planbus.New(ctx, js)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(dataDir, readDir)
	model, err := readmodel.Open(projections.NewModel(reg).Name(), dir,
		func(db *sqlite.DB) readmodel.Runner {
			return projections.NewRunner(projections.NewModel(reg), db, follower, log.With("component", "read model"))
		},
		func(db *sqlite.DB) readmodel.Runner {
			return projections.NewRunner(projections.NewModel(reg), db, store, log.With("component", "replay"))
		}, log)
	if err != nil {
		return nil, err
	}
	resultsRunner := func(db *sqlite.DB) readmodel.Runner {
		return projections.NewResultsRunner(db, bus, log.With("component", "results read model"))
	}
	results, err := readmodel.Open(projections.ResultsName, dir, resultsRunner, resultsRunner, log)
	if err != nil {
		return nil, errors.Join(err, model.DB().Close())
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, model.DB().Close(), results.DB().Close())
		}
	}()
	c = &core{svc: svc, store: store, model: model, results: results,
		replays:    readmodel.NewReplays(ctx, log, model, results),
		retention:  retention,
		dispatcher: projections.NewDispatcher(reg, db, store, bus, projections.Renderer{Compiler: routeexpr.Compiler{}, Sealer: sealer}),
		fleet:      fleet, js: js, nc: js.Conn(), log: log}
	steps, err := siterunner.NewBus(ctx, js, bus)
	if err != nil {
		return nil, err
	}
	c.runner = services.NewRunner(svc, steps, log.With("component", "site runner"))
	global, err := nf.targets()
	if err != nil {
		return nil, err
	}
	c.notifier, err = notify.New(notify.Config{JetStream: js, Registry: reg, Global: global, SMTP: nf.SMTP, From: nf.From,
		Sites: siteTargets{svc, sealer}, Scripts: readmodel.ResultsView{Model: results, Bus: bus}, Record: svc.RecordAbandoned,
		Log: log.With("component", "notify")})
	if err != nil {
		return nil, err
	}
	c.supervisor = &executor.Supervisor{LogDir: filepath.Join(dataDir, logsDir), GroupFile: filepath.Join(dataDir, groupsFile),
		Sink: supervisionSink{svc, js, log.With("component", "supervisor")}}
	if n := c.supervisor.Reap(); n > 0 {
		log.Warn("stopped processes that supervised instances left running when Orchestra last stopped without stopping them", "processes", n)
	}
	if c.executor, c.ssh, err = newExecutor(ctx, js, svc, ex, c.supervisor, log); err != nil {
		return nil, err
	}
	gw.Service, gw.Rows, gw.Model, gw.Planner, gw.Idempotency, gw.Logger = svc, model, model, planner, db, log
	gw.Scripts, gw.Results = bus, planbus.Results{Bus: bus, Planner: planbus.ActivePlanner{Local: c.dispatcher, Bus: bus}}
	kv, err := js.KeyValue(ctx, streams.LeaseBucket)
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", streams.LeaseBucket, err)
	}
	host, _ := os.Hostname()
	c.lease = lease.New(kv, "active", host+":"+dataDir, streams.LeaseTTL, log.With("component", "lease"))
	gw.Logs, gw.Feed, gw.Replays = readmodel.ResultsView{Model: results, Bus: bus}, bus, c.replays
	h, err := gateway.NewHandler(gw)
	if err != nil {
		return nil, err
	}
	handler.Store(&h)
	return c, nil
}

// run keeps the read model and the planner following the log until ctx ends
// or one of them fails; the first failure stops the other.
func (c *core) run(ctx context.Context) error {
	inner, cancel := context.WithCancel(ctx)
	defer cancel()
	defer c.ssh.Close()
	defer c.supervisor.StopAll() // after the executor, which may still start one
	execute := func(ctx context.Context) error { return c.executor.Run(ctx, c.fleet) }
	syncs := func(ctx context.Context) error { return serveAgentSyncs(ctx, c.nc, c.svc, c.fleet, c.log) }
	// The planner and the site runner run in one process of those that
	// share the NATS system: the holder of the lease.
	active := func(ctx context.Context) error {
		return c.lease.Run(ctx, func(ctx context.Context) error { return together(ctx, c.dispatcher.Run, c.control) })
	}
	runs := []func(context.Context) error{c.model.Run, c.results.Run, c.prune, active, execute, syncs, c.notifier.Run}
	errs := make(chan error, len(runs))
	for _, run := range runs {
		go func() {
			errs <- run(inner)
			cancel()
		}()
	}
	var first error
	for range runs {
		if err := <-errs; first == nil && err != nil && !errors.Is(err, context.Canceled) {
			first = err
		}
	}
	return first
}

// together runs fns until ctx ends or one fails; the first failure stops
// the others and is returned.
func together(ctx context.Context, fns ...func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, len(fns))
	for _, fn := range fns {
		go func() {
			errs <- fn(ctx)
			cancel()
		}()
	}
	var first error
	for range fns {
		if err := <-errs; first == nil && err != nil && !errors.Is(err, context.Canceled) {
			first = err
		}
	}
	return first
}

// sweepEvery is how often the site runner looks at every run not over
// even without a trigger (services.Runner.Sweep).
const sweepEvery = 30 * time.Second

// control runs the Watermill router of the control plane: the site
// runner's handlers. Once they read their consumers, the runs a runner
// stopped in the middle of resume; then every sweepEvery the runner
// sweeps.
func (c *core) control(ctx context.Context) error {
	sub := wmjet.NewSubscriber(c.js, siterunner.Topics(time.Minute))
	sub.Log = c.log.With("component", "control")
	defer sub.Close()
	router, err := wmjet.NewRouter(c.log.With("component", "control"), wmjet.NewPublisher(c.js), wmjet.RouterConfig{
		MaxRetries: 5, InitialInterval: 200 * time.Millisecond, MaxInterval: 5 * time.Second, PoisonTopic: poisonRunner,
	})
	if err != nil {
		return err
	}
	siterunner.AddHandlers(router, sub, c.runner, c.svc, c.log.With("component", "site runner"))
	done := make(chan error, 1)
	go func() { done <- router.Run(ctx) }()
	select {
	case <-router.Running():
	case err := <-done:
		return err
	}
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 10*time.Second) {
		err := c.runner.Resume(ctx)
		if err == nil || ctx.Err() != nil {
			break
		}
		c.log.Warn("resuming site runs failed; trying again", "err", err, "in", wait)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	for {
		select {
		case err := <-done:
			return err
		case <-t.C:
			if err := c.runner.Sweep(ctx); err != nil && ctx.Err() == nil {
				c.log.Warn("sweeping site runs failed; trying again later", "err", err)
			}
		}
	}
}

// supervisionSink records what supervised processes do as events, and
// publishes their output on LOGS.
type supervisionSink struct {
	svc *services.Service
	js  jetstream.JetStream
	log *slog.Logger
}

func (s supervisionSink) Started(ev events.InstanceStarted) { s.record(&ev) }
func (s supervisionSink) Exited(ev events.InstanceExited)   { s.record(&ev) }

func (s supervisionSink) record(ev events.Payload) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.svc.RecordInstance(ctx, ev); err != nil {
		s.log.Warn("recording a supervised process's lifecycle failed", "event", ev, "err", err)
	}
}

// Line publishes one line of output without waiting: output is not worth
// slowing the process down for.
func (s supervisionSink) Line(site, service, server string, index int, stream string, line []byte) {
	subject, err := events.LogSubject(server, service, index)
	if err != nil {
		return
	}
	msg := &nats.Msg{Subject: subject, Data: line, Header: nats.Header{"Orchestra-Site": {site}, "Orchestra-Stream": {stream}}}
	_, _ = s.js.PublishMsgAsync(msg)
}

// siteTargets are a site's notification targets, secrets opened.
type siteTargets struct {
	svc    *services.Service
	sealer services.Sealer
}

func (s siteTargets) SiteTargets(name string) ([]notify.Target, error) {
	site, ok := s.svc.Site(name)
	if !ok {
		return nil, nil // deleted since: only the global targets hear of it
	}
	out := make([]notify.Target, len(site.Notify))
	for i, n := range site.Notify {
		n, err := services.OpenNotify(s.sealer, name, n)
		if err != nil {
			return nil, err
		}
		out[i] = notify.Target{Webhook: n.Webhook, Secret: n.Secret, Email: n.Email}
	}
	return out, nil
}

// poisonRunner is where the runner's handlers put a message they failed
// on after every retry: kept for inspection (nats stream view NOTIFY);
// the run resumes at the next start.
const poisonRunner = "orchestra.notify.poison.runner"

// pruneEvery is how often the results read models drop what RESULTS no
// longer holds.
const pruneEvery = time.Hour

// prune drops, at start and then every pruneEvery, the records of the
// results read models older than the log retention: RESULTS has dropped
// their messages, so a replay would not bring them back either.
func (c *core) prune(ctx context.Context) error {
	for {
		var n int64
		err := c.results.Use(func(db *sqlite.DB) (err error) {
			n, err = db.PruneResults(ctx, time.Now().Add(-c.retention))
			return err
		})
		if err != nil && ctx.Err() == nil {
			c.log.Warn("pruning the results read model failed; trying again later", "err", err)
		}
		if n > 0 {
			c.log.Info("pruned expired script logs", "scripts", n, "retention", c.retention)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pruneEvery):
		}
	}
}

// newExecutor builds the executor of this process: the ssh and local
// methods; agent servers are served by their agents.
func newExecutor(ctx context.Context, js jetstream.JetStream, svc *services.Service, ex execFlags, sup *executor.Supervisor, log *slog.Logger) (*executor.Executor, *executor.SSH, error) {
	host, _ := os.Hostname()
	ssh, err := executor.NewSSH(executor.SSHConfig{
		Host: host, KeyFiles: ex.SSHKeys, AgentSocket: os.Getenv("SSH_AUTH_SOCK"), KnownHosts: ex.KnownHosts,
		ConnectTimeout: ex.ConnectTimeout, Trust: svc.TrustHostKey,
	})
	if err != nil {
		return nil, nil, err
	}
	e, err := executor.New(ctx, executor.Config{
		JetStream:  js,
		Methods:    map[string]executor.Method{services.MethodSSH: ssh, services.MethodLocal: executor.Local{Host: host}},
		Provide:    []string{services.MethodAgent},
		AckWait:    ex.AckWait,
		Parallel:   ex.Parallel,
		KeepOutput: true,
		Logger:     log.With("component", "executor"),
		Supervisor: sup,
	})
	return e, ssh, err
}

// observer is what follows the log in memory: the write model and the
// planner's model.
type observer interface {
	Observe(events.Envelope) error
	Seq() uint64
}

// logFollower is the read model's source: one consumer of the log feeds
// the in-memory models too, so changes made by other processes reach this
// one without a consumer each.
type logFollower struct {
	store     *eventstore.Store
	observers []observer
}

// catchUp folds the whole log into the observers, once, at start.
func (f logFollower) catchUp(ctx context.Context) error {
	for e, err := range f.store.Read(ctx, 1) {
		if err != nil {
			return fmt.Errorf("replay the log: %w", err)
		}
		if err := f.observe(e); err != nil {
			return err
		}
	}
	return nil
}

func (f logFollower) observe(e events.Envelope) error {
	for _, o := range f.observers {
		if err := o.Observe(e); err != nil {
			return err
		}
	}
	return nil
}

// Follow implements projections.Source. It starts where an observer or
// the read model is behind, whichever is earliest; observers skip what they
// have folded, and the read model gets events from from on.
func (f logFollower) Follow(ctx context.Context, from uint64, fn func([]events.Envelope) error) error {
	start := from
	for _, o := range f.observers {
		start = min(start, o.Seq()+1)
	}
	return f.store.Follow(ctx, start, func(batch []events.Envelope) error {
		for _, e := range batch {
			if err := f.observe(e); err != nil {
				return err
			}
		}
		i := 0
		for i < len(batch) && batch[i].Sequence < from {
			i++
		}
		if i == len(batch) {
			return nil
		}
		return fn(batch[i:])
	})
}

// bootstrapToken issues the first admin token when the log has no admin
// token, and writes it to path (0600). Either way the log says where the
// token file is.
func bootstrapToken(ctx context.Context, svc *services.Service, path string, log *slog.Logger) error {
	res, err := svc.Bootstrap(ctx, func(t services.TokenResult) error {
		return files.WriteAtomic(path, []byte(t.Token+"\n"), 0o600)
	})
	if err != nil {
		return fmt.Errorf("first admin token: %w", err)
	}
	if res.Token == "" {
		if _, err := os.Stat(path); err == nil {
			log.Info("admin token", "file", path)
		}
		return nil
	}
	log.Info("admin token written; keep it safe", "file", path, "name", res.Name)
	return nil
}

// openLocal opens what lives in the data directory beside JetStream: the
// secret key and the read-model database.
func openLocal(dataDir string) (*secrets.Sealer, *sqlite.DB, error) {
	sealer, err := secrets.LoadOrCreate(filepath.Join(dataDir, secretKeyFile))
	if err != nil {
		return nil, nil, err
	}
	db, err := sqlite.Open(filepath.Join(dataDir, modelDBFile))
	if err != nil {
		return nil, nil, err
	}
	return sealer, db, nil
}
