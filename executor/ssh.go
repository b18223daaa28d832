package executor

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/orchestra-fleet/orchestra/events"
)

// DefaultConnectTimeout bounds connecting to a server and the SSH
// handshake.
const DefaultConnectTimeout = 10 * time.Second

// SSHConfig configures the ssh method.
type SSHConfig struct {
	// Host names the executor's host in ScriptStarted.
	Host string
	// KeyFiles are private keys (OpenSSH or PEM, without a passphrase);
	// files that do not exist are skipped.
	KeyFiles []string
	// AgentSocket is an ssh-agent's socket (SSH_AUTH_SOCK); its keys are
	// offered after the key files.
	AgentSocket string
	// KnownHosts are known_hosts files; files that do not exist are
	// skipped. A server's pinned host_key is checked instead when it has
	// one.
	KnownHosts []string
	// ConnectTimeout bounds the TCP connection and the handshake.
	ConnectTimeout time.Duration
	// Trust records the key of a server that trusts on first use, seen on
	// the first connection (services.Service.TrustHostKey).
	Trust func(ctx context.Context, server, key string) error
}

// SSH runs scripts over one persistent connection per server, opening a
// new session for each script. The script goes to the standard input of
// the backend's executable; no terminal is requested, so no login shell
// or profile is involved.
type SSH struct {
	cfg     SSHConfig
	signers []ssh.Signer
	probe   ssh.PublicKey       // a key no host has, to ask known_hosts which key types it lists
	known   ssh.HostKeyCallback // nil when there are no known_hosts files
	user    string
	dials   atomic.Int64
	mu      sync.Mutex
	clients map[string]*sshClient
}

// sshClient is a connection and the settings it was made with.
type sshClient struct {
	mu     sync.Mutex // one dial at a time per server
	client *ssh.Client
	dialed string // the server settings the connection was made for
}

// NewSSH loads the keys and known hosts.
func NewSSH(cfg SSHConfig) (*SSH, error) {
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	s := &SSH{cfg: cfg, clients: map[string]*sshClient{}}
	var signers []ssh.Signer
	for _, f := range cfg.KeyFiles {
		pem, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("ssh key %s: %w", f, err)
		}
		signer, err := ssh.ParsePrivateKey(pem)
		if err != nil {
			return nil, fmt.Errorf("ssh key %s: %w", f, err)
		}
		signers = append(signers, signer)
	}
	s.signers = signers
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	if s.probe, err = ssh.NewPublicKey(pub); err != nil {
		return nil, err
	}
	var files []string
	for _, f := range cfg.KnownHosts {
		if _, err := os.Stat(f); err == nil {
			files = append(files, f)
		}
	}
	if len(files) > 0 {
		known, err := knownhosts.New(files...)
		if err != nil {
			return nil, fmt.Errorf("known hosts: %w", err)
		}
		s.known = known
	}
	if u, err := user.Current(); err == nil {
		s.user = u.Username
	}
	return s, nil
}

// Name implements Method.
func (s *SSH) Name() string { return "ssh from " + s.cfg.Host }

// Dials counts the connections made so far.
func (s *SSH) Dials() int64 { return s.dials.Load() }

// Close closes every connection.
func (s *SSH) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, c := range s.clients {
		c.mu.Lock()
		if c.client != nil {
			c.client.Close()
		}
		c.mu.Unlock()
		delete(s.clients, name)
	}
}

// Run implements Method.
func (s *SSH) Run(ctx context.Context, j Job) Outcome {
	c, sess, out, ok := s.session(ctx, j.Server)
	if !ok {
		return out
	}
	defer sess.Close()
	sess.Stdin = strings.NewReader(j.Script.Script)
	report := &pidLine{out: j.Stderr, marker: pidPrefix + j.Run + " ", started: j.Started}
	sess.Stdout, sess.Stderr = j.Stdout, report
	err := s.bounded(ctx, c, func() error { return sess.Start(remoteCommand(j.Run, j.Script.Executable)) })
	if err != nil {
		s.drop(j.Server.Name)
		return Outcome{State: events.StateError, ExitCode: -1, Reason: "start " + j.Script.Executable + ": " + err.Error()}
	}
	done := make(chan error, 1)
	go func() { done <- sess.Wait() }()
	timer := time.NewTimer(j.Timeout)
	defer timer.Stop()
	select {
	case err := <-done:
		report.flush()
		return s.waited(j.Server, err)
	case <-timer.C:
		out = ranPast(j.Timeout)
	case <-ctx.Done():
		out = Outcome{State: events.StateError, ExitCode: -1, Reason: "the executor stopped"}
	}
	sess.Close()
	pid := report.get()
	if pid == 0 {
		out.Reason = join(out.Reason, "the server did not report the script's process, so it may still run")
	} else if err := s.Kill(context.WithoutCancel(ctx), j.Server, pid, j.Run); err != nil {
		out.Reason = join(out.Reason, "it may still run: "+err.Error())
	}
	return out
}

