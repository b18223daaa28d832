package natsauth_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/executor"
	"github.com/orchestra-fleet/orchestra/infra/natsauth"
	"github.com/orchestra-fleet/orchestra/infra/natsserver"
	"github.com/orchestra-fleet/orchestra/infra/streams"
)

// guarded is an embedded server that checks credentials, with the streams
// provisioned over the process's own connection.
type guarded struct {
	dir  string
	url  string
	auth *natsauth.Authority
	js   jetstream.JetStream
}

func startGuarded(t *testing.T) *guarded {
	t.Helper()
	dir := t.TempDir()
	auth, err := natsauth.LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := natsserver.Start(natsserver.Config{DataDir: dir, Listen: "127.0.0.1:0", Auth: auth})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	nc, err := srv.Connect(auth.Internal())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := streams.Provision(ctx, js, streams.Config{}); err != nil {
		t.Fatal(err)
	}
	return &guarded{dir: dir, url: srv.ClientURL(), auth: auth, js: js}
}

// agent connects over TCP as server's agent with creds.
func (g *guarded) agent(t *testing.T, server string, creds []byte) (*nats.Conn, *violations, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.creds")
	if err := os.WriteFile(path, creds, 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := natsauth.AgentOptions(server, path)
	if err != nil {
		t.Fatal(err)
	}
	return g.connect(t, opts...)
}

// admin connects over TCP as an operator, with the password of the data
// directory.
func (g *guarded) admin(t *testing.T, password string) (*nats.Conn, *violations, error) {
	t.Helper()
	return g.connect(t, nats.UserInfo(natsauth.User, password))
}

// connect connects over TCP, recording asynchronous errors (permission
// violations arrive that way).
func (g *guarded) connect(t *testing.T, opts ...nats.Option) (*nats.Conn, *violations, error) {
	t.Helper()
	v := &violations{}
	opts = append(opts, nats.MaxReconnects(0),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { v.add(err) }))
	nc, err := nats.Connect(g.url, opts...)
	if err == nil {
		t.Cleanup(nc.Close)
	}
	return nc, v, err
}

type violations struct {
	mu   sync.Mutex
	errs []string
}

func (v *violations) add(err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.errs = append(v.errs, err.Error())
}

// wait returns once an error naming subject arrived (bounded).
func (v *violations) wait(t *testing.T, subject string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		v.mu.Lock()
		for _, e := range v.errs {
			if strings.Contains(e, "Permissions Violation") && strings.Contains(e, subject) {
				v.mu.Unlock()
				return
			}
		}
		v.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no permissions violation for %s; errors: %v", subject, v.errs)
}

