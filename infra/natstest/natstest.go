// Package natstest starts a real embedded JetStream server for tests, with
// Orchestra's streams provisioned.
package natstest

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/orchestra-fleet/orchestra/infra/natsserver"
	"github.com/orchestra-fleet/orchestra/infra/streams"
)

// Env is a running server and a client connection to it.
type Env struct {
	Dir    string
	Server *natsserver.Server
	Conn   *nats.Conn
	JS     jetstream.JetStream
}

// Start runs a server in a fresh temporary directory.
func Start(t testing.TB) *Env {
	t.Helper()
	return StartAt(t, natsserver.Config{DataDir: t.TempDir()})
}

// StartAt runs a server with cfg (for instance on an earlier test's data
// directory, or with a listener), provisions the streams and shuts it all
// down when the test ends.
func StartAt(t testing.TB, cfg natsserver.Config) *Env {
	t.Helper()
	srv, err := natsserver.Start(cfg)
	if err != nil {
		t.Fatalf("start nats-server: %v", err)
	}
	nc, err := srv.Connect()
	if err != nil {
		srv.Shutdown()
		t.Fatalf("connect: %v", err)
	}
	env := &Env{Dir: cfg.DataDir, Server: srv, Conn: nc}
	t.Cleanup(env.Stop)
	env.JS, err = jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := streams.Provision(ctx, env.JS, streams.Config{}); err != nil {
		t.Fatalf("provision streams: %v", err)
	}
	return env
}

// Stop closes the connection and shuts the server down; calling it twice is
// harmless.
func (e *Env) Stop() {
	if !e.Conn.IsClosed() {
		e.Conn.Close()
		e.Server.Shutdown()
	}
}
