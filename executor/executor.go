package executor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/orchestra-fleet/orchestra/events"
)

// Defaults of Config.
const (
	DefaultAckWait     = 30 * time.Second
	DefaultMaxAttempts = 5
	DefaultParallel    = 64
	// DefaultTimeout bounds a script whose plan names no timeout.
	DefaultTimeout = 5 * time.Minute
)

// Config of an Executor.
type Config struct {
	JetStream jetstream.JetStream
	// Methods serve servers by their method ("ssh", "local", "agent");
	// servers of other methods are left to other executors.
	Methods map[string]Method
	// AckWait is how long a plan stays with an executor that stopped
	// answering before it goes to another (or the same, restarted) one.
	// A running script renews it every AckWait/3.
	AckWait time.Duration
	// MaxAttempts is how many times a plan may be lost mid-run (the
	// executor crashed or lost its connection) before its scripts are
	// given up as ABORTED.
	MaxAttempts int
	// Parallel bounds how many servers run a plan at once.
	Parallel int
	// Provide lists methods whose servers' queues this executor creates
	// (with its AckWait) but does not serve: orchestra up makes the
	// agents' consumers, so an agent's credentials need not allow making
	// or changing one.
	Provide []string
	// Bind makes Serve use the server's existing consumer (made by
	// whoever Provides it), waiting for it, instead of making it; the
	// heartbeat follows that consumer's AckWait.
	Bind bool
	// KeepOutput keeps outputs beyond Limits.Events whole in events.OutputBucket.
	KeepOutput bool
	Limits     Limits
	Logger     *slog.Logger
	// Supervisor runs the supervised processes of local servers; without
	// it their steps end in ERROR.
	Supervisor *Supervisor
}

