package executor

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/orchestra-fleet/orchestra/events"
)

// Sink receives what supervised processes do: their lifecycle and their
// output, a line at a time.
type Sink interface {
	Started(events.InstanceStarted)
	Exited(events.InstanceExited)
	Line(site, service, server string, index int, stream string, line []byte)
}

// DefaultGrace is how long a supervised process has between SIGTERM and
// SIGKILL unless its service says.
const DefaultGrace = 10 * time.Second

// settle is how long a start waits to see that the process stays up.
const settle = 300 * time.Millisecond

// maxBackoff bounds the wait before a restart; a process that ran this
// long before exiting counts as healthy again (its restarts in a row
// start over).
const maxBackoff = 30 * time.Second

// Supervisor runs the long-lived run commands of services on the
// executor's own host: each instance in its own process group, its output
// to a log file and the Sink, restarted by its policy, and stopped with
// SIGTERM then SIGKILL to the whole group.
type Supervisor struct {
	// LogDir holds <service>.<index>.log per instance; "" writes none.
	LogDir string
	// GroupFile, when set, keeps the process groups running now, so that
	// a supervisor started after a crash stops what they left (Reap).
	GroupFile string
	Sink      Sink

	mu    sync.Mutex
	procs map[string]*proc // by server/site/service/index

	groupsMu sync.Mutex
	groups   map[int]uint64 // process group → its leader's start time (clock ticks after boot)
}

// proc is one supervised instance.
type proc struct {
	server   string
	spec     events.Supervise
	mu       sync.Mutex
	pid      int
	restarts int // restarts in all, for ps
	stopping bool
	stop     chan struct{} // closed to stop
	done     chan struct{} // closed when supervision ends
	// firstExit is closed when the first run of the command ends.
	firstExit  chan struct{}
	exitedOnce sync.Once
}

func key(server string, sup events.Supervise, index int) string {
	return server + "/" + sup.Site + "/" + sup.Service + "/" + strconv.Itoa(index)
}

// Do carries out a supervise step on server, a local server, reporting
// what it did on out.
func (s *Supervisor) Do(server string, sup events.Supervise, out io.Writer) Outcome {
	switch sup.Action {
	case events.SuperviseStart:
		return s.start(server, sup, out)
	case events.SuperviseStop:
		if !s.stopOne(key(server, sup, sup.Index), sup.Grace, out) {
			// Not ours (any more): the state may still say it runs.
			s.Sink.Exited(events.InstanceExited{Site: sup.Site, Service: sup.Service, Server: server, Index: sup.Index, Stopped: true})
		}
		if sup.Index == 0 {
			s.stopBeyond(server, sup, sup.Scale, out) // and what a larger scale left
		}
		return exited(0)
	case events.SuperviseStatus:
		if pid := s.running(key(server, sup, sup.Index)); pid > 0 {
			fmt.Fprintf(out, "%s#%d is running as pid %d\n", sup.Service, sup.Index, pid)
			return exited(0)
		}
		fmt.Fprintf(out, "%s#%d is not running\n", sup.Service, sup.Index)
		return exited(3)
	}
	return Outcome{State: events.StateError, ExitCode: -1, Reason: fmt.Sprintf("unknown supervise action %q", sup.Action)}
}

// start starts one instance unless it runs already as asked, and stops
// the service's instances beyond its scale and any stray copy of its
// program.
func (s *Supervisor) start(server string, sup events.Supervise, out io.Writer) Outcome {
	s.stopBeyond(server, sup, sup.Scale, out)
	k := key(server, sup, sup.Index)
	if cur := s.get(k); cur != nil {
		if sameSpec(cur.spec, sup) && cur.alive() {
			fmt.Fprintf(out, "%s#%d runs already as pid %d\n", sup.Service, sup.Index, cur.currentPID())
			return exited(0)
		}
		s.stopOne(k, sup.Grace, out) // changed: start it again as asked
	}
	for _, pid := range s.strays(sup) {
		fmt.Fprintf(out, "stopping a copy of %s running outside Orchestra: pid %d (%s)\n", sup.Service, pid, exePath(pid))
		killProcess(pid, sup.Grace)
	}
	p := &proc{server: server, spec: sup, stop: make(chan struct{}), done: make(chan struct{}), firstExit: make(chan struct{})}
	started := make(chan error, 1)
	go s.supervise(p, started)
	if err := <-started; err != nil {
		return Outcome{State: events.StateFailure, ExitCode: -1, Reason: err.Error()}
	}
	s.mu.Lock()
	s.procs[k] = p
	s.mu.Unlock()
	pid := p.currentPID()
	select {
	case <-p.firstExit:
		// It did not stay up: say so, and let its policy go on.
		return Outcome{State: events.StateFailure, ExitCode: -1, Reason: fmt.Sprintf("%s#%d exited within %s of starting (pid %d); its log says why", sup.Service, sup.Index, settle, pid)}
	case <-time.After(settle):
	}
	fmt.Fprintf(out, "%s#%d started as pid %d\n", sup.Service, sup.Index, pid)
	return exited(0)
}

