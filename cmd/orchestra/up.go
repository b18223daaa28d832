package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/run"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/executor"
	"github.com/orchestra-fleet/orchestra/gateway"
	"github.com/orchestra-fleet/orchestra/infra/natsauth"
	"github.com/orchestra-fleet/orchestra/infra/natsserver"
	"github.com/orchestra-fleet/orchestra/infra/notify"
	"github.com/orchestra-fleet/orchestra/infra/streams"
	"github.com/orchestra-fleet/orchestra/services"
)

// upConfig holds the flags of `orchestra up`.
type upConfig struct {
	DataDir      string
	HTTPAddr     string
	NATSListen   string
	NATSURL      string
	Fsync        string
	Replicas     int
	LogRetention time.Duration
	LogLevel     string
	LogFormat    string
	ApplyWait    time.Duration
	Exec         execFlags
	Notify       notifyFlags
}

// notifyFlags configure the global notification targets of `orchestra up`.
type notifyFlags struct {
	Webhooks   []string
	SecretFile string
	Emails     []string
	SMTP       string
	From       string
}

// targets are the global targets the flags name, the webhooks signed with
// the secret file's content.
func (n notifyFlags) targets() ([]notify.Target, error) {
	secret := ""
	if n.SecretFile != "" {
		b, err := os.ReadFile(n.SecretFile)
		if err != nil {
			return nil, fmt.Errorf("--notify-webhook-secret-file: %w", err)
		}
		secret = strings.TrimSpace(string(b))
	}
	var out []notify.Target
	for _, w := range n.Webhooks {
		out = append(out, notify.Target{Webhook: w, Secret: secret})
	}
	for _, e := range n.Emails {
		out = append(out, notify.Target{Email: e})
	}
	return out, nil
}

// execFlags configure the executor of `orchestra up`.
type execFlags struct {
	SSHKeys        []string
	KnownHosts     []string
	ConnectTimeout time.Duration
	AckWait        time.Duration
	Parallel       int
}

// Validate reports every bad flag at once, each naming the flag.
func (c upConfig) Validate() error {
	var errs []error
	if c.DataDir == "" {
		errs = append(errs, errors.New("--data: must not be empty"))
	}
	if c.Fsync != "interval" && c.Fsync != "always" {
		errs = append(errs, fmt.Errorf("--fsync: %q, want interval or always", c.Fsync))
	}
	if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
		errs = append(errs, fmt.Errorf("--http: %v", err))
	}
	if _, _, err := net.SplitHostPort(c.NATSListen); c.NATSURL == "" && err != nil {
		errs = append(errs, fmt.Errorf("--nats-listen: %v", err))
	}
	if err := (streams.Config{Replicas: c.Replicas, LogRetention: c.LogRetention, LogMaxBytes: streams.DefaultLogMaxBytes}).Validate(); err != nil {
		errs = append(errs, fmt.Errorf("--replicas/--log-retention: %w", err))
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		errs = append(errs, err)
	}
	if c.ApplyWait < 0 || c.ApplyWait > gateway.MaxApplyWait {
		errs = append(errs, fmt.Errorf("--apply-wait: %s, want 0s to %s", c.ApplyWait, gateway.MaxApplyWait))
	}
	if c.Exec.AckWait < time.Second {
		errs = append(errs, fmt.Errorf("--ack-wait: %s, want at least 1s", c.Exec.AckWait))
	}
	if c.Exec.Parallel < 1 {
		errs = append(errs, fmt.Errorf("--parallel: %d, want at least 1", c.Exec.Parallel))
	}
	if c.Exec.ConnectTimeout < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("--connect-timeout: %s, want at least 100ms", c.Exec.ConnectTimeout))
	}
	for _, w := range c.Notify.Webhooks {
		if err := services.ValidateNotify("--notify-webhook", events.Notify{Webhook: w}); err != nil {
			errs = append(errs, err)
		}
	}
	for _, e := range c.Notify.Emails {
		if err := services.ValidateNotify("--notify-email", events.Notify{Email: e}); err != nil {
			errs = append(errs, err)
		}
	}
	if _, _, err := net.SplitHostPort(c.Notify.SMTP); c.Notify.SMTP != "" && err != nil {
		errs = append(errs, fmt.Errorf("--smtp: %v", err))
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		errs = append(errs, fmt.Errorf("--log-format: %q, want text or json", c.LogFormat))
	}
	return errors.Join(errs...)
}

