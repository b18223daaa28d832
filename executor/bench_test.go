package executor_test

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/crypto/ssh"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/infra/benchpair"
	"github.com/orchestra-fleet/orchestra/infra/sshdtest"
)

// finishes counts ScriptFinished results as they are stored, to wait for
// a number of them.
type finishes struct {
	ch  chan events.ScriptFinished
	sub *nats.Subscription
}

func watchFinishes(b testing.TB, r *rig) *finishes {
	b.Helper()
	f := &finishes{ch: make(chan events.ScriptFinished, 4096)}
	sub, err := r.env.Conn.Subscribe("orchestra.res.*.*.ScriptFinished", func(m *nats.Msg) {
		var fin events.ScriptFinished
		if json.Unmarshal(m.Data, &fin) == nil {
			f.ch <- fin
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = sub.Unsubscribe() })
	return f
}

// wait takes n results, failing on any that did not succeed.
func (f *finishes) wait(b testing.TB, n int) {
	b.Helper()
	timeout := time.After(2 * time.Minute)
	for range n {
		select {
		case fin := <-f.ch:
			if fin.State != events.StateSuccess {
				b.Fatalf("%s on %s: %s %s", fin.Backend, fin.Server, fin.State, fin.Reason)
			}
		case <-timeout:
			b.Fatal("results did not arrive within 2 minutes")
		}
	}
}

// BenchmarkFIFOLocal: one plan running `true` through the whole executor
// — the server's consumer, ScriptStarted, the local method, the output,
// ScriptFinished stored, the ack — against a bare fork/exec of bash with
// `true` on its standard input, in the same run. %raw is the executor's
// plans per second as a share of bare runs per second.
func BenchmarkFIFOLocal(b *testing.B) {
	r := newRig(b, localConfig())
	r.save(localServer("bench"))
	f := watchFinishes(b, r)
	raw := func() {
		cmd := exec.Command("/bin/bash")
		cmd.Stdin = strings.NewReader("true\n")
		if err := cmd.Run(); err != nil {
			b.Fatal(err)
		}
	}
	ours := func() {
		r.send("bench", script("bench", "true\n", "1m"))
		f.wait(b, 1)
	}
	ours() // the consumer is in place
	var p benchpair.Pair
	b.ResetTimer()
	p.Run(b, 20, raw, ours)
	p.Report(b, b.N)
}

// BenchmarkSSHFanout: a plan running `true` on each of 50 servers (sshd
// on 50 loopback ports) until all 50 results are stored — cold (new
// connections) and warm (the executor's persistent ones) — beside, in the
// same run, raw x/crypto/ssh sessions on warm connections (rawSessions), parallel-ssh
// -p 50 and ansible -m raw -f 50 against the same hosts (installed by
// `task bench:peers`; skipped when missing). Every figure is the time for
// all 50 servers.
func BenchmarkSSHFanout(b *testing.B) {
	const servers = 50
	sshd := sshdtest.StartN(b, servers)
	sr := newSSHRig(b, sshd, true)
	var names []string
	for i, addr := range sshd.Addrs {
		name := fmt.Sprintf("s%02d", i)
		names = append(names, name)
		sr.save(sr.sshServer(name, addr))
	}
	f := watchFinishes(b, sr.rig)
	fanout := func() time.Duration {
		t0 := time.Now()
		for _, n := range names {
			sr.send(n, script("bench", "true\n", "1m"))
		}
		f.wait(b, servers)
		return time.Since(t0)
	}
	fanout() // consumers in place, connections made
	raw := rawSessions(b, sshd)
	peers := peerCommands(b, sshd)
	var cold, warm, rawT time.Duration
	peerT := map[string]time.Duration{}
	b.ResetTimer()
	for range b.N {
		sr.method.Close()
		cold += fanout()
		warm += fanout()
		rawT += raw()
		for name, run := range peers {
			peerT[name] += run()
		}
	}
	n := float64(b.N)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / n }
	b.ReportMetric(ms(cold), "cold-ms")
	b.ReportMetric(ms(warm), "warm-ms")
	b.ReportMetric(ms(rawT), "raw-session-ms")
	b.ReportMetric(float64(warm)/float64(rawT), "warm/raw")
	for name, d := range peerT {
		b.ReportMetric(ms(d), name+"-ms")
		b.ReportMetric(float64(cold)/float64(d), "cold/"+name)
	}
}