// stopBeyond stops the instances of sup's service on server at index
// from and above.
func (s *Supervisor) stopBeyond(server string, sup events.Supervise, from int, out io.Writer) {
	s.mu.Lock()
	if s.procs == nil {
		s.procs = map[string]*proc{}
	}
	var beyond []string
	for k, p := range s.procs {
		if p.server == server && p.spec.Site == sup.Site && p.spec.Service == sup.Service && p.spec.Index >= from {
			beyond = append(beyond, k)
		}
	}
	s.mu.Unlock()
	slices.Sort(beyond)
	for _, k := range beyond {
		s.stopOne(k, sup.Grace, out)
	}
}

func sameSpec(a, b events.Supervise) bool {
	return a.Command == b.Command && a.Dir == b.Dir && slices.Equal(a.Env, b.Env) && a.Restart == b.Restart && a.MaxRestarts == b.MaxRestarts
}

func (s *Supervisor) get(k string) *proc {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.procs[k]
}

// running is the pid of instance k, 0 when it is not running.
func (s *Supervisor) running(k string) int {
	if p := s.get(k); p != nil && p.alive() {
		return p.currentPID()
	}
	return 0
}

func (p *proc) currentPID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pid
}

// alive reports whether the instance is running or about to be started
// again by its policy.
func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stopOne stops instance k: no more restarts, SIGTERM to its group, and
// SIGKILL to what is left of the group after grace.
func (s *Supervisor) stopOne(k string, grace time.Duration, out io.Writer) bool {
	s.mu.Lock()
	p := s.procs[k]
	delete(s.procs, k)
	s.mu.Unlock()
	if p == nil {
		fmt.Fprintf(out, "%s is not running\n", k)
		return false
	}
	p.mu.Lock()
	p.stopping = true
	pid := p.pid
	p.mu.Unlock()
	close(p.stop)
	if pid > 0 {
		killGroup(pid, grace)
	}
	<-p.done
	fmt.Fprintf(out, "%s#%d stopped (pid %d)\n", p.spec.Service, p.spec.Index, pid)
	return true
}

// track records that process group pgid runs (or no longer does) in
// GroupFile.
func (s *Supervisor) track(pgid int, running bool) {
	if s.GroupFile == "" {
		return
	}
	s.groupsMu.Lock()
	defer s.groupsMu.Unlock()
	if s.groups == nil {
		s.groups = map[int]uint64{}
	}
	if running {
		s.groups[pgid] = startTime(pgid)
	} else {
		delete(s.groups, pgid)
	}
	b, err := json.Marshal(s.groups)
	if err == nil {
		tmp := s.GroupFile + ".tmp"
		if os.WriteFile(tmp, b, 0o600) == nil {
			_ = os.Rename(tmp, s.GroupFile)
		}
	}
}

// Reap stops what the process groups GroupFile names left running: after
// the executor was killed, its instances' leaders died with it, but not
// always the processes they started. A process counts only if it is in
// the group and started no earlier than the group's leader did, so a
// group id used again since is left alone. It returns how many processes
// it stopped.
func (s *Supervisor) Reap() int {
	if s.GroupFile == "" {
		return 0
	}
	b, err := os.ReadFile(s.GroupFile)
	if err != nil {
		return 0
	}
	var groups map[int]uint64
	if json.Unmarshal(b, &groups) != nil {
		return 0
	}
	n := 0
	for pgid, started := range groups {
		for _, pid := range members(pgid) {
			if startTime(pid) >= started && pid != os.Getpid() {
				killProcess(pid, DefaultGrace)
				n++
			}
		}
	}
	_ = os.Remove(s.GroupFile)
	return n
}

// members are the live processes of group pgid.
func members(pgid int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f := statFields(pid); len(f) >= 3 && f[0] != "Z" && f[2] == strconv.Itoa(pgid) {
			out = append(out, pid)
		}
	}
	return out
}

