package executor_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/executor"
	"github.com/orchestra-fleet/orchestra/infra/sshdtest"
)

// A server whose sshd goes away: its scripts end TIMEOUT while it is gone,
// and the next one connects again once it is back.
func TestSSHReconnectsWhenTheServerIsBack(t *testing.T) {
	sshd := sshdtest.Start(t)
	r := newSSHRig(t, sshd, true)
	r.save(r.sshServer("web1", sshd.Addrs[0]))
	first := script("b", "true", "1m")
	r.send("web1", first)
	if fin := r.finished("web1", first.ID); fin.State != events.StateSuccess {
		t.Fatalf("first: %+v", fin)
	}
	sshd.Stop()
	gone := script("b", "true", "1m")
	r.send("web1", gone)
	if fin := r.finished("web1", gone.ID); fin.State != events.StateTimeout || !strings.HasPrefix(fin.Reason, "connect: ") {
		t.Fatalf("while the server is gone: %+v", fin)
	}
	sshd.Restart(t)
	back := script("b", "echo back", "1m")
	r.send("web1", back)
	if fin := r.finished("web1", back.ID); fin.State != events.StateSuccess {
		t.Fatalf("once it is back: %+v", fin)
	}
	if n := r.method.Dials(); n < 2 {
		t.Fatalf("%d connections made, want a new one after the restart", n)
	}
}

// The ssh method takes its keys from an ssh-agent too.
func TestSSHAuthenticatesThroughAnAgent(t *testing.T) {
	agentPath, err := exec.LookPath("ssh-agent")
	if err != nil {
		t.Skip("ssh-agent is not installed")
	}
	sshd := sshdtest.Start(t)
	sock := filepath.Join(t.TempDir(), "agent.sock")
	agent := exec.Command(agentPath, "-D", "-a", sock)
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = agent.Process.Kill()
		_ = agent.Wait()
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("ssh-agent did not create its socket")
		}
		time.Sleep(10 * time.Millisecond)
	}
	add := exec.Command("ssh-add", sshd.ClientKeyFile)
	add.Env = append(os.Environ(), "SSH_AUTH_SOCK="+sock)
	if out, err := add.CombinedOutput(); err != nil {
		t.Fatalf("ssh-add: %v\n%s", err, out)
	}
	m, err := executor.NewSSH(executor.SSHConfig{Host: "test", AgentSocket: sock, KnownHosts: []string{sshd.KnownHostsFile}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	r := newRig(t, executor.Config{Methods: map[string]executor.Method{"ssh": m}})
	sr := &sshRig{rig: r, sshd: sshd}
	r.save(sr.sshServer("web1", sshd.Addrs[0]))
	s := script("b", "echo via agent", "1m")
	r.send("web1", s)
	if fin := r.finished("web1", s.ID); fin.State != events.StateSuccess {
		t.Fatalf("%+v", fin)
	}
}

// A server with an ECDSA host key besides the ed25519 one on record is
// asked for the ed25519 key, pinned or in known_hosts.
func TestSSHAsksForTheKeyTypeOnRecord(t *testing.T) {
	sshd := sshdtest.StartWithECDSA(t)
	r := newSSHRig(t, sshd, true)
	pinned := r.sshServer("pinned", sshd.Addrs[0])
	pinned.HostKey = sshd.HostKeyLine
	for _, srv := range []events.Server{pinned, r.sshServer("known", sshd.Addrs[0])} {
		r.save(srv)
		s := script("b", "true", "1m")
		r.send(srv.Name, s)
		if fin := r.finished(srv.Name, s.ID); fin.State != events.StateSuccess {
			t.Errorf("%s: %s %s", srv.Name, fin.State, fin.Reason)
		}
	}
}
