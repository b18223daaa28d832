// Package sshdtest starts a real OpenSSH server (sshd) on loopback for
// tests, with a host key, a client key and a configuration of its own in the
// test's temporary directory. It works whether the test runs as root or as
// a normal user: sshd then lets in only that user, with the client key.
package sshdtest

import (
	"bufio"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// DefaultSSHD is the sshd that Start runs unless $SSHD names another.
const DefaultSSHD = "/usr/sbin/sshd"

// startTimeout bounds how long Start waits for sshd to listen and answer.
const startTimeout = 10 * time.Second

// privsepDir is where Debian's sshd, run as root, chroots its unprivileged
// pre-authentication child; sshd refuses to start without it.
const privsepDir = "/run/sshd"

// acceptedMarker starts the line sshd logs (LogLevel INFO and up) for each
// connection it authenticated.
const acceptedMarker = "Accepted publickey for "

// errPortTaken reports that sshd could not bind one of the chosen ports:
// something else took it between the choice and sshd's start.
var errPortTaken = errors.New("a port was taken before sshd bound it")

// maxPortsPerSSHD is how many ports one sshd listens on at most: OpenSSH
// refuses a 17th ListenAddress ("Too many listen sockets. Enlarge
// MAX_LISTEN_SOCKS"), a limit compiled into it.
const maxPortsPerSSHD = 16

// Server is a running sshd on 127.0.0.1 with its own host key and config,
// killed (by its own PID, with the processes it started) at test cleanup.
// Past 16 ports it is several sshd processes sharing the keys and the
// authorized_keys file (see StartN).
type Server struct {
	// Addrs are "127.0.0.1:PORT", one per listening port (see StartN).
	Addrs []string
	// User is the current user's name, the one tests log in as.
	User string
	// HostKey is the server's public host key.
	HostKey ssh.PublicKey
	// HostKeyLine is the host key in authorized_keys form, without a
	// comment ("ssh-ed25519 AAAA..."), for pinning.
	HostKeyLine string
	// ClientKeyFile is the path of an OpenSSH private key without a
	// passphrase that the server accepts for User; its public half is
	// beside it, with ".pub" appended.
	ClientKeyFile string
	// ClientSigner is the key in ClientKeyFile, ready for ssh.PublicKeys.
	ClientSigner ssh.Signer
	// KnownHostsFile lists every address of Addrs ("[127.0.0.1]:PORT")
	// with HostKey.
	KnownHostsFile string
	// Dir holds the keys, authorized_keys, known_hosts, and for each sshd
	// process its sshd_config, log (sshd.log) and standard error
	// (sshd.stderr); the second process's files end in ".2", and so on.
	Dir string

	t              testing.TB
	sshd           string
	hostKeyFile    string
	ecdsaKeyFile   string // a second host key, "" for none (StartWithECDSA)
	authorizedKeys string

	mu    sync.Mutex
	procs []*proc
}

// proc is one sshd process of a Server and the ports it listens on.
type proc struct {
	addrs   []string
	config  string
	logFile string
	errFile string

	cmd     *exec.Cmd
	done    chan struct{} // closed once cmd.Wait has returned
	waitErr error         // what cmd.Wait returned, set before done closes
}

// Start runs sshd on one free loopback port. It skips the test when sshd is
// not installed, and fails it instead when CI=true.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartN(t, 1)
}

// StartWithECDSA runs sshd on one port with an ECDSA P-256 host key
// besides the ed25519 one (HostKey), listed first: a client that does not
// ask for ed25519 is shown the ECDSA key.
func StartWithECDSA(t testing.TB) *Server {
	t.Helper()
	return start(t, 1, true)
}

// StartN runs sshd listening on n free loopback ports (one ListenAddress
// each), so that a test can stand in for n servers with one process. sshd
// listens on 16 ports at most, so past 16 StartN runs one sshd per 16 ports,
// all with the same keys; the Server acts as one. Every port answers when
// StartN returns; sshd is stopped at test cleanup.
func StartN(t testing.TB, n int) *Server {
	t.Helper()
	return start(t, n, false)
}

