package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/executor"
	"github.com/orchestra-fleet/orchestra/infra/files"
	"github.com/orchestra-fleet/orchestra/infra/natsauth"
	"github.com/orchestra-fleet/orchestra/services"
)

// agentConfig holds the flags of `orchestra agent`.
type agentConfig struct {
	Server      string
	NATSURL     string
	Creds       string
	SyncOnStart bool
	LogLevel    string
}

func newAgentCommand(stderr io.Writer) *cobra.Command {
	var c agentConfig
	cmd := &cobra.Command{
		Use:   "agent --server NAME --nats URL --creds FILE",
		Short: "Run on a server of method agent: take its plans from NATS and run them here",
		Long: `The agent pulls only its own server's plans, runs them one at a time in
order on this host (the script on the standard input of the backend's
executable), and publishes the results. Its credentials (orchestra agent
credentials SERVER) allow nothing else.

With --sync-on-start, and whenever a message arrives on
orchestra.agent.<server>.notify, it asks for a full sync of its server, so a
server that was offline converges on its own.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var errs []error
			if c.Server == "" {
				errs = append(errs, errors.New("--server: required"))
			} else if err := events.ValidateName("--server", c.Server); err != nil {
				errs = append(errs, err)
			}
			if c.NATSURL == "" {
				errs = append(errs, errors.New("--nats: required"))
			}
			if c.Creds == "" {
				errs = append(errs, errors.New("--creds: required"))
			}
			level, err := parseLevel(c.LogLevel)
			errs = append(errs, err)
			if err := errors.Join(errs...); err != nil {
				return usageError{err}
			}
			log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
			return runAgent(cmd.Context(), c, log)
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.Server, "server", "", "the server this agent runs on, as named in the model")
	f.StringVar(&c.NATSURL, "nats", "", "NATS URL of Orchestra (comma-separated for a cluster)")
	f.StringVar(&c.Creds, "creds", "", "credentials file from `orchestra agent credentials SERVER`")
	f.BoolVar(&c.SyncOnStart, "sync-on-start", false, "ask for a full sync of the server when the agent starts")
	f.StringVar(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
	cmd.AddCommand(newAgentCredentialsCommand())
	return cmd
}

func newAgentCredentialsCommand() *cobra.Command {
	var dataDir, out string
	cmd := &cobra.Command{
		Use:   "credentials SERVER",
		Short: "Issue NATS credentials that let an agent reach only SERVER's plans and results",
		Long: `Signs credentials with the account key in the data directory of the
Orchestra that embeds NATS; run it beside that data directory. The
credentials go to standard output, or to --out (mode 0600).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := events.ValidateName("SERVER", args[0]); err != nil {
				return usageError{err}
			}
			if _, err := os.Stat(filepath.Join(dataDir, natsauth.AccountFile)); err != nil {
				return fmt.Errorf("--data %s: no %s there; run `orchestra up --data %s` once first (agents need Orchestra's embedded NATS server)",
					dataDir, natsauth.AccountFile, dataDir)
			}
			auth, err := natsauth.LoadOrCreate(dataDir)
			if err != nil {
				return err
			}
			creds, err := auth.Agent(args[0])
			if err != nil {
				return err
			}
			if out == "" {
				_, err = cmd.OutOrStdout().Write(creds)
				return err
			}
			if err := files.WriteAtomic(out, creds, 0o600); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "credentials for the agent of %s written to %s\n", args[0], out)
			return nil
		},
	}
	cmd.Flags().StringVar(&dataDir, "data", ".orchestra", "data directory of orchestra up")
	cmd.Flags().StringVar(&out, "out", "", "write the credentials to this file (0600) instead of standard output")
	return cmd
}

