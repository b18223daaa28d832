package executor_test

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/executor"
)

func localConfig() executor.Config {
	return executor.Config{Methods: map[string]executor.Method{"local": executor.Local{Host: "test"}}, KeepOutput: true}
}

func TestLocalOutcomesAndOutput(t *testing.T) {
	r := newRig(t, localConfig())
	r.save(localServer("web1"))
	ok := script("ok", `printf 'out\x00\xff\n'; printf 'err 1\n' >&2; echo "line 2"`, "1m")
	bad := script("bad", "echo failing >&2\nexit 3\n", "1m")
	plan := r.send("web1", ok, bad)

	fin := r.finished("web1", ok.ID)
	if fin.State != events.StateSuccess || fin.ExitCode != 0 || fin.Attempt != 1 || fin.Unit != plan.Unit {
		t.Fatalf("ok: %+v", fin)
	}
	rs := r.results("web1", ok.ID)
	if rs[0].kind != "ScriptStarted" || rs[len(rs)-1].kind != "ScriptFinished" {
		t.Fatalf("results are not started … finished: %v", rs)
	}
	stdout, trunc := output(t, rs, events.Stdout)
	if want := "out\x00\xff\nline 2\n"; string(stdout) != want || trunc {
		t.Fatalf("stdout %q (truncated %v), want %q", stdout, trunc, want)
	}
	if stderr, _ := output(t, rs, events.Stderr); string(stderr) != "err 1\n" {
		t.Fatalf("stderr %q", stderr)
	}
	if fin.Stdout != int64(len(stdout)) || fin.Stderr != 6 {
		t.Fatalf("byte counts %d/%d", fin.Stdout, fin.Stderr)
	}

	// A failing script does not stop the next backend's script of the plan.
	fin = r.finished("web1", bad.ID)
	if fin.State != events.StateFailure || fin.ExitCode != 3 {
		t.Fatalf("bad: %+v", fin)
	}
	if stderr, _ := output(t, r.results("web1", bad.ID), events.Stderr); string(stderr) != "failing\n" {
		t.Fatalf("stderr %q", stderr)
	}
}

func TestLocalTimeoutKillsTheProcessGroup(t *testing.T) {
	r := newRig(t, localConfig())
	r.save(localServer("slow"))
	r.save(localServer("fast"))
	hang, after, marker := r.hangingPlans("slow")
	var others []events.PlanScript
	for range 3 {
		s := script("quick", "true", "1m")
		others = append(others, s)
		r.send("fast", s)
	}
	r.timedOut("slow", hang, after, marker)
	// The other server was not held up: its scripts were stored first.
	hangSeq := r.results("slow", hang.ID)
	for _, s := range others {
		rs := r.results("fast", s.ID)
		if last := rs[len(rs)-1]; last.seq > hangSeq[len(hangSeq)-1].seq {
			t.Fatalf("a script on another server finished after the hung one")
		}
	}
}

func TestLocalHugeOutputIsTruncatedAndKeptWhole(t *testing.T) {
	cfg := localConfig()
	cfg.Limits.Events = 64 << 10
	r := newRig(t, cfg)
	r.save(localServer("big"))
	const size = 100 << 20
	big := script("big", fmt.Sprintf("head -c %d /dev/zero | tr '\\0' x; echo tail >&2", size), "5m")
	r.send("big", big)
	fin := r.finished("big", big.ID)
	if fin.State != events.StateSuccess || fin.Stdout != size || fin.Stderr != 5 || fin.Object == "" {
		t.Fatalf("big: %+v", fin)
	}
	rs := r.results("big", big.ID)
	stdout, trunc := output(t, rs, events.Stdout)
	if !trunc || len(stdout) > 64<<10 || strings.Trim(string(stdout), "x") != "" {
		t.Fatalf("chunks carried %d bytes, truncated %v", len(stdout), trunc)
	}
	var marker string
	for _, x := range rs {
		if o, ok := x.v.(*events.ScriptOutput); ok && o.Truncated {
			marker = string(o.Data)
		}
	}
	if !strings.Contains(marker, "truncated after 65536 bytes") {
		t.Fatalf("marker %q", marker)
	}
	whole := r.object(fin.Object + "/stdout")
	if len(whole) != size || bytes.Count(whole, []byte("x")) != size {
		t.Fatalf("the bucket kept %d bytes of %d", len(whole), size)
	}
	if got := r.object(fin.Object + "/stderr"); string(got) != "tail\n" {
		t.Fatalf("stderr object %q", got)
	}
}

func TestServersComeAndGoWithoutRestart(t *testing.T) {
	r := newRig(t, localConfig())
	first := r.send("late", script("b", "echo hi", "1m"))
	// Not in the fleet yet: the plan waits.
	time.Sleep(300 * time.Millisecond)
	r.save(localServer("late"))
	if fin := r.finished("late", first.Scripts[0].ID); fin.State != events.StateSuccess {
		t.Fatalf("%+v", fin)
	}
	r.remove("late")
	eventually(t, "the worker stops", func() bool {
		r.send("late", script("b", "true", "1m"))
		time.Sleep(200 * time.Millisecond)
		return r.pending("late") >= 2
	})
	// Inactive servers are not served either; active again, the queue drains.
	s := localServer("late")
	s.Active = false
	r.save(s)
	time.Sleep(200 * time.Millisecond)
	if n := r.pending("late"); n < 2 {
		t.Fatalf("an inactive server ran plans: %d pending", n)
	}
	s.Active = true
	r.save(s)
	eventually(t, "the queue drains", func() bool { return r.pending("late") == 0 })
}
