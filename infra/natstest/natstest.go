// Package natstest starts a real embedded JetStream server for tests, with
// Orchestra's streams provisioned, or a cluster of them.
package natstest

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
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

// Cluster starts n embedded nodes on loopback, routed to each other as one
// NATS cluster, and shuts them down when the test ends. It returns the
// nodes by server name (n1, n2, …) and their client URLs, comma-separated
// as nats.Connect and `orchestra up --nats` take them. Nothing is
// provisioned (ClusterJS does). It skips the test under -short.
func Cluster(t testing.TB, n int) (nodes map[string]*natsserver.Server, urls string) {
	t.Helper()
	if testing.Short() {
		t.Skip("a NATS cluster: its nodes take seconds to elect their leaders")
	}
	// Ports free a moment ago, held open together so none comes up twice.
	ports, held := make([]int, 2*n), make([]net.Listener, 0, 2*n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, l)
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	for _, l := range held {
		l.Close()
	}
	client, routes := ports[:n], ports[n:]
	nodes = map[string]*natsserver.Server{}
	started := make(chan error, n)
	var mu sync.Mutex
	for i := range n {
		var others []string
		for j := range n {
			if j != i {
				others = append(others, fmt.Sprintf("nats-route://127.0.0.1:%d", routes[j]))
			}
		}
		name := fmt.Sprintf("n%d", i+1)
		dir := t.TempDir()
		go func() { // a node waits for its routes: start them together
			s, err := natsserver.Start(natsserver.Config{DataDir: dir, Listen: fmt.Sprintf("127.0.0.1:%d", client[i]), ServerName: name,
				Cluster: &natsserver.Cluster{Name: "orchestra", Listen: fmt.Sprintf("127.0.0.1:%d", routes[i]), Routes: others}})
			if err == nil {
				mu.Lock()
				nodes[name] = s
				mu.Unlock()
			}
			started <- err
		}()
	}
	var errs []error
	for range n {
		if err := <-started; err != nil {
			errs = append(errs, err)
		}
	}
	all := make([]*natsserver.Server, 0, n) // the test may drop stopped nodes from the map
	for _, s := range nodes {
		all = append(all, s)
	}
	t.Cleanup(func() {
		for _, s := range all {
			s.Shutdown()
		}
	})
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	list := make([]string, n)
	for i := range n {
		list[i] = fmt.Sprintf("nats://127.0.0.1:%d", client[i])
	}
	return nodes, strings.Join(list, ",")
}

// ClusterJS starts a cluster of n nodes (Cluster), connects to it,
// reconnecting at once when a node stops, and provisions Orchestra's
// streams with three replicas, trying again while the cluster elects its
// meta leader.
func ClusterJS(t testing.TB, n int) (nodes map[string]*natsserver.Server, urls string, js jetstream.JetStream) {
	t.Helper()
	nodes, urls = Cluster(t, n)
	nc, err := nats.Connect(urls, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	js = JetStream(t, nc)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for {
		pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
		err = streams.Provision(pctx, js, streams.Config{Replicas: 3})
		pcancel()
		if err == nil {
			return nodes, urls, js
		}
		if ctx.Err() != nil {
			t.Fatalf("provision R3 streams: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// JetStream is the JetStream context of nc, which closes when the test
// ends.
func JetStream(t testing.TB, nc *nats.Conn) jetstream.JetStream {
	t.Helper()
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}
