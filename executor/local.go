package executor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/orchestra-fleet/orchestra/events"
)

// Local runs scripts on the executor's own host, with the same semantics
// as SSH: the script on the standard input of the backend's executable, no
// login shell, the whole process group killed at the timeout.
type Local struct {
	// Host names the executor's host in ScriptStarted.
	Host string
}

// Name implements Method.
func (l Local) Name() string { return "local on " + l.Host }

// Run implements Method.
func (Local) Run(ctx context.Context, j Job) Outcome {
	cmd := exec.Command(j.Script.Executable)
	cmd.Env = append(os.Environ(), RunEnv+"="+j.Run)
	cmd.Stdin = strings.NewReader(j.Script.Script)
	cmd.Stdout, cmd.Stderr = j.Stdout, j.Stderr
	// Pdeathsig: should the executor die, the script dies with it rather
	// than run on beside its next attempt.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// A child that outlives the kill may hold the output pipes open; stop
	// waiting for them soon after.
	cmd.WaitDelay = time.Second
	started := make(chan error, 1)
	done := make(chan error, 1)
	go func() {
		// Pdeathsig fires when the thread that started the process ends,
		// so that thread is kept until the process has exited (and then
		// ends with this goroutine, as it is never unlocked).
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		done <- cmd.Wait()
	}()
	if err := <-started; err != nil {
		return Outcome{State: events.StateError, ExitCode: -1, Reason: fmt.Sprintf("start %s: %v", j.Script.Executable, err)}
	}
	j.Started(cmd.Process.Pid)
	timer := time.NewTimer(j.Timeout)
	defer timer.Stop()
	var out Outcome
	select {
	case err := <-done:
		return waited(err)
	case <-timer.C:
		out = ranPast(j.Timeout)
	case <-ctx.Done():
		out = Outcome{State: events.StateError, ExitCode: -1, Reason: "the executor stopped"}
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-done
	return out
}

// Kill implements Method.
func (Local) Kill(_ context.Context, _ events.Server, pid int, run string) error {
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil || !bytes.Contains(env, []byte("\x00"+RunEnv+"="+run+"\x00")) && !bytes.HasPrefix(env, []byte(RunEnv+"="+run+"\x00")) {
		return nil // gone, or another process by now
	}
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill process group %d: %w", pid, err)
	}
	return nil
}

// waited turns what Wait returned into an outcome.
func waited(err error) Outcome {
	var exit *exec.ExitError
	switch {
	case err == nil:
		return exited(0)
	case errors.As(err, &exit):
		if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return Outcome{State: events.StateFailure, ExitCode: -1, Reason: "killed by signal " + ws.Signal().String()}
		}
		return exited(exit.ExitCode())
	case errors.Is(err, exec.ErrWaitDelay):
		return Outcome{State: events.StateSuccess, Reason: "a child process kept the output open after the script exited"}
	}
	return Outcome{State: events.StateError, ExitCode: -1, Reason: err.Error()}
}
