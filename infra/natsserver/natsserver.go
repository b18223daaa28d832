// Package natsserver runs nats-server inside the Orchestra process, with
// JetStream file storage under the data directory.
package natsserver

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Config of the embedded server.
type Config struct {
	// DataDir holds the JetStream store, in DataDir/jetstream.
	DataDir string
	// Listen is the client address, host:port ("127.0.0.1:0" picks a free
	// port). Empty means no listener: in-process connections only.
	Listen string
	// SyncAlways makes JetStream fsync every write instead of every two
	// minutes: an acknowledged write then survives a power loss, at a cost
	// (see the README's benchmark table).
	SyncAlways bool
	// ServerName is the server's name in the NATS system; default "orchestra".
	ServerName string
	// Auth checks every connection when set (natsauth.Authority); without
	// it the server trusts every client.
	Auth server.Authentication
	// Cluster, when set, makes the server a node of a NATS cluster: it
	// listens for routes on Cluster.Listen and connects to Cluster.Routes
	// (nats-route://host:port, the other nodes). A clustered node needs
	// Listen, and ServerName unique in the cluster.
	Cluster *Cluster
	Logger  *slog.Logger
}

// Cluster is a node's part of a NATS cluster.
type Cluster struct {
	Name   string
	Listen string   // host:port for routes
	Routes []string // the other nodes' route URLs
}

func (c *Config) setDefaults() {
	if c.ServerName == "" {
		c.ServerName = "orchestra"
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports every problem with the configuration at once.
func (c Config) Validate() error {
	var errs []error
	if c.DataDir == "" {
		errs = append(errs, errors.New("natsserver: DataDir is required"))
	}
	if c.Listen != "" {
		if _, _, err := splitListen(c.Listen); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Cluster != nil {
		if c.Listen == "" {
			errs = append(errs, errors.New("natsserver: a cluster node needs Listen (a clustered server cannot skip listening)"))
		}
		if c.Cluster.Name == "" {
			errs = append(errs, errors.New("natsserver: Cluster.Name is required"))
		}
		if _, _, err := splitListen(c.Cluster.Listen); err != nil {
			errs = append(errs, fmt.Errorf("natsserver: Cluster.Listen: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Server is a running embedded nats-server.
type Server struct {
	ns *server.Server
}

// Start starts the server and waits until it accepts connections.
func Start(cfg Config) (*Server, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	opts := &server.Options{
		ServerName:             cfg.ServerName,
		JetStream:              true,
		StoreDir:               filepath.Join(cfg.DataDir, "jetstream"),
		SyncAlways:             cfg.SyncAlways,
		NoSigs:                 true,
		DisableJetStreamBanner: true,
	}
	if cfg.Auth != nil {
		opts.CustomClientAuthentication = cfg.Auth
		opts.AlwaysEnableNonce = true
	}
	if cfg.Listen == "" {
		opts.DontListen = true
	} else {
		host, port, err := splitListen(cfg.Listen)
		if err != nil {
			return nil, err
		}
		opts.Host, opts.Port = host, port
	}
	if cfg.Cluster != nil {
		host, port, _ := splitListen(cfg.Cluster.Listen) // checked by Validate
		opts.Cluster.Name, opts.Cluster.Host, opts.Cluster.Port = cfg.Cluster.Name, host, port
		for _, r := range cfg.Cluster.Routes {
			u, err := url.Parse(r)
			if err != nil {
				return nil, fmt.Errorf("natsserver: route %q: %w", r, err)
			}
			opts.Routes = append(opts.Routes, u)
		}
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("nats-server: %w", err)
	}
	ns.SetLoggerV2(&logger{l: cfg.Logger.With("component", "nats-server")}, false, false, false)
	ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("nats-server on %q did not become ready in 30s", cfg.Listen)
	}
	return &Server{ns: ns}, nil
}

// ClientURL is the URL clients outside the process use; empty when the
// server does not listen.
func (s *Server) ClientURL() string {
	if s.ns.Addr() == nil {
		return ""
	}
	return s.ns.ClientURL()
}

// Connect opens an in-process connection (no TCP) to the server.
func (s *Server) Connect(opts ...nats.Option) (*nats.Conn, error) {
	opts = append([]nats.Option{nats.InProcessServer(s.ns), nats.Name("orchestra")}, opts...)
	nc, err := nats.Connect("", opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to embedded nats-server: %w", err)
	}
	return nc, nil
}

// Shutdown stops the server, flushing JetStream to disk, and waits for it.
func (s *Server) Shutdown() {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
}

// Done is closed once the server has shut down, by Shutdown or on its own.
func (s *Server) Done() <-chan struct{} {
	done := make(chan struct{})
	go func() {
		s.ns.WaitForShutdown()
		close(done)
	}()
	return done
}

func splitListen(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("nats listen address %q: %w", addr, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("nats listen address %q: port must be 0…65535", addr)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	return host, port, nil
}

// logger adapts nats-server's logging to slog.
type logger struct{ l *slog.Logger }

func (g *logger) Noticef(format string, v ...any) { g.l.Debug(fmt.Sprintf(format, v...)) }
func (g *logger) Warnf(format string, v ...any)   { g.l.Warn(fmt.Sprintf(format, v...)) }
func (g *logger) Fatalf(format string, v ...any)  { g.l.Error(fmt.Sprintf(format, v...)) }
func (g *logger) Errorf(format string, v ...any)  { g.l.Error(fmt.Sprintf(format, v...)) }
func (g *logger) Debugf(format string, v ...any)  { g.l.Debug(fmt.Sprintf(format, v...)) }
func (g *logger) Tracef(format string, v ...any)  { g.l.Debug(fmt.Sprintf(format, v...)) }