// bounded runs op, a request to the server that waits for its answer,
// within the connect timeout and ctx; past them it closes the connection
// (which ends op) and drops it.
func (s *SSH) bounded(ctx context.Context, c *ssh.Client, op func() error) error {
	done := make(chan error, 1)
	go func() { done <- op() }()
	t := time.NewTimer(s.cfg.ConnectTimeout)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
	case <-ctx.Done():
	}
	c.Close()
	<-done
	return fmt.Errorf("the server did not answer within %s; connection closed", s.cfg.ConnectTimeout)
}

// waited turns what Wait returned into an outcome.
func (s *SSH) waited(server events.Server, err error) Outcome {
	var exit *ssh.ExitError
	var missing *ssh.ExitMissingError
	switch {
	case err == nil:
		return exited(0)
	case errors.As(err, &exit):
		if exit.Signal() != "" {
			return Outcome{State: events.StateFailure, ExitCode: -1, Reason: "killed by signal " + exit.Signal()}
		}
		return exited(exit.ExitStatus())
	case errors.As(err, &missing):
		s.drop(server.Name)
		return Outcome{State: events.StateError, ExitCode: -1, Reason: "the connection ended before the script's exit status arrived"}
	}
	s.drop(server.Name)
	return Outcome{State: events.StateError, ExitCode: -1, Reason: err.Error()}
}

// session opens a session on the server's connection, connecting first
// when there is none, or when the connection turns out to be broken.
func (s *SSH) session(ctx context.Context, srv events.Server) (*ssh.Client, *ssh.Session, Outcome, bool) {
	for try := 0; ; try++ {
		c, out, ok := s.client(ctx, srv)
		if !ok {
			return nil, nil, out, false
		}
		var sess *ssh.Session
		err := s.bounded(ctx, c, func() (err error) {
			sess, err = c.NewSession()
			return err
		})
		if err == nil {
			return c, sess, Outcome{}, true
		}
		s.drop(srv.Name)
		if try == 1 {
			return nil, nil, Outcome{State: events.StateError, ExitCode: -1, Reason: "open a session: " + err.Error()}, false
		}
	}
}

// drop closes a server's connection; the next script connects again.
func (s *SSH) drop(server string) {
	s.mu.Lock()
	c := s.clients[server]
	s.mu.Unlock()
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.client != nil {
		c.client.Close()
		c.client = nil
	}
}

// settings is what a connection depends on: a change reconnects.
func (s *SSH) settings(srv events.Server) string {
	return fmt.Sprintf("%s|%d|%s|%s|%v", srv.Address, srv.Port, s.login(srv), srv.HostKey, srv.TrustOnFirstUse)
}

func (s *SSH) login(srv events.Server) string {
	if srv.User != "" {
		return srv.User
	}
	return s.user
}

// client returns the server's connection, connecting when needed.
func (s *SSH) client(ctx context.Context, srv events.Server) (*ssh.Client, Outcome, bool) {
	s.mu.Lock()
	c := s.clients[srv.Name]
	if c == nil {
		c = &sshClient{}
		s.clients[srv.Name] = c
	}
	s.mu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	settings := s.settings(srv)
	if c.client != nil && c.dialed == settings {
		return c.client, Outcome{}, true
	}
	if c.client != nil {
		c.client.Close()
		c.client = nil
	}
	client, out, ok := s.dial(ctx, srv)
	if ok {
		c.client, c.dialed = client, settings
		go s.keepalive(client)
	}
	return client, out, ok
}

// keepaliveInterval is how often an idle connection is checked.
const keepaliveInterval = 15 * time.Second

// keepalive asks the server for an answer every keepaliveInterval and
// closes the connection when none comes within the connect timeout, so a
// connection a firewall dropped silently is noticed before a script needs
// it. It returns when the connection is closed.
func (s *SSH) keepalive(c *ssh.Client) {
	closed := make(chan struct{})
	go func() {
		_ = c.Wait()
		close(closed)
	}()
	t := time.NewTicker(keepaliveInterval)
	defer t.Stop()
	for {
		select {
		case <-closed:
			return
		case <-t.C:
			err := s.bounded(context.Background(), c, func() error {
				_, _, err := c.SendRequest("keepalive@openssh.com", true, nil)
				return err
			})
			if err != nil {
				c.Close()
				return
			}
		}
	}
}