func newUpCommand(stderr io.Writer) *cobra.Command {
	var c upConfig
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run Orchestra: NATS (embedded unless --nats), the HTTP API and every actor, in one process",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := c.Validate(); err != nil {
				return usageError{err}
			}
			level, _ := parseLevel(c.LogLevel)
			opts := &slog.HandlerOptions{Level: level}
			var h slog.Handler = slog.NewTextHandler(stderr, opts)
			if c.LogFormat == "json" {
				h = slog.NewJSONHandler(stderr, opts)
			}
			return up(cmd.Context(), c, slog.New(h))
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.DataDir, "data", ".orchestra", "data directory: JetStream store, read models, keys")
	f.StringVar(&c.HTTPAddr, "http", "127.0.0.1:7070", "HTTP API listen address")
	f.StringVar(&c.NATSListen, "nats-listen", "127.0.0.1:4222", "client address of the embedded NATS server (for agents and the NATS CLI)")
	f.StringVar(&c.NATSURL, "nats", "", "join this NATS server or cluster (comma-separated URLs) instead of embedding one")
	f.StringVar(&c.Fsync, "fsync", "interval", "embedded JetStream durability: interval (fsync every 2 min) or always (every write)")
	f.IntVar(&c.Replicas, "replicas", 1, "stream replicas: 1 embedded, 3 on a cluster")
	f.DurationVar(&c.LogRetention, "log-retention", streams.DefaultLogRetention, "how long EXEC, RESULTS and LOGS keep messages")
	home, _ := os.UserHomeDir()
	sshDir := filepath.Join(home, ".ssh")
	f.StringSliceVar(&c.Exec.SSHKeys, "ssh-key", []string{filepath.Join(sshDir, "id_ed25519"), filepath.Join(sshDir, "id_ecdsa"), filepath.Join(sshDir, "id_rsa")},
		"private keys of the ssh method (repeatable; missing files are skipped; an ssh-agent at SSH_AUTH_SOCK is used too)")
	f.StringSliceVar(&c.Exec.KnownHosts, "known-hosts", []string{filepath.Join(sshDir, "known_hosts")}, "known_hosts files that verify servers without a pinned host_key (repeatable)")
	f.DurationVar(&c.Exec.ConnectTimeout, "connect-timeout", executor.DefaultConnectTimeout, "bound on connecting to a server over ssh, handshake included")
	f.DurationVar(&c.Exec.AckWait, "ack-wait", executor.DefaultAckWait, "how long a plan stays with an executor that stopped answering before it runs again")
	f.IntVar(&c.Exec.Parallel, "parallel", executor.DefaultParallel, "how many servers run a plan at once")
	f.DurationVar(&c.ApplyWait, "apply-wait", gateway.DefaultApplyWait, "how long an apply waits for the scripts of its synchronous routes, unless the request says (?wait=); 0s answers at once")
	f.StringArrayVar(&c.Notify.Webhooks, "notify-webhook", nil, "URL told of every run's end and every failed model script (repeatable)")
	f.StringVar(&c.Notify.SecretFile, "notify-webhook-secret-file", "", "file holding the key the --notify-webhook posts are signed with (HMAC-SHA256)")
	f.StringArrayVar(&c.Notify.Emails, "notify-email", nil, "address told of every run's end and every failed model script (repeatable; needs --smtp)")
	f.StringVar(&c.Notify.SMTP, "smtp", "", "SMTP server (HOST:PORT) that sends notification email, without authentication")
	f.StringVar(&c.Notify.From, "smtp-from", notify.DefaultFrom, "sender of notification email")
	f.StringVar(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&c.LogFormat, "log-format", "text", "text or json")
	return cmd
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("--log-level: %q, want debug, info, warn or error", s)
	}
	return l, nil
}