func start(t testing.TB, n int, ecdsaKey bool) *Server {
	t.Helper()
	if n < 1 {
		t.Fatalf("sshdtest: StartN needs at least one port, got %d", n)
	}
	sshd := findSSHD(t)
	name, err := currentUser()
	if err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
	if os.Geteuid() == 0 {
		if err := os.MkdirAll(privsepDir, 0o755); err != nil {
			t.Fatalf("sshdtest: create sshd's privilege separation directory: %v", err)
		}
	}
	dir := t.TempDir()
	s := &Server{
		User:           name,
		Dir:            dir,
		ClientKeyFile:  filepath.Join(dir, "id_ed25519"),
		KnownHostsFile: filepath.Join(dir, "known_hosts"),
		t:              t,
		sshd:           sshd,
		hostKeyFile:    filepath.Join(dir, "ssh_host_ed25519_key"),
		authorizedKeys: filepath.Join(dir, "authorized_keys"),
	}
	if ecdsaKey {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatalf("sshdtest: ecdsa host key: %v", err)
		}
		s.ecdsaKeyFile = filepath.Join(dir, "ssh_host_ecdsa_key")
		if _, err := writeKey(s.ecdsaKeyFile, key); err != nil {
			t.Fatalf("sshdtest: ecdsa host key: %v", err)
		}
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatalf("sshdtest: host key: %v", err)
	}
	hostSigner, err := writeKey(s.hostKeyFile, priv)
	if err != nil {
		t.Fatalf("sshdtest: host key: %v", err)
	}
	s.HostKey = hostSigner.PublicKey()
	s.HostKeyLine = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.HostKey)))
	_, clientKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatalf("sshdtest: client key: %v", err)
	}
	if s.ClientSigner, err = writeKey(s.ClientKeyFile, clientKey); err != nil {
		t.Fatalf("sshdtest: client key: %v", err)
	}
	if err := os.WriteFile(s.authorizedKeys, ssh.MarshalAuthorizedKey(s.ClientSigner.PublicKey()), 0o600); err != nil {
		t.Fatalf("sshdtest: write authorized_keys: %v", err)
	}
	t.Cleanup(s.Stop)

	// The ports are free when chosen but not reserved: another process may
	// bind one before sshd does. sshd says so in its log, and new ports
	// are tried.
	const attempts = 3
	for attempt := 1; ; attempt++ {
		ports, err := freePorts(n)
		if err != nil {
			t.Fatalf("sshdtest: %v", err)
		}
		s.Addrs = make([]string, n)
		for i, port := range ports {
			s.Addrs[i] = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		}
		if err := s.writeFiles(); err != nil {
			t.Fatalf("sshdtest: %v", err)
		}
		err = s.start()
		if err == nil {
			return s
		}
		if !errors.Is(err, errPortTaken) || attempt == attempts {
			t.Fatalf("sshdtest: %v\n%s", err, s.logs())
		}
	}
}

// findSSHD returns the absolute path of sshd (sshd re-executes itself and
// refuses a relative path), skipping or failing the test when there is none.
func findSSHD(t testing.TB) string {
	t.Helper()
	name := os.Getenv("SSHD")
	if name == "" {
		name = DefaultSSHD
	}
	path, err := exec.LookPath(name)
	if err == nil {
		path, err = filepath.Abs(path)
	}
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("sshd not installed; .ci/run installs openssh-server")
		}
		t.Skipf("sshd not installed (%v); install openssh-server or set $SSHD", err)
	}
	return path
}

// currentUser names the user this process runs as.
func currentUser() (string, error) {
	u, err := user.Current()
	if err == nil && u.Username != "" {
		return u.Username, nil
	}
	if name := os.Getenv("USER"); name != "" {
		return name, nil
	}
	return "", fmt.Errorf("look up the current user: %w", err)
}