// statFields are the fields of /proc/pid/stat after the command's name:
// state, ppid, pgrp, … (nil when pid is gone).
func statFields(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

// startTime is when pid started, in clock ticks after boot (field 22 of
// /proc/pid/stat); 0 when it is gone.
func startTime(pid int) uint64 {
	f := statFields(pid)
	if len(f) < 20 {
		return 0
	}
	t, _ := strconv.ParseUint(f[19], 10, 64)
	return t
}

// StopAll stops every supervised process, as the executor stops.
func (s *Supervisor) StopAll() {
	s.mu.Lock()
	keys := make([]string, 0, len(s.procs))
	for k := range s.procs {
		keys = append(keys, k)
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, k := range keys {
		wg.Go(func() { s.stopOne(k, DefaultGrace, io.Discard) })
	}
	wg.Wait()
}

// killGroup sends SIGTERM to process group pid, and SIGKILL once grace
// has passed with any of it left.
func killGroup(pgid int, grace time.Duration) {
	if grace <= 0 {
		grace = DefaultGrace
	}
	if err := syscall.Kill(-pgid, syscall.SIGTERM); errors.Is(err, syscall.ESRCH) {
		return // the group is gone
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if !groupAlive(pgid) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
}

// killProcess sends SIGTERM to pid, and SIGKILL once grace has passed
// with it still there.
func killProcess(pid int, grace time.Duration) {
	if grace <= 0 {
		grace = DefaultGrace
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return
	}
	for deadline := time.Now().Add(grace); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if !running(pid) {
			return
		}
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

// supervise runs p's command and, by its policy, runs it again when it
// exits, until p is stopped. The first start's error goes to started.
func (s *Supervisor) supervise(p *proc, started chan<- error) {
	defer close(p.done)
	sup := p.spec
	restarts := 0
	for {
		ran, pid, err := s.runOnce(p, started)
		started = nil // only the first start is waited for
		if err != nil && pid == 0 && restarts == 0 {
			return
		}
		if err != nil {
			ran.code, ran.signal = -1, err.Error()
		}
		p.mu.Lock()
		stopping := p.stopping
		p.mu.Unlock()
		ev := events.InstanceExited{Site: sup.Site, Service: sup.Service, Server: p.server, Index: sup.Index, PID: pid,
			ExitCode: ran.code, Signal: ran.signal, Stopped: stopping}
		if ran.took >= maxBackoff {
			restarts = 0 // it was healthy for a while
		}
		restart := !stopping && (sup.Restart == events.RestartAlways ||
			sup.Restart != events.RestartNever && (ran.code != 0 || ran.signal != "")) &&
			(sup.MaxRestarts == 0 || restarts < sup.MaxRestarts)
		if restart {
			ev.Restarting = true
			ev.Backoff = min(time.Second<<min(restarts, 5), maxBackoff)
		}
		s.Sink.Exited(ev)
		if !restart {
			return
		}
		select {
		case <-p.stop:
			s.Sink.Exited(events.InstanceExited{Site: sup.Site, Service: sup.Service, Server: p.server, Index: sup.Index,
				PID: pid, ExitCode: ran.code, Signal: ran.signal, Stopped: true})
			return
		case <-time.After(ev.Backoff):
		}
		restarts++
		p.mu.Lock()
		p.restarts++
		p.mu.Unlock()
	}
}

// ended is how one run of a supervised command ended.
type ended struct {
	code   int
	signal string
	took   time.Duration
}

// runOnce starts the command in a process group of its own and waits for
// it. The process dies with the executor (Pdeathsig), so no copy outlives
// it unsupervised.
func (s *Supervisor) runOnce(p *proc, started chan<- error) (ended, int, error) {
	sup := p.spec
	cmd := exec.Command("/bin/sh", "-c", sup.Command)
	cmd.Dir = sup.Dir
	cmd.Env = append(os.Environ(), sup.Env...)
	stdout := s.lines(p, events.Stdout)
	stderr := s.lines(p, events.Stderr)
	defer stdout.Close()
	defer stderr.Close()
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	cmd.WaitDelay = time.Second
	type result struct {
		err  error
		took time.Duration
	}
	startErr := make(chan error, 1)
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // Pdeathsig follows the thread that started the process
		t0 := time.Now()
		if err := cmd.Start(); err != nil {
			startErr <- err
			return
		}
		startErr <- nil
		err := cmd.Wait()
		done <- result{err, time.Since(t0)}
	}()
	if err := <-startErr; err != nil {
		err = fmt.Errorf("start %s#%d: %w", sup.Service, sup.Index, err)
		if started != nil {
			started <- err
		}
		return ended{}, 0, err
	}
	pid := cmd.Process.Pid
	s.track(pid, true)
	p.mu.Lock()
	p.pid = pid
	stopping := p.stopping
	total := p.restarts
	p.mu.Unlock()
	if started != nil {
		started <- nil
	}
	if stopping { // stopped while it started: the stopper saw no pid
		killGroup(pid, sup.Grace)
	}
	s.Sink.Started(events.InstanceStarted{Site: sup.Site, Service: sup.Service, Server: p.server, Index: sup.Index,
		PID: pid, Port: sup.Port, Restarts: total})
	r := <-done
	// The leader is gone; what it started goes with it, and its pid is
	// no longer ours to signal.
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	s.track(pid, false)
	p.mu.Lock()
	p.pid = 0
	p.mu.Unlock()
	p.exitedOnce.Do(func() { close(p.firstExit) })
	e := ended{took: r.took}
	var exit *exec.ExitError
	switch {
	case r.err == nil:
	case errors.As(r.err, &exit):
		e.code = exit.ExitCode()
		if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			e.signal = ws.Signal().String()
		}
	case !errors.Is(r.err, exec.ErrWaitDelay):
		e.code = -1
		e.signal = r.err.Error()
	}
	return e, pid, nil
}

// lines is where one stream of an instance goes: its log file and the
// sink, a line at a time.
func (s *Supervisor) lines(p *proc, stream string) *lineWriter {
	sup := p.spec
	w := &lineWriter{emit: func(line []byte) { s.Sink.Line(sup.Site, sup.Service, p.server, sup.Index, stream, line) }}
	if s.LogDir != "" {
		if err := os.MkdirAll(s.LogDir, 0o755); err == nil {
			name := filepath.Join(s.LogDir, fmt.Sprintf("%s.%d.log", sup.Service, sup.Index))
			if f, err := os.OpenFile(name, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
				w.file = f
			}
		}
	}
	return w
}

// lineWriter splits what a process writes into lines.
type lineWriter struct {
	mu   sync.Mutex
	buf  []byte
	file *os.File
	emit func([]byte)
}

func (w *lineWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, b...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.line(w.buf[:i])
		w.buf = w.buf[i+1:]
	}
	if len(w.buf) > 64<<10 { // a very long line is cut
		w.line(w.buf)
		w.buf = w.buf[:0]
	}
	return len(b), nil
}

func (w *lineWriter) line(l []byte) {
	if w.file != nil {
		_, _ = w.file.Write(append(slices.Clone(l), '\n'))
	}
	w.emit(slices.Clone(l))
}

// Close flushes a last line without its newline and closes the file.
func (w *lineWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.line(w.buf)
		w.buf = nil
	}
	if w.file != nil {
		return w.file.Close()
	}
	return nil
}

