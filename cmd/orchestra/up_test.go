package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/infra/eventstore"
	"github.com/orchestra-fleet/orchestra/infra/natsauth"
	"github.com/orchestra-fleet/orchestra/infra/natsserver"
	"github.com/orchestra-fleet/orchestra/infra/natstest"
	"github.com/orchestra-fleet/orchestra/services"
)

var binary string

// TestMain builds the real binary once; the tests run it as operators do.
func TestMain(m *testing.M) {
	if dir := os.Getenv(rawEnv); dir != "" {
		if err := rawProcess(dir); err != nil {
			fmt.Fprintln(os.Stderr, "raw process:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "orchestra-bin")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "orchestra")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		os.Stderr.Write(out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// process is a running `orchestra up`.
type process struct {
	cmd      *exec.Cmd
	http     string // base URL
	nats     string
	data     string // data directory
	exited   chan error
	logsDone chan struct{}
	mu       sync.Mutex
	logs     *bytes.Buffer
	token    string // sent on every request once set
}

// logged reports whether the process has logged s so far.
func (p *process) logged(s string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Contains(p.logs.String(), s)
}

// startUp runs `orchestra up` with args and waits for its startup line.
func startUp(t testing.TB, args ...string) *process {
	t.Helper()
	args = append([]string{"up", "--http", "127.0.0.1:0", "--log-format", "json"}, args...)
	cmd := exec.Command(binary, args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, exited: make(chan error, 1), logs: &bytes.Buffer{}}
	started := make(chan map[string]any, 1)
	lines := make(chan string, 1024)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec["msg"] == "orchestra up" {
				started <- rec
			}
			lines <- sc.Text()
		}
		close(lines)
	}()
	go func() { p.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-p.exited
		}
	})
	p.logsDone = make(chan struct{})
	go func() {
		for l := range lines {
			p.mu.Lock()
			p.logs.WriteString(l + "\n")
			p.mu.Unlock()
		}
		close(p.logsDone)
	}()
	select {
	case rec := <-started:
		p.http, _ = rec["http"].(string)
		p.nats, _ = rec["nats"].(string)
		p.data, _ = rec["data"].(string)
	case err := <-p.exited:
		t.Fatalf("orchestra up exited before starting: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("no startup line from orchestra up in 60s")
	}
	return p
}

func (p *process) get(t testing.TB, path string) (int, string) {
	t.Helper()
	req, err := http.NewRequest("GET", p.http+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.token != "" {
		req.Header.Set("Authorization", "Bearer "+p.token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func (p *process) waitReady(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if code, _ := p.get(t, "/readyz"); code == http.StatusOK {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("orchestra up did not become ready in 60s")
}

// stop sends SIGTERM and checks the process exits cleanly within the 5 s
// graceful-stop contract, logging each component it stops.
func (p *process) stop(t testing.TB, components ...string) {
	t.Helper()
	p.signal(t, syscall.SIGTERM)
	p.waitStopped(t, components...)
}

func (p *process) signal(t testing.TB, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

func (p *process) waitStopped(t testing.TB, components ...string) {
	t.Helper()
	select {
	case err := <-p.exited:
		if err != nil {
			t.Fatalf("orchestra up exited with %v after SIGTERM", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("orchestra up did not stop within 5 s of SIGTERM")
	}
	<-p.logsDone
	for _, c := range components {
		if want := "stopping " + c; !p.logged(want) {
			t.Errorf("shutdown log lacks %q:\n%s", want, p.logs)
		}
	}
}

// adminToken reads the token the first `up` wrote, checking it is private.
func adminToken(t testing.TB, dataDir string) string {
	t.Helper()
	path := filepath.Join(dataDir, "admin.token")
	info, err := os.Stat(path)
	if err != nil {
		t.Fatalf("no admin token file: %v", err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Fatalf("%s has mode %v, want 0600", path, info.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// connect connects to the NATS server of p as an operator (with the
// password in its data directory when it embeds the server).
func connect(t testing.TB, p *process) (*eventstore.Store, jetstream.JetStream) {
	t.Helper()
	var opts []nats.Option
	if pw, err := os.ReadFile(filepath.Join(p.data, natsauth.PasswordFile)); err == nil {
		opts = append(opts, nats.UserInfo(natsauth.User, strings.TrimSpace(string(pw))))
	}
	nc, err := nats.Connect(p.nats, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := events.NewRegistry(events.Catalog()...)
	if err != nil {
		t.Fatal(err)
	}
	s, err := eventstore.New(context.Background(), eventstore.Config{JetStream: js, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	return s, js
}

func TestUpServesStopsAndKeepsEvents(t *testing.T) {
	dir := t.TempDir()
	p := startUp(t, "--data", dir, "--nats-listen", "127.0.0.1:0")
	p.waitReady(t)

	if code, body := p.get(t, "/healthz"); code != 200 || !strings.Contains(body, `"ok"`) {
		t.Fatalf("/healthz = %d %s", code, body)
	}
	if code, _ := p.get(t, "/metrics"); code != 401 {
		t.Fatalf("/metrics without a token = %d, want 401", code)
	}
	p.token = adminToken(t, dir)
	if code, body := p.get(t, "/metrics"); code != 200 || !strings.Contains(body, "go_goroutines") {
		t.Fatalf("/metrics = %d, no go_goroutines", code)
	}
	if code, body := p.get(t, "/v1/nothing-here"); code != 404 || !strings.Contains(body, `"status":404`) {
		t.Fatalf("unknown path = %d %s, want a 404 problem", code, body)
	}

	// Append through the NATS port `up` exposes, as an agent or a second
	// process would.
	s, _ := connect(t, p)
	u, _ := services.NewUnit(events.Meta{Actor: "e2e"}, time.Now())
	for _, n := range []string{"web1.example.com", "db1"} {
		agg := events.Aggregate{Type: events.AggServer, ID: n}
		u.Expect(agg, 0)
		_ = u.Add(agg, &events.ServerSaved{Server: events.Server{Name: n, Address: n, Port: 22, Method: "ssh", Active: true}})
	}
	if _, err := s.Append(context.Background(), u); err != nil {
		t.Fatal(err)
	}
	p.stop(t, "http", "nats-server")

	// Same data directory: the events are still there.
	p = startUp(t, "--data", dir, "--nats-listen", "127.0.0.1:0")
	p.waitReady(t)
	s, _ = connect(t, p)
	h, err := s.Load(context.Background(), events.Aggregate{Type: events.AggServer, ID: "web1.example.com"})
	if err != nil || len(h.Events) != 1 || h.Events[0].Unit != u.ID {
		t.Fatalf("after restart: %+v, %v", h, err)
	}
	p.stop(t, "http", "nats-server")
}

// A second signal during the graceful stop (Ctrl-C under `go run` delivers
// two) must not cut the stop short.
func TestUpSurvivesRepeatedSignals(t *testing.T) {
	p := startUp(t, "--data", t.TempDir(), "--nats-listen", "127.0.0.1:0")
	p.waitReady(t)
	// A request whose headers are still arriving keeps the HTTP drain
	// busy, so the second signal lands in the middle of the stop.
	conn, err := net.Dial("tcp", strings.TrimPrefix(p.http, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // let the server read the first bytes
	p.signal(t, syscall.SIGINT)
	for deadline := time.Now().Add(30 * time.Second); !p.logged("stopping http"); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no \"stopping http\" within 30s of SIGINT")
		}
	}
	p.signal(t, syscall.SIGTERM)
	p.waitStopped(t, "http", "nats-server")
}

func TestUpJoinsExistingNATS(t *testing.T) {
	env := natstest.StartAt(t, natsserver.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0"})
	if err := env.JS.DeleteStream(context.Background(), events.StreamEvents); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p := startUp(t, "--data", dir, "--nats", env.Server.ClientURL())
	p.waitReady(t)
	if p.nats != env.Server.ClientURL() {
		t.Fatalf("startup line says nats=%s, want %s", p.nats, env.Server.ClientURL())
	}
	if _, err := env.JS.Stream(context.Background(), events.StreamEvents); err != nil {
		t.Fatalf("up --nats did not provision EVENTS on the existing server: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "jetstream")); !os.IsNotExist(err) {
		t.Fatalf("up --nats started an embedded JetStream store in %s", dir)
	}
	p.stop(t, "http")
	if strings.Contains(p.logs.String(), "stopping nats-server") {
		t.Fatal("up --nats stopped a nats-server it does not own")
	}
}

func TestUpRefusesBadFlags(t *testing.T) {
	out, err := exec.Command(binary, "up", "--fsync", "sometimes", "--http", "nowhere", "--replicas", "2").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
		t.Fatalf("exit = %v, want status 2\n%s", err, out)
	}
	for _, want := range []string{"--fsync", "--http", "--replicas"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("error output does not name %s:\n%s", want, out)
		}
	}
}