// rawSessions returns the raw operation of the ssh method: on each of the
// servers' warm x/crypto/ssh connections, all at once, one new session
// piping `true` to bash's standard input.
func rawSessions(b *testing.B, sshd *sshdtest.Server) func() time.Duration {
	var clients []*ssh.Client
	for _, addr := range sshd.Addrs {
		c, err := ssh.Dial("tcp", addr, sshd.ClientConfig())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		clients = append(clients, c)
	}
	return func() time.Duration {
		t0 := time.Now()
		var wg sync.WaitGroup
		for _, c := range clients {
			wg.Go(func() {
				s, err := c.NewSession()
				if err != nil {
					b.Error(err)
					return
				}
				defer s.Close()
				s.Stdin = strings.NewReader("true\n")
				if err := s.Run("/bin/bash"); err != nil {
					b.Error(err)
				}
			})
		}
		wg.Wait()
		return time.Since(t0)
	}
}

// peerCommands returns the tools Orchestra is compared with, each running
// `true` on every server, 50 at a time.
func peerCommands(b *testing.B, sshd *sshdtest.Server) map[string]func() time.Duration {
	dir := b.TempDir()
	sshOpts := fmt.Sprintf("-F /dev/null -i %s -o IdentitiesOnly=yes -o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes -o BatchMode=yes",
		sshd.ClientKeyFile, sshd.KnownHostsFile)
	var hosts, inventory strings.Builder
	for i, addr := range sshd.Addrs {
		host, port, _ := net.SplitHostPort(addr)
		fmt.Fprintf(&hosts, "%s@%s:%s\n", sshd.User, host, port)
		fmt.Fprintf(&inventory, "s%02d ansible_host=%s ansible_port=%s ansible_user=%s\n", i, host, port, sshd.User)
	}
	write := func(name, text string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			b.Fatal(err)
		}
		return path
	}
	hostsFile, inventoryFile := write("hosts", hosts.String()), write("inventory", inventory.String())
	timed := func(cmd func() *exec.Cmd) func() time.Duration {
		return func() time.Duration {
			c := cmd()
			t0 := time.Now()
			if out, err := c.CombinedOutput(); err != nil {
				b.Fatalf("%s: %v\n%s", c.Path, err, out)
			}
			return time.Since(t0)
		}
	}
	peers := map[string]func() time.Duration{}
	if path, err := exec.LookPath("parallel-ssh"); err == nil {
		peers["parallel-ssh"] = timed(func() *exec.Cmd {
			return exec.Command(path, "-p", "50", "-h", hostsFile, "-x", sshOpts, "true")
		})
	} else {
		b.Log("parallel-ssh is not installed (task bench:peers): not compared")
	}
	if path, err := exec.LookPath("ansible"); err == nil {
		control := filepath.Join(dir, "cp")
		peers["ansible"] = timed(func() *exec.Cmd {
			c := exec.Command(path, "all", "-i", inventoryFile, "-m", "raw", "-a", "true", "-f", "50", "--private-key", sshd.ClientKeyFile)
			c.Env = append(os.Environ(), "ANSIBLE_SSH_ARGS=-o ControlMaster=auto -o ControlPersist=1s "+sshOpts,
				"ANSIBLE_CONTROL_PATH_DIR="+control, "ANSIBLE_HOST_KEY_CHECKING=True", "ANSIBLE_LOCAL_TEMP="+dir)
			return c
		})
	} else {
		b.Log("ansible is not installed (task bench:peers): not compared")
	}
	return peers
}