// runAgent serves the server's queue until a signal.
func runAgent(ctx context.Context, c agentConfig, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	opts, err := natsauth.AgentOptions(c.Server, c.Creds)
	if err != nil {
		return usageError{err}
	}
	opts = append(opts, nats.Name("orchestra agent "+c.Server), nats.MaxReconnects(-1), nats.RetryOnFailedConnect(true),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { log.Warn("nats", "err", err) }))
	nc, err := nats.Connect(c.NATSURL, opts...)
	if err != nil {
		return fmt.Errorf("--nats %s: %w", c.NATSURL, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	host, _ := os.Hostname()
	ex, err := executor.New(ctx, executor.Config{
		JetStream: js, Methods: map[string]executor.Method{services.MethodAgent: executor.Local{Host: host}},
		Bind: true, Parallel: 1, Logger: log,
	})
	if err != nil {
		return err
	}
	tok, err := events.Token(c.Server)
	if err != nil {
		return err
	}
	syncs := make(chan struct{}, 1)
	ask := func() {
		select {
		case syncs <- struct{}{}:
		default: // one is already asked for
		}
	}
	if c.SyncOnStart {
		ask()
	}
	sub, err := nc.Subscribe(natsauth.AgentSubject(tok, "notify"), func(*nats.Msg) { ask() })
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-syncs:
				requestSync(ctx, nc, tok, log)
			}
		}
	}()
	log.Info("agent up", "server", c.Server, "nats", c.NATSURL, "sync_on_start", c.SyncOnStart)
	ex.Serve(ctx, c.Server, func() (events.Server, bool) {
		return events.Server{Name: c.Server, Method: services.MethodAgent, Active: true}, true
	})
	log.Info("agent stopped")
	return nil
}

// syncReply is the answer to an agent's request for a sync.
type syncReply struct {
	Unit     string `json:"unit,omitempty"`
	Sequence uint64 `json:"sequence,omitempty"`
	Error    string `json:"error,omitempty"`
}

// requestSync asks Orchestra for a full sync of the agent's server,
// retrying while nobody answers; the plans then arrive on its queue.
func requestSync(ctx context.Context, nc *nats.Conn, tok string, log *slog.Logger) {
	wait := time.Second
	for ctx.Err() == nil {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		msg, err := nc.RequestWithContext(rctx, natsauth.AgentSubject(tok, "sync"), nil)
		cancel()
		if err == nil {
			var r syncReply
			if err := json.Unmarshal(msg.Data, &r); err != nil || r.Error != "" {
				log.Warn("sync refused", "reason", r.Error, "err", err)
			} else {
				log.Info("sync requested", "unit", r.Unit, "sequence", r.Sequence)
			}
			return
		}
		log.Warn("asking for a sync failed; retrying", "err", err, "in", wait)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Minute)
	}
}

// agentSyncInterval is the least time between two syncs an agent asks for.
const agentSyncInterval = time.Second

// serveAgentSyncs answers agents' requests for a sync of their server
// until ctx ends. The subject names the server; an agent's credentials let
// it ask only for its own, and at most one per agentSyncInterval.
func serveAgentSyncs(ctx context.Context, nc *nats.Conn, svc *services.Service, fleet *executor.Fleet, log *slog.Logger) error {
	last := map[string]time.Time{} // the handler runs on one goroutine
	sub, err := nc.QueueSubscribe(natsauth.AgentSubject("*", "sync"), "orchestra", func(m *nats.Msg) {
		reply := answerSync(ctx, m.Subject, svc, fleet, last)
		if reply.Error != "" {
			log.Warn("agent sync refused", "subject", m.Subject, "reason", reply.Error)
		}
		data, _ := json.Marshal(reply)
		_ = m.Respond(data)
	})
	if err != nil {
		return err
	}
	<-ctx.Done()
	_ = sub.Unsubscribe()
	return nil
}

func answerSync(ctx context.Context, subject string, svc *services.Service, fleet *executor.Fleet, last map[string]time.Time) syncReply {
	parts := strings.Split(subject, ".")
	if len(parts) != 4 {
		return syncReply{Error: "not an agent subject"}
	}
	name, err := events.ParseToken(parts[2])
	if err != nil {
		return syncReply{Error: err.Error()}
	}
	if srv, ok := fleet.Server(name); !ok || srv.Method != services.MethodAgent {
		return syncReply{Error: fmt.Sprintf("server %s does not exist or is not of method agent", name)}
	}
	if since := time.Since(last[name]); since < agentSyncInterval {
		return syncReply{Error: fmt.Sprintf("a sync of %s was asked for %s ago; at most one per %s", name, since.Round(time.Millisecond), agentSyncInterval)}
	}
	last[name] = time.Now()
	res, err := svc.SyncServer(ctx, services.Principal{Name: "agent " + name, Role: services.RoleOperator}, name, "")
	if err != nil {
		return syncReply{Error: err.Error()}
	}
	return syncReply{Unit: res.Unit, Sequence: res.Sequence}
}