// writeKey writes the private key priv to path in OpenSSH form
// (mode 0600, as sshd and ssh require) with its public half in path.pub.
func writeKey(path string, priv crypto.Signer) (ssh.Signer, error) {
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		return nil, fmt.Errorf("marshal: %w", err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return nil, fmt.Errorf("write: %w", err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, fmt.Errorf("signer: %w", err)
	}
	if err := os.WriteFile(path+".pub", ssh.MarshalAuthorizedKey(signer.PublicKey()), 0o644); err != nil {
		return nil, fmt.Errorf("write public key: %w", err)
	}
	return signer, nil
}

// freePorts returns n distinct loopback ports that were free a moment ago.
// All n listeners are held open together so that no port comes up twice.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// writeFiles splits s.Addrs among sshd processes and writes each one's
// sshd_config, and known_hosts for all the addresses.
func (s *Server) writeFiles() error {
	s.procs = nil
	for i := 0; i < len(s.Addrs); i += maxPortsPerSSHD {
		suffix := ""
		if i > 0 {
			suffix = "." + strconv.Itoa(len(s.procs)+1)
		}
		p := &proc{
			addrs:   s.Addrs[i:min(i+maxPortsPerSSHD, len(s.Addrs))],
			config:  filepath.Join(s.Dir, "sshd_config"+suffix),
			logFile: filepath.Join(s.Dir, "sshd.log"+suffix),
			errFile: filepath.Join(s.Dir, "sshd.stderr"+suffix),
		}
		var cfg strings.Builder
		cfg.WriteString("# Written by sshdtest for one test.\n")
		for _, addr := range p.addrs {
			fmt.Fprintf(&cfg, "ListenAddress %s\n", addr)
		}
		if s.ecdsaKeyFile != "" {
			fmt.Fprintf(&cfg, "HostKey %q\n", s.ecdsaKeyFile)
		}
		fmt.Fprintf(&cfg, "HostKey %q\n", s.hostKeyFile)
		fmt.Fprintf(&cfg, "AuthorizedKeysFile %q\n", s.authorizedKeys)
		// SHLVL=1 keeps bash, as the login shell of a session, from
		// sourcing the user's ~/.bashrc (it does when it sees it was run
		// by sshd at shell level 1): what the tests and benchmarks measure
		// is not whatever the machine's rc files do.
		cfg.WriteString(`SetEnv SHLVL=1
AddressFamily inet
PidFile none
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
MaxStartups 200
MaxSessions 100
LogLevel VERBOSE
UseDNS no
PrintMotd no
PrintLastLog no
Subsystem sftp internal-sftp
`)
		if err := os.WriteFile(p.config, []byte(cfg.String()), 0o600); err != nil {
			return fmt.Errorf("write %s: %w", p.config, err)
		}
		s.procs = append(s.procs, p)
	}
	var known strings.Builder
	for _, addr := range s.Addrs {
		known.WriteString(knownhosts.Line([]string{addr}, s.HostKey) + "\n")
	}
	if err := os.WriteFile(s.KnownHostsFile, []byte(known.String()), 0o600); err != nil {
		return fmt.Errorf("write known_hosts: %w", err)
	}
	return nil
}

// start runs every sshd process and waits until each answers on all its
// addresses; on failure they are all stopped again.
func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	deadline := time.Now().Add(startTimeout)
	var err error
	offsets := make([]int64, len(s.procs))
	for i, p := range s.procs {
		if offsets[i], err = p.start(s.sshd); err != nil {
			break
		}
	}
	for i, p := range s.procs {
		if err != nil {
			break
		}
		err = p.waitReady(offsets[i], deadline)
	}
	if err != nil {
		s.stopLocked()
	}
	return err
}

// start runs sshd in the foreground, a child of the test, and returns how
// long its log was before, for waitReady.
func (p *proc) start(sshd string) (logOffset int64, err error) {
	if p.cmd != nil {
		return 0, errors.New("sshd is already running")
	}
	// The log is appended to across restarts (Accepted counts them all);
	// readiness is read from what this start adds.
	if fi, err := os.Stat(p.logFile); err == nil {
		logOffset = fi.Size()
	}
	stderr, err := os.OpenFile(p.errFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return 0, fmt.Errorf("open sshd's stderr file: %w", err)
	}
	defer stderr.Close()
	// -D: stay in the foreground; -e with -E: log to the file instead of
	// syslog. A file (not a pipe) as stdout and stderr keeps Wait from
	// waiting on sshd's per-connection children.
	cmd := exec.Command(sshd, "-D", "-e", "-f", p.config, "-E", p.logFile)
	cmd.Stdout, cmd.Stderr = stderr, stderr
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s: %w", sshd, err)
	}
	done := make(chan struct{})
	p.cmd, p.done, p.waitErr = cmd, done, nil
	go func() {
		p.waitErr = cmd.Wait()
		close(done)
	}()
	return logOffset, nil
}

// waitReady waits, until deadline, for sshd's log to say it listens on
// every port of p and for each port to answer with an SSH banner.
func (p *proc) waitReady(offset int64, deadline time.Time) error {
	pending := make(map[string]bool, len(p.addrs))
	for _, addr := range p.addrs {
		pending[addr] = true
	}
	for {
		log, err := readFrom(p.logFile, offset)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("read sshd's log: %w", err)
		}
		for addr := range pending {
			host, port, _ := net.SplitHostPort(addr)
			if strings.Contains(log, fmt.Sprintf("Bind to port %s on %s failed", port, host)) {
				return fmt.Errorf("sshd on %s: %w", addr, errPortTaken)
			}
			if strings.Contains(log, fmt.Sprintf("Server listening on %s port %s.", host, port)) {
				delete(pending, addr)
			}
		}
		if len(pending) == 0 {
			break
		}
		select {
		case <-p.done:
			return fmt.Errorf("sshd (%s) exited before listening on every port: %v", p.config, p.waitErr)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sshd (%s) did not listen on %d of its %d ports within %v", p.config, len(pending), len(p.addrs), startTimeout)
		}
	}
	for _, addr := range p.addrs {
		if err := readBanner(addr, deadline); err != nil {
			return err
		}
	}
	return nil
}