// up runs everything until a signal, then stops it in order: HTTP first,
// so no request is cut off mid-write, then NATS, which flushes JetStream.
func up(ctx context.Context, c upConfig, log *slog.Logger) error {
	// Signals stay caught until up returns: a second SIGINT or SIGTERM
	// (a terminal's Ctrl-C reaches `go run` and this process both) must not
	// kill the process halfway through its graceful stop.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)

	dataDir, err := filepath.Abs(c.DataDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}

	var (
		srv     *natsserver.Server
		nc      *nats.Conn
		natsURL = c.NATSURL
	)
	connOpts := []nats.Option{nats.Name("orchestra up"), nats.MaxReconnects(-1)}
	if c.NATSURL == "" {
		var auth *natsauth.Authority
		if auth, err = natsauth.LoadOrCreate(dataDir); err != nil {
			return err
		}
		srv, err = natsserver.Start(natsserver.Config{
			DataDir: dataDir, Listen: c.NATSListen, SyncAlways: c.Fsync == "always", Logger: log, Auth: auth,
		})
		if err != nil {
			return err
		}
		defer func() {
			log.Info("stopping nats-server")
			srv.Shutdown()
		}()
		natsURL = srv.ClientURL()
		log.Info("nats credentials", "user", natsauth.User, "password_file", filepath.Join(dataDir, natsauth.PasswordFile))
		nc, err = srv.Connect(append(connOpts, auth.Internal())...)
	} else {
		nc, err = nats.Connect(c.NATSURL, append(connOpts, nats.RetryOnFailedConnect(true))...)
	}
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}

	sealer, db, err := openLocal(dataDir)
	if err != nil {
		return err
	}
	defer db.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ready := make(chan struct{})
	gw := gateway.Config{Ready: ready, Metrics: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ApplyWait: c.ApplyWait}
	if c.ApplyWait == 0 {
		gw.ApplyWait = -1 // answer at once unless a request asks
	}
	// Until the write model has caught up, a start-up handler answers
	// health checks and 503 for the API; then the API takes its place.
	var handler atomic.Pointer[http.Handler]
	starting, err := gateway.NewHandler(gw)
	if err != nil {
		return err
	}
	handler.Store(&starting)
	ln, err := net.Listen("tcp", c.HTTPAddr)
	if err != nil {
		return fmt.Errorf("--http: %w", err)
	}
	httpSrv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			(*handler.Load()).ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}

	var g run.Group
	{ // signals
		sctx, cancel := context.WithCancel(ctx)
		g.Add(func() error {
			select {
			case sig := <-sigs:
				return stopSignal{sig}
			case <-sctx.Done():
				return sctx.Err()
			}
		}, func(error) { cancel() })
	}
	{ // core: streams provisioned once NATS answers, the write model caught
		// up, the API in place; then the process is ready and follows the log
		pctx, cancel := context.WithCancel(ctx)
		g.Add(func() error {
			if err := provision(pctx, js, c, log); err != nil {
				return nil // interrupted before NATS answered
			}
			core, err := startCore(pctx, js, dataDir, db, sealer, &handler, gw, c.Exec, c.Notify, c.LogRetention, log)
			if err != nil {
				if pctx.Err() != nil {
					return nil
				}
				return err
			}
			close(ready)
			log.Info("ready", "streams", []string{"EVENTS", "EXEC", "RESULTS", "LOGS", "NOTIFY"}, "seq", core.svc.Seq())
			return core.run(pctx)
		}, func(error) {
			log.Info("stopping core")
			cancel()
		})
	}
	{ // HTTP API
		g.Add(func() error {
			if err := httpSrv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("http: %w", err)
			}
			return nil
		}, func(error) {
			log.Info("stopping http")
			sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			_ = httpSrv.Shutdown(sctx)
		})
	}
	if srv != nil { // the embedded server ending on its own ends the process
		stop := make(chan struct{})
		done := srv.Done()
		g.Add(func() error {
			select {
			case <-done:
				return errors.New("embedded nats-server stopped")
			case <-stop:
				return nil
			}
		}, func(error) { close(stop) })
	}

	log.Info("orchestra up", "http", "http://"+ln.Addr().String(), "nats", natsURL, "embedded_nats", srv != nil,
		"data", dataDir, "fsync", c.Fsync, "replicas", c.Replicas)
	err = g.Run()
	var sig stopSignal
	if errors.As(err, &sig) {
		log.Info("stopped", "signal", sig.String())
		return nil
	}
	return err
}

// stopSignal ends the run group when SIGINT or SIGTERM arrives.
type stopSignal struct{ os.Signal }

func (s stopSignal) Error() string { return "received " + s.String() }

// provision creates the streams, retrying while NATS is unreachable, until
// it succeeds or ctx ends (then it returns ctx's error).
func provision(ctx context.Context, js jetstream.JetStream, c upConfig, log *slog.Logger) error {
	cfg := streams.Config{Replicas: c.Replicas, LogRetention: c.LogRetention}
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := streams.Provision(actx, js, cfg)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() == nil {
			log.Warn("provisioning streams failed; retrying", "err", err, "attempt", attempt)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
