package executor_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/executor"
)

// sink records what a supervisor reports.
type sink struct {
	mu      sync.Mutex
	started []events.InstanceStarted
	exited  []events.InstanceExited
	lines   []string
}

func (s *sink) Started(e events.InstanceStarted) {
	s.mu.Lock()
	s.started = append(s.started, e)
	s.mu.Unlock()
}
func (s *sink) Exited(e events.InstanceExited) {
	s.mu.Lock()
	s.exited = append(s.exited, e)
	s.mu.Unlock()
}
func (s *sink) Line(site, service, server string, index int, stream string, line []byte) {
	s.mu.Lock()
	s.lines = append(s.lines, fmt.Sprintf("%s#%d %s: %s", service, index, stream, line))
	s.mu.Unlock()
}

// waitFor polls cond for 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("%s: not within 10 s", what)
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return err == nil && !strings.Contains(string(b), ") Z ")
}

// groupMembers lists the processes of process group pgid, from /proc.
func groupMembers(pgid int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if g, err := syscall.Getpgid(pid); err == nil && g == pgid && alive(pid) {
			out = append(out, pid)
		}
	}
	return out
}

func spec(dir string, index, scale int, command string) events.Supervise {
	return events.Supervise{Action: events.SuperviseStart, Site: "dev", Service: "api", Index: index, Scale: scale, Command: command,
		Dir: dir, Env: []string{"INSTANCE=" + strconv.Itoa(index), "PORT=" + strconv.Itoa(8100+index)}, Port: 8100 + index,
		Restart: events.RestartOnFailure, Grace: 2 * time.Second}
}

