package sshdtest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// run opens a session on client, runs cmd and returns its standard output.
func run(t *testing.T, client *ssh.Client, cmd string) string {
	t.Helper()
	sess, err := client.NewSession()
	if err != nil {
		t.Fatalf("new session: %v", err)
	}
	defer sess.Close()
	var stderr bytes.Buffer
	sess.Stderr = &stderr
	out, err := sess.Output(cmd)
	if err != nil {
		t.Fatalf("run %q: %v (stderr %q)", cmd, err, stderr.String())
	}
	return string(out)
}

func dial(t *testing.T, addr string, cfg *ssh.ClientConfig) *ssh.Client {
	t.Helper()
	client, err := ssh.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { client.Close() })
	return client
}

func TestStartRunsACommandAndCountsConnections(t *testing.T) {
	s := Start(t)
	if len(s.Addrs) != 1 || s.User == "" || s.Dir == "" {
		t.Fatalf("server = %+v", s)
	}
	if !strings.HasPrefix(s.HostKeyLine, "ssh-ed25519 AAAA") || strings.Count(s.HostKeyLine, " ") != 1 {
		t.Fatalf("HostKeyLine = %q, want \"ssh-ed25519 AAAA...\" without a comment", s.HostKeyLine)
	}
	for _, f := range []string{s.ClientKeyFile, s.KnownHostsFile} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", f, fi.Mode().Perm())
		}
	}

	pem, err := os.ReadFile(s.ClientKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(pem)
	if err != nil {
		t.Fatalf("parse the client key: %v", err)
	}
	cfg := &ssh.ClientConfig{
		User:            s.User,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.FixedHostKey(s.HostKey),
		Timeout:         10 * time.Second,
	}
	first := dial(t, s.Addrs[0], cfg)
	if out := run(t, first, "echo hi"); out != "hi\n" {
		t.Fatalf("echo hi printed %q", out)
	}
	if out := run(t, first, "echo again"); out != "again\n" {
		t.Fatalf("echo again printed %q", out)
	}
	// A session has run on it, so the connection is in the log.
	if got := s.Accepted(); got != 1 {
		t.Fatalf("Accepted() = %d after one connection with two sessions, want 1\n%s", got, s.Log())
	}

	second := dial(t, s.Addrs[0], s.ClientConfig())
	if out := run(t, second, "echo hi"); out != "hi\n" {
		t.Fatalf("echo hi printed %q", out)
	}
	if got := s.Accepted(); got != 2 {
		t.Fatalf("Accepted() = %d after two connections, want 2\n%s", got, s.Log())
	}
}

func TestStartNListsEveryAddressInKnownHosts(t *testing.T) {
	s := StartN(t, 3)
	if len(s.Addrs) != 3 {
		t.Fatalf("Addrs = %v, want 3", s.Addrs)
	}
	seen := map[string]bool{}
	for _, addr := range s.Addrs {
		if seen[addr] {
			t.Fatalf("address %s twice in %v", addr, s.Addrs)
		}
		seen[addr] = true
	}
	check, err := knownhosts.New(s.KnownHostsFile)
	if err != nil {
		t.Fatalf("knownhosts.New: %v", err)
	}
	for _, addr := range s.Addrs {
		tcp, err := net.ResolveTCPAddr("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if err := check(addr, tcp, s.HostKey); err != nil {
			t.Errorf("known_hosts refuses the host key for %s: %v", addr, err)
		}
		// And the sshd on that port presents that key.
		cfg := s.ClientConfig()
		cfg.HostKeyCallback = check
		if out := run(t, dial(t, addr, cfg), "echo hi"); out != "hi\n" {
			t.Errorf("%s: echo hi printed %q", addr, out)
		}
	}
	if got := s.Accepted(); got != 3 {
		t.Errorf("Accepted() = %d after one connection per port, want 3", got)
	}
}

func TestStopDropsConnectionsAndRestartComesBack(t *testing.T) {
	s := Start(t)
	client := dial(t, s.Addrs[0], s.ClientConfig())
	run(t, client, "echo hi")

	s.Stop()
	s.Stop() // idempotent
	closed := make(chan error, 1)
	go func() { closed <- client.Wait() }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the connection outlived the stopped sshd")
	}
	if c, err := net.DialTimeout("tcp", s.Addrs[0], time.Second); err == nil {
		c.Close()
		t.Fatalf("%s still accepts connections after Stop", s.Addrs[0])
	}

	s.Restart(t)
	again := dial(t, s.Addrs[0], s.ClientConfig())
	if out := run(t, again, "echo back"); out != "back\n" {
		t.Fatalf("echo back printed %q", out)
	}
	if got := s.Accepted(); got != 2 {
		t.Fatalf("Accepted() = %d across a restart, want 2", got)
	}
}

// The files work with OpenSSH's own client too, as parallel-ssh and
// Ansible use it.
func TestOpenSSHClientLogsIn(t *testing.T) {
	sshBin, err := exec.LookPath("ssh")
	if err != nil {
		t.Skip("no OpenSSH client (ssh) installed")
	}
	s := Start(t)
	host, port, _ := net.SplitHostPort(s.Addrs[0])
	cmd := exec.Command(sshBin, "-F", "/dev/null",
		"-i", s.ClientKeyFile, "-o", "IdentitiesOnly=yes",
		"-o", "UserKnownHostsFile="+s.KnownHostsFile, "-o", "StrictHostKeyChecking=yes",
		"-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
		"-p", port, "-l", s.User, host, "echo hi")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("ssh: %v\n%s\n%s", err, out, s.Log())
	}
	if string(out) != "hi\n" {
		t.Fatalf("ssh printed %q", out)
	}
}

// Fifty "servers" at once, each with sessions in flight, as the SSH fan-out
// benchmarks use them: past 16 ports StartN runs several sshd processes,
// and every port must still authenticate and serve. The sessions ask for
// the sftp subsystem, which sshd serves itself: a command would start the
// user's shell and its startup files, which cost this test more than the
// rest of it.
func TestStartNServesFiftyConcurrentConnections(t *testing.T) {
	const servers, sessions = 50, 2
	s := StartN(t, servers)
	errs := make(chan error, servers*sessions)
	var wg sync.WaitGroup
	for _, addr := range s.Addrs {
		wg.Go(func() {
			client, err := ssh.Dial("tcp", addr, s.ClientConfig())
			if err != nil {
				errs <- fmt.Errorf("dial %s: %w", addr, err)
				return
			}
			defer client.Close()
			if err := openSessions(client, sessions); err != nil {
				errs <- fmt.Errorf("%s: %w", addr, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := s.WaitAccepted(t, servers); got != servers {
		t.Errorf("Accepted() = %d, want %d", got, servers)
	}
}

// MaxSessions is raised past OpenSSH's default of 10 sessions open at once
// on one connection.
func TestManySessionsOnOneConnection(t *testing.T) {
	s := Start(t)
	client := dial(t, s.Addrs[0], s.ClientConfig())
	if err := openSessions(client, 30); err != nil {
		t.Fatal(err)
	}
}

// openSessions opens n sftp sessions on client, all open at once, then
// closes them.
func openSessions(client *ssh.Client, n int) error {
	var open []*ssh.Session
	defer func() {
		for _, sess := range open {
			sess.Close()
		}
	}()
	for i := range n {
		sess, err := client.NewSession()
		if err != nil {
			return fmt.Errorf("session %d of %d: %w", i+1, n, err)
		}
		open = append(open, sess)
		if err := sess.RequestSubsystem("sftp"); err != nil {
			return fmt.Errorf("session %d of %d: sftp: %w", i+1, n, err)
		}
	}
	return nil
}