// dial connects and authenticates, classifying what went wrong: a server
// that cannot be reached is a TIMEOUT, a refused key or host key an ERROR.
func (s *SSH) dial(ctx context.Context, srv events.Server) (*ssh.Client, Outcome, bool) {
	addr := net.JoinHostPort(srv.Address, strconv.Itoa(srv.Port))
	fail := func(state, reason string) (*ssh.Client, Outcome, bool) {
		return nil, Outcome{State: state, ExitCode: -1, Reason: reason}, false
	}
	var auth []ssh.AuthMethod
	if len(s.signers) > 0 {
		auth = append(auth, ssh.PublicKeys(s.signers...))
	}
	if s.cfg.AgentSocket != "" {
		// The agent signs during the handshake, over this connection.
		if ac, err := net.Dial("unix", s.cfg.AgentSocket); err == nil {
			defer ac.Close()
			auth = append(auth, ssh.PublicKeysCallback(agent.NewClient(ac).Signers))
		}
	}
	if len(auth) == 0 {
		return fail(events.StateError, "authentication: the executor has no ssh key (--ssh-key) and no ssh-agent it can reach")
	}
	var hostKeyErr error
	var trusted string
	cfg := &ssh.ClientConfig{
		User: s.login(srv),
		Auth: auth,
		HostKeyCallback: func(hostname string, remote net.Addr, key ssh.PublicKey) error {
			hostKeyErr = s.checkHostKey(srv, hostname, remote, key, &trusted)
			return hostKeyErr
		},
		Timeout: s.cfg.ConnectTimeout,
	}
	dctx, cancel := context.WithTimeout(ctx, s.cfg.ConnectTimeout)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(dctx, "tcp", addr)
	if err != nil {
		return fail(events.StateTimeout, "connect: "+err.Error())
	}
	s.dials.Add(1)
	_ = conn.SetDeadline(time.Now().Add(s.cfg.ConnectTimeout))
	cfg.HostKeyAlgorithms = s.hostKeyAlgorithms(srv, addr, conn.RemoteAddr())
	cc, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
	if err != nil {
		conn.Close()
		switch {
		case hostKeyErr != nil:
			return fail(events.StateError, "host key: "+hostKeyErr.Error())
		case strings.Contains(err.Error(), "unable to authenticate"):
			return fail(events.StateError, fmt.Sprintf("authentication as %s: %v", cfg.User, err))
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return fail(events.StateTimeout, "connect: the ssh handshake took longer than "+s.cfg.ConnectTimeout.String())
		}
		return fail(events.StateTimeout, "connect: "+err.Error())
	}
	_ = conn.SetDeadline(time.Time{})
	if trusted != "" && s.cfg.Trust != nil {
		if err := s.cfg.Trust(ctx, srv.Name, trusted); err != nil {
			cc.Close()
			return fail(events.StateError, "host key: trusted on first use, but recording it failed: "+err.Error())
		}
	}
	return ssh.NewClient(cc, chans, reqs), Outcome{}, true
}

// hostKeyAlgorithms asks the server for a key of the type that is pinned,
// or of the types known_hosts lists for it, rather than x/crypto's first
// preference (which a server with several host keys may hold in another
// type than the one on record). nil, the default, when nothing is on
// record.
func (s *SSH) hostKeyAlgorithms(srv events.Server, addr string, remote net.Addr) []string {
	var types []string
	if srv.HostKey != "" {
		if pinned, _, _, _, err := ssh.ParseAuthorizedKey([]byte(srv.HostKey)); err == nil {
			types = append(types, pinned.Type())
		}
	} else if s.known != nil {
		var ke *knownhosts.KeyError
		if err := s.known(addr, remote, s.probe); errors.As(err, &ke) {
			for _, k := range ke.Want {
				types = append(types, k.Key.Type())
			}
		}
	}
	var algos []string
	for _, t := range types {
		if t == ssh.KeyAlgoRSA {
			// An RSA key signs with SHA-2 on current servers.
			algos = append(algos, ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256)
		}
		if !slices.Contains(algos, t) {
			algos = append(algos, t)
		}
	}
	return algos
}