// TestSupervisorRestartsAndStopsTheWholeGroup: an instance whose leader is
// killed with SIGKILL comes back, its restarts counted; a stop leaves no
// process of its group, a forked child included; output reaches the log
// file and the sink a line at a time.
func TestSupervisorRestartsAndStopsTheWholeGroup(t *testing.T) {
	dir := t.TempDir()
	rec := &sink{}
	sup := &executor.Supervisor{LogDir: filepath.Join(dir, "logs"), Sink: rec}
	t.Cleanup(sup.StopAll)
	// The service forks a child that would outlive a kill of the leader alone.
	cmd := `echo "up on $PORT"; sleep 300 & echo child $!; wait`
	var out bytes.Buffer
	if o := sup.Do("here", spec(dir, 0, 1, cmd), &out); o.State != events.StateSuccess {
		t.Fatalf("start: %+v %s", o, out.String())
	}
	waitFor(t, "the first start", func() bool { rec.mu.Lock(); defer rec.mu.Unlock(); return len(rec.started) == 1 })
	first := rec.started[0].PID
	waitFor(t, "the child", func() bool { return len(groupMembers(first)) == 2 })
	if err := syscall.Kill(first, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the restart", func() bool { rec.mu.Lock(); defer rec.mu.Unlock(); return len(rec.started) == 2 })
	rec.mu.Lock()
	again, exit := rec.started[1], rec.exited[0]
	rec.mu.Unlock()
	if again.Restarts != 1 || again.PID == first || !exit.Restarting || exit.Signal == "" {
		t.Errorf("after SIGKILL: exited %+v, started %+v; want a restart counted", exit, again)
	}
	if left := groupMembers(first); len(left) != 0 {
		t.Errorf("the killed instance's group still has %v", left)
	}
	waitFor(t, "the new child", func() bool { return len(groupMembers(again.PID)) == 2 })
	out.Reset()
	stop := spec(dir, 0, 1, cmd)
	stop.Action = events.SuperviseStop
	if o := sup.Do("here", stop, &out); o.State != events.StateSuccess {
		t.Fatalf("stop: %+v", o)
	}
	if left := groupMembers(again.PID); len(left) != 0 {
		t.Errorf("after stop the group still has %v", left)
	}
	status := stop
	status.Action = events.SuperviseStatus
	if o := sup.Do("here", status, &out); o.ExitCode != 3 {
		t.Errorf("status of a stopped instance: %+v", o)
	}
	log, err := os.ReadFile(filepath.Join(dir, "logs", "api.0.log"))
	if err != nil || strings.Count(string(log), "up on 8100\n") != 2 {
		t.Errorf("the log file holds %q (%v), want two starts", log, err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.lines) < 4 || rec.lines[0] != "api#0 stdout: up on 8100" {
		t.Errorf("lines: %q", rec.lines)
	}
	if last := rec.exited[len(rec.exited)-1]; !last.Stopped || last.Restarting {
		t.Errorf("the last exit is %+v, want stopped", last)
	}
}

// TestSupervisorScalesDownAndStopsStrays: a start with a smaller scale
// stops the instances beyond it; a copy of the service's program started
// by hand from its folder is stopped before an instance starts.
func TestSupervisorScalesDownAndStopsStrays(t *testing.T) {
	dir := t.TempDir()
	rec := &sink{}
	sup := &executor.Supervisor{Sink: rec}
	t.Cleanup(sup.StopAll)
	// The service's program: a copy of sleep in its folder.
	prog := filepath.Join(dir, "bin", "api")
	if err := os.MkdirAll(filepath.Dir(prog), 0o755); err != nil {
		t.Fatal(err)
	}
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(prog, b, 0o755); err != nil {
		t.Fatal(err)
	}
	stray := exec.Command(prog, "300")
	if err := stray.Start(); err != nil {
		t.Fatal(err)
	}
	strayDone := make(chan error, 1)
	go func() { strayDone <- stray.Wait() }()
	t.Cleanup(func() { _ = stray.Process.Kill() })

	var out bytes.Buffer
	for i := range 3 {
		if o := sup.Do("here", spec(dir, i, 3, "exec ./bin/api 300"), &out); o.State != events.StateSuccess {
			t.Fatalf("start %d: %+v %s", i, o, out.String())
		}
	}
	select {
	case <-strayDone:
	case <-time.After(5 * time.Second):
		t.Fatal("the stray copy still runs")
	}
	if !strings.Contains(out.String(), fmt.Sprintf("pid %d", stray.Process.Pid)) {
		t.Errorf("the stray was not reported:\n%s", out.String())
	}
	waitFor(t, "three instances", func() bool { rec.mu.Lock(); defer rec.mu.Unlock(); return len(rec.started) == 3 })
	pids := map[int]int{}
	rec.mu.Lock()
	for _, s := range rec.started {
		pids[s.Index] = s.PID
	}
	rec.mu.Unlock()
	// Scale 1: instance 0 stays, 1 and 2 stop.
	if o := sup.Do("here", spec(dir, 0, 1, "exec ./bin/api 300"), &out); o.State != events.StateSuccess {
		t.Fatalf("scale down: %+v", o)
	}
	if !alive(pids[0]) || alive(pids[1]) || alive(pids[2]) {
		t.Errorf("after scaling to 1: instance 0 alive %v, 1 %v, 2 %v; want true, false, false", alive(pids[0]), alive(pids[1]), alive(pids[2]))
	}
	if !strings.Contains(out.String(), "api#0 runs already") {
		t.Errorf("a start of a running instance restarted it:\n%s", out.String())
	}
}

// TestSupervisorRestartPolicy: on-failure leaves a clean exit alone,
// never leaves a failure alone, max_restarts bounds the restarts.
func TestSupervisorRestartPolicy(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		name, restart, cmd string
		max, starts        int
	}{
		{"clean exit, on-failure", events.RestartOnFailure, "exit 0", 0, 1},
		{"failure, never", events.RestartNever, "exit 2", 0, 1},
		{"failure, on-failure, at most 1 restart", events.RestartOnFailure, "exit 2", 1, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			rec := &sink{}
			sup := &executor.Supervisor{Sink: rec}
			s := spec(dir, 0, 1, c.cmd)
			s.Restart, s.MaxRestarts = c.restart, c.max
			// Each exits at once, which the start reports.
			if o := sup.Do("here", s, &bytes.Buffer{}); o.State != events.StateFailure || !strings.Contains(o.Reason, "exited within") {
				t.Fatalf("start: %+v", o)
			}
			waitFor(t, "the end", func() bool {
				rec.mu.Lock()
				defer rec.mu.Unlock()
				return len(rec.exited) == c.starts && !rec.exited[len(rec.exited)-1].Restarting
			})
			time.Sleep(1200 * time.Millisecond) // longer than a first backoff
			rec.mu.Lock()
			defer rec.mu.Unlock()
			if len(rec.started) != c.starts {
				t.Errorf("started %d times, want %d", len(rec.started), c.starts)
			}
		})
	}
}