// program is the executable sup's command runs, when its first word (after
// an exec) is a path: relative ones are in its folder. "" when it is not.
func program(sup events.Supervise) string {
	words := strings.Fields(sup.Command)
	if len(words) > 0 && words[0] == "exec" {
		words = words[1:]
	}
	if len(words) == 0 || !strings.Contains(words[0], "/") || strings.ContainsAny(words[0], "$`'\"*?") {
		return ""
	}
	if filepath.IsAbs(words[0]) {
		return filepath.Clean(words[0])
	}
	return filepath.Join(sup.Dir, words[0])
}

// strays are processes of this user running the program of sup's command
// that this supervisor did not start: copies started by hand that would
// fight its instances for their ports. Only a command that names its
// program by path (./bin/api) has strays to find.
func (s *Supervisor) strays(sup events.Supervise) []int {
	prog := program(sup)
	if prog == "" || sup.Dir == "" {
		return nil
	}
	ours := map[int]bool{os.Getpid(): true}
	s.mu.Lock()
	for _, p := range s.procs {
		ours[p.currentPID()] = true
	}
	s.mu.Unlock()
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || ours[pid] {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue // gone meanwhile
		}
		if st, ok := info.Sys().(*syscall.Stat_t); !ok || int(st.Uid) != os.Getuid() {
			continue
		}
		if exePath(pid) == prog && !ours[pgid(pid)] {
			out = append(out, pid)
		}
	}
	return out
}

// groupAlive reports whether process group pgid has a member that is not
// a zombie: a zombie has ended, and whoever reaps it (init, in a container
// maybe late) does not matter here.
func groupAlive(pgid int) bool { return len(members(pgid)) > 0 }

// running reports whether pid exists and is not a zombie.
func running(pid int) bool {
	f := statFields(pid)
	return len(f) > 0 && f[0] != "Z"
}

func exePath(pid int) string {
	exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	return strings.TrimSuffix(exe, " (deleted)")
}

func pgid(pid int) int {
	g, err := syscall.Getpgid(pid)
	if err != nil {
		return 0
	}
	return g
}