func (c *Config) setDefaults() {
	if c.AckWait == 0 {
		c.AckWait = DefaultAckWait
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.Parallel == 0 {
		c.Parallel = DefaultParallel
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	c.Limits.setDefaults()
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	var errs []error
	if c.JetStream == nil {
		errs = append(errs, errors.New("executor: JetStream is required"))
	}
	if len(c.Methods) == 0 {
		errs = append(errs, errors.New("executor: no methods"))
	}
	if c.AckWait < time.Second {
		errs = append(errs, fmt.Errorf("executor: ack wait %s, want at least 1s", c.AckWait))
	}
	if c.MaxAttempts < 1 || c.Parallel < 1 {
		errs = append(errs, errors.New("executor: max attempts and parallel must be at least 1"))
	}
	return errors.Join(errs...)
}

// Executor carries out the plans of many servers: strictly one plan at a
// time and in order on each server, many servers at once.
type Executor struct {
	cfg Config
	res *results
	sem chan struct{}
}

// New returns an executor on the provisioned streams.
func New(ctx context.Context, cfg Config) (*Executor, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	res := &results{js: cfg.JetStream}
	if cfg.KeepOutput {
		obj, err := cfg.JetStream.ObjectStore(ctx, events.OutputBucket)
		if err != nil {
			return nil, fmt.Errorf("executor: bucket %s: %w", events.OutputBucket, err)
		}
		res.objects = obj
	}
	return &Executor{cfg: cfg, res: res, sem: make(chan struct{}, cfg.Parallel)}, nil
}

// Run serves every active server of the fleet whose method this executor
// has, picking up servers as they are added, changed or removed, until ctx
// ends.
func (e *Executor) Run(ctx context.Context, fleet *Fleet) error {
	type worker struct {
		cancel context.CancelFunc
		done   chan struct{}
	}
	workers := map[string]worker{}
	provided := map[string]events.Server{}
	defer func() {
		for _, w := range workers {
			w.cancel()
			<-w.done
		}
	}()
	for {
		servers, changed := fleet.Servers()
		var gone []worker
		for name, w := range workers {
			if s, ok := servers[name]; !ok || !e.serves(s) {
				w.cancel()
				gone = append(gone, w)
				delete(workers, name)
				e.cfg.Logger.Info("executor: server no longer served here", "server", name)
			}
		}
		for _, w := range gone {
			<-w.done
		}
		for name, s := range servers {
			if _, ok := workers[name]; ok || !e.serves(s) {
				continue
			}
			wctx, cancel := context.WithCancel(ctx)
			w := worker{cancel: cancel, done: make(chan struct{})}
			workers[name] = w
			go func() {
				defer close(w.done)
				e.Serve(wctx, name, func() (events.Server, bool) { return fleet.Server(name) })
			}()
		}
		retry := e.provide(ctx, servers, provided)
		select {
		case <-changed:
		case <-retry:
		case <-ctx.Done():
			return nil
		}
	}
}

// provide makes the consumers of the servers whose methods are in Provide
// and that changed since; it returns a channel that fires when one failed
// and should be tried again.
func (e *Executor) provide(ctx context.Context, servers, provided map[string]events.Server) <-chan time.Time {
	failed := false
	for name, s := range servers {
		if !slices.Contains(e.cfg.Provide, s.Method) {
			continue
		}
		if p, ok := provided[name]; ok && p.Method == s.Method {
			continue
		}
		cfg, err := ConsumerConfig(name, e.cfg.AckWait)
		if err == nil {
			_, err = e.cfg.JetStream.CreateOrUpdateConsumer(ctx, events.StreamExec, cfg)
		}
		if err != nil {
			e.cfg.Logger.Warn("executor: making the queue of a server failed; retrying", "server", name, "err", err)
			failed = true
			continue
		}
		provided[name] = s
	}
	if failed {
		return time.After(5 * time.Second)
	}
	return nil
}

func (e *Executor) serves(s events.Server) bool {
	_, ok := e.cfg.Methods[s.Method]
	return ok && s.Active
}

// Serve carries out the plans of one server in order until ctx ends.
// lookup returns the server as it is when a plan starts.
func (e *Executor) Serve(ctx context.Context, name string, lookup func() (events.Server, bool)) {
	log := e.cfg.Logger.With("server", name)
	wait := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := e.serve(ctx, name, lookup, log)
		if ctx.Err() != nil {
			return
		}
		log.Warn("executor: the server's queue failed; retrying", "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 10*time.Second)
	}
}

// ConsumerName is the durable consumer of a server's queue.
func ConsumerName(server string) (string, error) {
	tok, err := events.Token(server)
	if err != nil {
		return "", err
	}
	return "exec-" + tok, nil
}

// ConsumerConfig is the durable consumer that gives a server its plans
// one at a time: with MaxAckPending 1 the next plan is not delivered
// before the current one is acknowledged.
func ConsumerConfig(server string, ackWait time.Duration) (jetstream.ConsumerConfig, error) {
	name, err := ConsumerName(server)
	if err != nil {
		return jetstream.ConsumerConfig{}, err
	}
	subject, err := events.ExecSubject(server)
	if err != nil {
		return jetstream.ConsumerConfig{}, err
	}
	return jetstream.ConsumerConfig{
		Durable:       name,
		Description:   "Plans of server " + server + ", one at a time",
		FilterSubject: subject,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       ackWait,
		MaxAckPending: 1,
		MaxDeliver:    -1,
	}, nil
}

func (e *Executor) serve(ctx context.Context, name string, lookup func() (events.Server, bool), log *slog.Logger) error {
	cfg, err := ConsumerConfig(name, e.cfg.AckWait)
	if err != nil {
		return err
	}
	var cons jetstream.Consumer
	if e.cfg.Bind {
		cons, err = e.cfg.JetStream.Consumer(ctx, events.StreamExec, cfg.Durable)
	} else {
		cons, err = e.cfg.JetStream.CreateOrUpdateConsumer(ctx, events.StreamExec, cfg)
	}
	if err != nil {
		return fmt.Errorf("consumer %s: %w", cfg.Durable, err)
	}
	ackWait := cons.CachedInfo().Config.AckWait
	AwaitLeader(ctx, cons)
	it, err := cons.Messages(jetstream.PullMaxMessages(1))
	if err != nil {
		return fmt.Errorf("consumer %s: %w", cfg.Durable, err)
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	defer it.Stop()
	log.Debug("executor: serving", "consumer", cfg.Durable)
	for {
		msg, err := it.Next()
		if err != nil {
			return err
		}
		e.handle(ctx, msg, ackWait, lookup, log)
	}
}

// handle carries out one plan and acknowledges it once every script's
// result is stored. When the executor stops or loses the plan meanwhile,
// it is not acknowledged: it comes back, with the next attempt number.
func (e *Executor) handle(ctx context.Context, msg jetstream.Msg, ackWait time.Duration, lookup func() (events.Server, bool), log *slog.Logger) {
	meta, err := msg.Metadata()
	if err != nil {
		log.Error("executor: a message without metadata", "err", err)
		_ = msg.Term()
		return
	}
	var plan events.Plan
	if err := json.Unmarshal(msg.Data(), &plan); err != nil {
		log.Error("executor: not a plan; dropped", "stream_seq", meta.Sequence.Stream, "err", err)
		_ = msg.TermWithReason("not a plan")
		return
	}
	attempt := int(meta.NumDelivered)
	pctx, lost := context.WithCancelCause(ctx)
	defer lost(nil)
	stopBeat := heartbeat(pctx, e.cfg.JetStream.Conn(), msg, ackWait, lost)
	defer stopBeat()

	select {
	case e.sem <- struct{}{}:
		defer func() { <-e.sem }()
	case <-pctx.Done():
	}
	released := false
	for _, s := range plan.Scripts {
		if pctx.Err() != nil {
			break
		}
		// A server removed, deactivated or moved to another method
		// meanwhile: the rest of the plan waits for whoever serves it.
		srv, ok := lookup()
		if !ok || !e.serves(srv) {
			released = true
			break
		}
		if err := e.run(pctx, srv, plan, s, attempt); err != nil && pctx.Err() == nil {
			log.Error("executor: script result not stored", "script", s.ID, "err", err)
			lost(err)
		}
	}
	switch {
	case ctx.Err() != nil || released:
		// Stopping, or the server is no longer served here: hand the plan
		// back at once rather than after AckWait.
		_ = msg.Nak()
		return
	case pctx.Err() != nil:
		log.Warn("executor: plan lost mid-run; it will be delivered again", "unit", plan.Unit, "attempt", attempt, "why", context.Cause(pctx))
		return
	}
	if err := msg.DoubleAck(ctx); err != nil {
		log.Warn("executor: acknowledging the plan failed; it will run again", "unit", plan.Unit, "err", err)
	}
}

// heartbeat tells the server every ackWait/3 that the plan is still being
// worked on, and waits for the server's answer to a ping after it (a
// publish during a reconnect is only buffered). When that fails the plan
// may go to another executor, so the run is cancelled through lost.
func heartbeat(ctx context.Context, nc *nats.Conn, msg jetstream.Msg, ackWait time.Duration, lost context.CancelCauseFunc) (stop func()) {
	done := make(chan struct{})
	var once sync.Once
	go func() {
		t := time.NewTicker(ackWait / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				err := msg.InProgress()
				if err == nil {
					err = nc.FlushTimeout(ackWait / 3)
				}
				if err != nil {
					lost(fmt.Errorf("heartbeat: %w", err))
					return
				}
			}
		}
	}()
	return func() { once.Do(func() { close(done) }) }
}

// claim takes up site step s for this attempt. It reports done when the
// step ended meanwhile (revoked), and gives up guarding after a few tries
// that lose to results of other kinds (the planner's record landing late).
func (e *Executor) claim(ctx context.Context, plan events.Plan, s events.PlanScript, attempt int) (done bool, err error) {
	claim := events.ScriptStarted{ID: s.ID, Unit: plan.Unit, Server: plan.Server, Backend: s.Backend, Attempt: attempt,
		Executor: "claimed", Time: time.Now()}
	for range 3 {
		ok, err := Claim(ctx, e.cfg.JetStream, plan.Server, s.ID, claim, &events.ScriptFinished{}, fmt.Sprintf("%s.%d.claim", s.ID, attempt))
		if err != nil || ok {
			return false, err
		}
		if done, err := e.res.last(ctx, plan.Server, s.ID, &events.ScriptFinished{}); err != nil || done {
			return done, err
		}
	}
	return false, nil
}

// stopEarlier kills what the script's last attempt may have left running
// on the server when its executor died, so that this attempt never runs
// beside it. It returns a note for the reason when that failed.
func (e *Executor) stopEarlier(ctx context.Context, method Method, srv events.Server, id uuid.UUID, attempt int) string {
	var last events.ScriptStarted
	found, err := e.res.last(ctx, srv.Name, id, &last)
	if err != nil {
		return "an earlier attempt may still run: " + err.Error()
	}
	if !found || last.Attempt >= attempt || last.PID <= 0 {
		return ""
	}
	if err := method.Kill(ctx, srv, last.PID, fmt.Sprintf("%s.%d", id, last.Attempt)); err != nil {
		return fmt.Sprintf("attempt %d may still run: %v", last.Attempt, err)
	}
	return ""
}

// run carries out one script of a plan on srv, a server this executor
// serves, and stores its result. A script that already finished (in an
// earlier attempt, or before its queue's consumer was made again) is not
// run again.
func (e *Executor) run(ctx context.Context, srv events.Server, plan events.Plan, s events.PlanScript, attempt int) error {
	if plan.Site != "" {
		// A site step can be revoked while it waits: claim it first, so
		// that the runner's revoke and this start cannot both win. The
		// claim looks for an end too.
		if done, err := e.claim(ctx, plan, s, attempt); err != nil || done {
			return err
		}
	} else if done, err := e.res.last(ctx, plan.Server, s.ID, &events.ScriptFinished{}); err != nil || done {
		return err
	}
	fin := events.ScriptFinished{ID: s.ID, Unit: plan.Unit, Server: plan.Server, Backend: s.Backend, Attempt: attempt, ExitCode: -1}
	method := e.cfg.Methods[srv.Method]
	switch {
	case attempt > e.cfg.MaxAttempts:
		fin.State = events.StateAborted
		fin.Reason = fmt.Sprintf("delivered %d times without finishing (the executor crashed, lost its connection, stopped or let the server go); given up", attempt-1)
	default:
		timeout := DefaultTimeout
		if d, err := time.ParseDuration(s.Timeout); err == nil && d > 0 {
			timeout = d
		}
		earlier := ""
		if attempt > 1 {
			earlier = e.stopEarlier(ctx, method, srv, s.ID, attempt)
		}
		fin.Started = time.Now()
		started := events.ScriptStarted{ID: s.ID, Unit: plan.Unit, Server: plan.Server, Backend: s.Backend,
			Attempt: attempt, Executor: method.Name(), Time: fin.Started}
		var once sync.Once
		var startErr error
		report := func(pid int) {
			once.Do(func() {
				started.PID = pid
				_, startErr = e.res.publish(plan.Server, s.ID, fmt.Sprintf("%s.%d.%s", s.ID, attempt, started.ResultType()), started)
			})
		}
		c := newCapture(e.res, plan.Server, s.ID, attempt, e.cfg.Limits)
		var out Outcome
		switch {
		case s.Supervise == nil:
			out = method.Run(ctx, Job{Server: srv, Script: s, Timeout: timeout, Stdout: c.stdout(), Stderr: c.stderr(),
				Run: fmt.Sprintf("%s.%d", s.ID, attempt), Started: report})
		case srv.Method != "local" || e.cfg.Supervisor == nil:
			out = Outcome{State: events.StateError, ExitCode: -1, Reason: fmt.Sprintf("server %s cannot supervise processes: only the executor of a local server does", srv.Name)}
		default:
			out = e.cfg.Supervisor.Do(srv.Name, *s.Supervise, c.stdout())
		}
		fin.Duration = time.Since(fin.Started)
		report(0) // when the method never learnt the process
		got := c.finish(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if startErr != nil {
			return startErr
		}
		fin.State, fin.ExitCode, fin.Object = out.State, out.ExitCode, got.object
		fin.Reason = join(join(earlier, out.Reason), got.note)
		fin.Stdout, fin.Stderr = got.stdout, got.stderr
	}
	fin.Time = time.Now()
	return e.res.store(ctx, plan.Server, s.ID, fmt.Sprintf("%s.%d.%s", s.ID, attempt, fin.ResultType()), fin)
}

// leaderWait bounds how long AwaitLeader waits.
const leaderWait = 10 * time.Second

// AwaitLeader waits, at most leaderWait, until cons has a leader. A
// consumer just made on a NATS cluster (by this process, or by another at
// the same moment) has none for a moment, and a pull sent then is
// answered "no responders", which nats.go takes for a pull still pending:
// the consumer would stall until the pull expires, 30 s later. Call it
// before the first pull of a consumer just created or updated. On a
// single server a consumer always has one.
func AwaitLeader(ctx context.Context, cons jetstream.Consumer) {
	info := cons.CachedInfo()
	for deadline := time.Now().Add(leaderWait); info.Cluster != nil && info.Cluster.Leader == "" && time.Now().Before(deadline); {
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
		if i, err := cons.Info(ctx); err == nil {
			info = i
		}
	}
}