// readBanner connects to addr and reads the server's SSH version line.
func readBanner(addr string, deadline time.Time) error {
	conn, err := net.DialTimeout("tcp", addr, time.Until(deadline))
	if err != nil {
		return fmt.Errorf("connect to sshd on %s: %w", addr, err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(deadline); err != nil {
		return fmt.Errorf("sshd on %s: %w", addr, err)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read the SSH banner of %s: %w", addr, err)
	}
	if !strings.HasPrefix(line, "SSH-2.0-") {
		return fmt.Errorf("%s answered %q, not an SSH banner", addr, line)
	}
	return nil
}

// readFrom returns the file's content from offset on.
func readFrom(path string, offset int64) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	if offset > int64(len(b)) {
		offset = int64(len(b))
	}
	return string(b[offset:]), nil
}

// logs returns each sshd's log and what it wrote to stderr, for a failure
// message.
func (s *Server) logs() string {
	var b strings.Builder
	for _, p := range s.procs {
		for _, path := range []string{p.logFile, p.errFile} {
			content, err := os.ReadFile(path)
			switch {
			case err != nil:
				fmt.Fprintf(&b, "--- %v\n", err)
			case len(content) > 0:
				fmt.Fprintf(&b, "--- %s:\n%s", path, content)
			}
		}
	}
	return b.String()
}

// Accepted returns how many connections sshd has authenticated since the
// server was first started (restarts included), counted from the
// "Accepted publickey" lines of its log (of all its processes). sshd logs
// the line just before the client learns it is in, so a count taken right
// after ssh.Dial may miss that connection; once a session has run on a
// connection, it is counted. WaitAccepted waits for a count.
func (s *Server) Accepted() int {
	return strings.Count(s.Log(), acceptedMarker)
}

// WaitAccepted waits, up to 10 seconds, until Accepted reaches want, fails
// the test if it does not, and returns the count.
func (s *Server) WaitAccepted(t testing.TB, want int) int {
	t.Helper()
	deadline := time.Now().Add(startTimeout)
	for {
		got := s.Accepted()
		if got >= want {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("sshdtest: sshd authenticated %d connections, want %d\n%s", got, want, s.logs())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Log returns sshd's log so far (LogLevel VERBOSE), its processes' one
// after the other.
func (s *Server) Log() string {
	var b strings.Builder
	for _, p := range s.procs {
		content, err := os.ReadFile(p.logFile)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			s.t.Errorf("sshdtest: read sshd's log: %v", err)
		}
		b.Write(content)
	}
	return b.String()
}

// ClientConfig returns a client configuration that logs in as User with
// ClientSigner and accepts only HostKey.
func (s *Server) ClientConfig() *ssh.ClientConfig {
	return &ssh.ClientConfig{
		User:            s.User,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(s.ClientSigner)},
		HostKeyCallback: ssh.FixedHostKey(s.HostKey),
		Timeout:         startTimeout,
	}
}

// Stop kills sshd by its PID, with the per-connection processes and sessions
// it started, so that open connections drop as they would when a real
// server goes away, and waits for it to exit. Calling it again, or on a
// stopped server, does nothing. Start registers it with t.Cleanup.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked()
}

// stopLocked is Stop with s.mu held.
func (s *Server) stopLocked() {
	for _, p := range s.procs {
		p.stop()
	}
}

// stop kills p's sshd and what it started, and waits for sshd to exit.
func (p *proc) stop() {
	if p.cmd == nil {
		return
	}
	killTree(p.cmd.Process.Pid)
	_ = p.cmd.Process.Kill() // in case the walk could not read /proc
	<-p.done
	p.cmd = nil
}

// Restart starts sshd again on the same ports with the same keys and
// configuration, stopping it first if it still runs, and waits until it
// answers on every port.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	if err := s.start(); err != nil {
		t.Fatalf("sshdtest: restart: %v\n%s", err, s.logs())
	}
}