// checkHostKey accepts the server's pinned key, or else a key the known
// hosts list; an unknown key only when the server trusts on first use
// (trusted is set to it), a changed key never.
func (s *SSH) checkHostKey(srv events.Server, hostname string, remote net.Addr, key ssh.PublicKey, trusted *string) error {
	shown := key.Type() + " " + ssh.FingerprintSHA256(key)
	if srv.HostKey != "" {
		pinned, _, _, _, err := ssh.ParseAuthorizedKey([]byte(srv.HostKey))
		if err != nil {
			return fmt.Errorf("the pinned host_key does not parse: %v", err)
		}
		if string(pinned.Marshal()) != string(key.Marshal()) {
			return fmt.Errorf("the server presented %s, but %s is pinned", shown, pinned.Type()+" "+ssh.FingerprintSHA256(pinned))
		}
		return nil
	}
	if s.known != nil {
		err := s.known(hostname, remote, key)
		if err == nil {
			return nil
		}
		var ke *knownhosts.KeyError
		if !errors.As(err, &ke) {
			return err
		}
		if len(ke.Want) > 0 {
			return fmt.Errorf("the server presented %s, which differs from the key known_hosts lists for %s (line %d of %s): refused",
				shown, hostname, ke.Want[0].Line, ke.Want[0].Filename)
		}
	}
	if srv.TrustOnFirstUse {
		*trusted = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key)))
		return nil
	}
	return fmt.Errorf("unknown host key %s for %s: pin it as the server's host_key, add it to known_hosts, or set trust_on_first_use", shown, hostname)
}

// pidPrefix starts the line a script's session writes first on its
// standard error: "orchestra-pid <run> <pid>", the process id of the
// session, which sshd makes the leader of a process group of its own.
const pidPrefix = "orchestra-pid "

// remoteCommand is the command of a script's session, for the remote
// user's (POSIX) shell: it reports its process id and becomes the
// executable (through env, which marks the run in the environment), which
// reads the script on its standard input. run is a script id and an
// attempt: hex digits, '-' and '.'.
func remoteCommand(run, executable string) string {
	return `echo "` + pidPrefix + run + ` $$" >&2; exec env ` + RunEnv + "=" + run + " '" + strings.ReplaceAll(executable, "'", `'\''`) + "'"
}

// Kill implements Method, through a session of its own (sshd refuses
// signal requests for root's sessions, and delivers the others to the
// first process only). Linux servers only: the run is checked in
// /proc/<pid>/environ.
func (s *SSH) Kill(ctx context.Context, srv events.Server, pid int, run string) error {
	if pid <= 1 {
		return nil
	}
	c, out, ok := s.client(ctx, srv)
	if !ok {
		return errors.New(out.Reason)
	}
	var sess *ssh.Session
	if err := s.bounded(ctx, c, func() (err error) {
		sess, err = c.NewSession()
		return err
	}); err != nil {
		s.drop(srv.Name)
		return fmt.Errorf("kill process group %d: %w", pid, err)
	}
	defer sess.Close()
	cmd := fmt.Sprintf("if grep -qF '%s=%s' /proc/%d/environ 2>/dev/null; then kill -KILL -- -%d; fi", RunEnv, run, pid, pid)
	if err := s.bounded(ctx, c, func() error { return sess.Run(cmd) }); err != nil {
		return fmt.Errorf("kill process group %d: %w", pid, err)
	}
	return nil
}

// pidReportMax bounds how far into a session's standard error the pid
// report is looked for (the user's shell may print before it).
const pidReportMax = 4096

// pidLine takes the pid report out of a session's standard error,
// reports the pid through started, and passes everything else on.
type pidLine struct {
	out     io.Writer
	marker  string // the report's start: pidPrefix, the run, a space
	started func(pid int)
	mu      sync.Mutex
	head    []byte // what came before the report, while it is looked for
	done    bool
	pid     int
}

func (p *pidLine) Write(b []byte) (int, error) {
	p.mu.Lock()
	if p.done {
		p.mu.Unlock()
		return p.out.Write(b)
	}
	p.head = append(p.head, b...)
	var rest []byte
	pid := 0
	for start := 0; ; {
		i := bytes.IndexByte(p.head[start:], '\n')
		if i < 0 || start+i >= pidReportMax {
			break
		}
		line := p.head[start : start+i]
		if v, ok := strings.CutPrefix(string(line), p.marker); ok {
			if n, err := strconv.Atoi(v); err == nil && n > 0 {
				pid = n
				rest = append(append([]byte{}, p.head[:start]...), p.head[start+i+1:]...)
				break
			}
		}
		start += i + 1
	}
	if pid == 0 && len(p.head) < pidReportMax {
		p.mu.Unlock()
		return len(b), nil
	}
	if pid == 0 {
		rest = p.head // no report: it is all output
	}
	p.done, p.head, p.pid = true, nil, pid
	p.mu.Unlock()
	if pid > 0 && p.started != nil {
		p.started(pid)
	}
	if len(rest) > 0 {
		if _, err := p.out.Write(rest); err != nil {
			return 0, err
		}
	}
	return len(b), nil
}

// flush passes on what was held while the report was looked for.
func (p *pidLine) flush() {
	p.mu.Lock()
	head := p.head
	p.done, p.head = true, nil
	p.mu.Unlock()
	if len(head) > 0 {
		_, _ = p.out.Write(head)
	}
}

func (p *pidLine) get() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pid
}