func TestConnectionsNeedCredentials(t *testing.T) {
	g := startGuarded(t)
	if nc, err := nats.Connect(g.url, nats.MaxReconnects(0)); err == nil {
		nc.Close()
		t.Fatal("a connection without credentials was accepted")
	}
	if _, _, err := g.admin(t, "wrong"); err == nil {
		t.Fatal("a wrong password was accepted")
	}
	other, err := natsauth.LoadOrCreate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	forged, _ := other.Agent("web1")
	if _, _, err := g.agent(t, "web1", forged); err == nil {
		t.Fatal("credentials signed by another account were accepted")
	}
	password, err := os.ReadFile(filepath.Join(g.dir, natsauth.PasswordFile))
	if err != nil {
		t.Fatal(err)
	}
	nc, _, err := g.admin(t, strings.TrimSpace(string(password)))
	if err != nil {
		t.Fatalf("the operator's password: %v", err)
	}
	js, _ := jetstream.New(nc)
	if _, err := js.Stream(context.Background(), events.StreamEvents); err != nil {
		t.Fatalf("an operator cannot read stream info: %v", err)
	}
	// The account seed is kept: credentials issued after a restart work.
	again, err := natsauth.LoadOrCreate(g.dir)
	if err != nil {
		t.Fatal(err)
	}
	later, _ := again.Agent("web1")
	if _, _, err := g.agent(t, "web1", later); err != nil {
		t.Fatalf("credentials from the same seed: %v", err)
	}
	// Credentials given to the agent of another server say so.
	path := filepath.Join(t.TempDir(), "web1.creds")
	if err := os.WriteFile(path, later, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := natsauth.AgentOptions("web2", path); err == nil || !strings.Contains(err.Error(), `are for "agent web1", not the agent of web2`) {
		t.Fatalf("credentials of web1 for web2: %v", err)
	}
}

func TestAgentCredentialsReachOnlyTheirServer(t *testing.T) {
	g := startGuarded(t)
	creds, err := g.auth.Agent("web1")
	if err != nil {
		t.Fatal(err)
	}
	nc, v, err := g.agent(t, "web1", creds)
	if err != nil {
		t.Fatalf("agent credentials: %v", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}

	// It runs its own server's plans, on the consumer orchestra up made
	// for it, and stores their results.
	own, _ := executor.ConsumerConfig("web1", 3*time.Second)
	if _, err := g.js.CreateOrUpdateConsumer(context.Background(), events.StreamExec, own); err != nil {
		t.Fatal(err)
	}
	ex, err := executor.New(context.Background(), executor.Config{JetStream: js, Bind: true,
		Methods: map[string]executor.Method{"agent": executor.Local{Host: "web1"}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() {
		defer close(served)
		ex.Serve(ctx, "web1", func() (events.Server, bool) {
			return events.Server{Name: "web1", Method: "agent", Active: true}, true
		})
	}()
	defer func() { cancel(); <-served }()
	for _, server := range []string{"web1", "web2"} {
		publishPlan(t, g.js, server, "echo on "+server)
	}
	fin := waitFinished(t, g.js, "web1")
	if fin.State != events.StateSuccess || fin.Stdout != int64(len("echo on web1")-4) {
		t.Fatalf("web1: %+v", fin)
	}

	// Another server's queue is out of reach: its subject, its consumer,
	// its messages by direct get.
	if _, err := nc.SubscribeSync("orchestra.exec.web2"); err != nil {
		t.Fatal(err)
	}
	v.wait(t, "orchestra.exec.web2")
	cfg, _ := executor.ConsumerConfig("web2", time.Second)
	cctx, ccancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer ccancel()
	if _, err := js.CreateOrUpdateConsumer(cctx, events.StreamExec, cfg); err == nil {
		t.Fatal("the agent of web1 created the consumer of web2")
	}
	if _, err := js.CreateOrUpdateConsumer(cctx, events.StreamExec, jetstream.ConsumerConfig{Durable: "exec-web1", FilterSubject: "orchestra.exec.web2"}); err == nil {
		t.Fatal("the agent of web1 pointed its consumer at web2's subject")
	}
	pushed := own
	pushed.DeliverSubject, pushed.AckPolicy = "orchestra.agent.web2.sync", jetstream.AckNonePolicy
	if _, err := js.CreateOrUpdateConsumer(cctx, events.StreamExec, pushed); err == nil {
		t.Fatal("the agent of web1 changed how its consumer delivers")
	}
	v.wait(t, "$JS.API.CONSUMER.CREATE.EXEC.exec-web2")
	if _, err := nc.Request("$JS.API.DIRECT.GET.EXEC.orchestra.exec.web2", nil, time.Second); err == nil {
		t.Fatal("the agent of web1 read web2's plan")
	}

	// Nor can it publish another server's results, or records other than
	// a script's run about its own.
	planned := "orchestra.res.web1." + uuid.NewString() + ".ScriptPlanned"
	if err := nc.Publish(planned, []byte("{}")); err != nil {
		t.Fatal(err)
	}
	v.wait(t, planned)
	forged, _ := json.Marshal(events.ScriptFinished{ID: uuid.New(), Server: "web2", State: events.StateSuccess})
	subject, _ := events.ScriptSubject("web2", uuid.New(), "ScriptFinished")
	if err := nc.Publish(subject, forged); err != nil {
		t.Fatal(err)
	}
	v.wait(t, subject)
	stream, err := g.js.Stream(context.Background(), events.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.GetLastMsgForSubject(context.Background(), "orchestra.res.web2.>"); err == nil {
		t.Fatal("a result about web2 was stored")
	}
}

func publishPlan(t *testing.T, js jetstream.JetStream, server, text string) {
	t.Helper()
	p := events.Plan{Unit: uuid.New(), Server: server, Time: time.Now(), Scripts: []events.PlanScript{
		{ID: uuid.New(), Backend: "b", Executable: "/bin/bash", Timeout: "1m", Script: text}}}
	data, _ := json.Marshal(p)
	subject, _ := events.ExecSubject(server)
	if _, err := js.Publish(context.Background(), subject, data); err != nil {
		t.Fatal(err)
	}
}

func waitFinished(t *testing.T, js jetstream.JetStream, server string) events.ScriptFinished {
	t.Helper()
	stream, err := js.Stream(context.Background(), events.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		msg, err := stream.GetLastMsgForSubject(context.Background(), "orchestra.res."+server+".*.ScriptFinished")
		if err == nil {
			var fin events.ScriptFinished
			if err := json.Unmarshal(msg.Data, &fin); err != nil {
				t.Fatal(err)
			}
			return fin
		}
		if time.Now().After(deadline) {
			t.Fatalf("no result on %s: %v", server, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
