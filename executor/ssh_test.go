package executor_test

import (
	"context"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/executor"
	"github.com/orchestra-fleet/orchestra/infra/sshdtest"
)

// sshRig is a rig whose executor has the ssh method, with the keys of a
// real sshd on loopback.
type sshRig struct {
	*rig
	sshd    *sshdtest.Server
	method  *executor.SSH
	mu      sync.Mutex
	trusted map[string]string // server → key recorded on first use
}

func newSSHRig(t testing.TB, sshd *sshdtest.Server, knownHosts bool) *sshRig {
	t.Helper()
	r := &sshRig{sshd: sshd, trusted: map[string]string{}}
	cfg := executor.SSHConfig{Host: "test", KeyFiles: []string{sshd.ClientKeyFile}, ConnectTimeout: 2 * time.Second,
		Trust: func(_ context.Context, server, key string) error {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.trusted[server] = key
			return nil
		}}
	if knownHosts {
		cfg.KnownHosts = []string{sshd.KnownHostsFile}
	}
	m, err := executor.NewSSH(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	r.method = m
	r.rig = newRig(t, executor.Config{Methods: map[string]executor.Method{"ssh": m}, KeepOutput: true})
	return r
}

// sshServer is a server of the fleet at addr ("127.0.0.1:port").
func (r *sshRig) sshServer(name, addr string) events.Server {
	host, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	return events.Server{Name: name, Address: host, Port: p, User: r.sshd.User, Method: "ssh", Active: true}
}

func TestSSHRunsScriptsOverOneConnection(t *testing.T) {
	sshd := sshdtest.Start(t)
	r := newSSHRig(t, sshd, true)
	r.save(r.sshServer("web1", sshd.Addrs[0]))
	ok := script("ok", `printf 'out\x00\xff\n'; printf 'err 1\n' >&2; echo "line 2"`, "1m")
	bad := script("bad", "echo failing >&2\nexit 3\n", "1m")
	r.send("web1", ok, bad)
	next := script("next", "echo again", "1m")
	r.send("web1", next)

	fin := r.finished("web1", ok.ID)
	if fin.State != events.StateSuccess || fin.ExitCode != 0 {
		t.Fatalf("ok: %+v", fin)
	}
	rs := r.results("web1", ok.ID)
	if stdout, _ := output(t, rs, events.Stdout); string(stdout) != "out\x00\xff\nline 2\n" {
		t.Fatalf("stdout %q", stdout)
	}
	if stderr, _ := output(t, rs, events.Stderr); string(stderr) != "err 1\n" {
		t.Fatalf("stderr %q", stderr)
	}
	if started := rs[0].v.(*events.ScriptStarted); started.Executor != "ssh from test" {
		t.Fatalf("started by %q", started.Executor)
	}
	if fin := r.finished("web1", bad.ID); fin.State != events.StateFailure || fin.ExitCode != 3 {
		t.Fatalf("bad: %+v", fin)
	}
	if fin := r.finished("web1", next.ID); fin.State != events.StateSuccess {
		t.Fatalf("next: %+v", fin)
	}
	// Three scripts, two plans: one connection, one handshake.
	if n := sshd.Accepted(); n != 1 || r.method.Dials() != 1 {
		t.Fatalf("sshd accepted %d connections and the method dialed %d, want 1", n, r.method.Dials())
	}
}

func TestSSHTimeoutKillsTheScript(t *testing.T) {
	sshd := sshdtest.Start(t)
	r := newSSHRig(t, sshd, true)
	r.save(r.sshServer("web1", sshd.Addrs[0]))
	hang, after, marker := r.hangingPlans("web1")
	r.timedOut("web1", hang, after, marker)
}

func TestSSHFailuresNameTheirCause(t *testing.T) {
	sshd := sshdtest.Start(t)
	other := sshdtest.Start(t) // a second host key, for a wrong pin
	r := newSSHRig(t, sshd, false)

	// A closed port: TIMEOUT, "connect: …".
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()
	// A port that accepts and never speaks SSH: TIMEOUT at the connect
	// timeout.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	pinnedWrong := r.sshServer("wrongkey", sshd.Addrs[0])
	pinnedWrong.HostKey = other.HostKeyLine
	pinnedRight := r.sshServer("pinned", sshd.Addrs[0])
	pinnedRight.HostKey = sshd.HostKeyLine
	tofu := r.sshServer("tofu", sshd.Addrs[0])
	tofu.TrustOnFirstUse = true
	badUser := r.sshServer("baduser", sshd.Addrs[0])
	badUser.User = "nobody-here"
	badUser.HostKey = sshd.HostKeyLine

	cases := []struct {
		server events.Server
		state  string
		reason string
	}{
		{r.sshServer("closed", closedAddr), events.StateTimeout, "connect: "},
		{r.sshServer("silent", silent.Addr().String()), events.StateTimeout, "connect: "},
		{r.sshServer("unknown", sshd.Addrs[0]), events.StateError, "host key: unknown host key ssh-ed25519 SHA256:"},
		{pinnedWrong, events.StateError, "host key: the server presented ssh-ed25519 SHA256:"},
		{badUser, events.StateError, "authentication as nobody-here"},
		{pinnedRight, events.StateSuccess, ""},
		{tofu, events.StateSuccess, ""},
	}
	ids := map[string]string{}
	for _, c := range cases {
		r.save(c.server)
		s := script("b", "echo hi", "1m")
		ids[c.server.Name] = s.ID.String()
		r.send(c.server.Name, s)
	}
	for _, c := range cases {
		fin := r.finished(c.server.Name, uuidOf(t, ids[c.server.Name]))
		if fin.State != c.state || !strings.HasPrefix(fin.Reason, c.reason) {
			t.Errorf("%s: %s %q, want %s %q…", c.server.Name, fin.State, fin.Reason, c.state, c.reason)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.trusted["tofu"] != sshd.HostKeyLine || len(r.trusted) != 1 {
		t.Fatalf("keys trusted on first use: %v", r.trusted)
	}
}
