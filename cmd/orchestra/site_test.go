package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/projections"
)

// siteServers is n local servers site-s1 … site-sn, labelled role: any.
func siteServers(n int) string {
	var b strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "kind: Server\nname: site-s%d\naddress: 127.0.0.1\nmethod: local\nlabels: {role: any}\n---\n", i)
	}
	return b.String()
}

// stamp is a command that records, in its own file under dir, when it
// began and ended (nanoseconds, as the server's clock says), sleeping
// between; one line per time it ran.
func stamp(dir string, sleep float64) string {
	return fmt.Sprintf(`"f=%s/$ORCHESTRA_COMMAND.$ORCHESTRA_SERVICE.$ORCHESTRA_SERVER.$INSTANCE; b=$(date +%%s%%N); sleep %g; echo \"$b $(date +%%s%%N)\" >> $f"`, dir, sleep)
}

// stamps reads the records stamp wrote for command: per service, every
// [begin, end] of every instance.
func stamps(t *testing.T, dir, command string) map[string][][2]int64 {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, command+".*"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][][2]int64{}
	for _, f := range files {
		service := strings.Split(filepath.Base(f), ".")[1]
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.Lines(string(b)) {
			var span [2]int64
			if _, err := fmt.Sscan(line, &span[0], &span[1]); err != nil {
				t.Fatalf("%s: %q: %v", f, line, err)
			}
			out[service] = append(out[service], span)
		}
	}
	return out
}

// siteRig is a folder with a marks folder for stamp, and an orchestra up
// keeping its data in the folder.
func siteRig(t *testing.T, args ...string) (dir, marks string, p *process) {
	t.Helper()
	dir = t.TempDir()
	marks = filepath.Join(dir, "marks")
	if err := os.Mkdir(marks, 0o755); err != nil {
		t.Fatal(err)
	}
	p = startUp(t, append([]string{"--data", filepath.Join(dir, ".orchestra"), "--nats-listen", "127.0.0.1:0"}, args...)...)
	p.waitReady(t)
	return dir, marks, p
}

// siteRun runs `orchestra site ARGS -o json` and returns the run's view
// at its end and the exit status.
func (p *process) siteRun(t *testing.T, dir string, args ...string) (projections.RunView, int, string) {
	t.Helper()
	out, errOut, code := p.cli(t, dir, append(append([]string{"site"}, args...), "-o", "json")...)
	var v projections.RunView
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("site %v exited %d, not with a run (%v):\n%s%s", args, code, err, out, errOut)
	}
	return v, code, errOut
}

// ordered checks that every instance of each rank's services ended before
// any instance of the next rank began.
func ordered(t *testing.T, spans map[string][][2]int64, order []string, perService int) {
	t.Helper()
	for i, svc := range order {
		if len(spans[svc]) != perService {
			t.Fatalf("service %s ran %d times, want %d: %v", svc, len(spans[svc]), perService, spans)
		}
		if i == 0 {
			continue
		}
		var lastEnd, firstBegin int64
		for _, s := range spans[order[i-1]] {
			lastEnd = max(lastEnd, s[1])
		}
		firstBegin = spans[svc][0][0]
		for _, s := range spans[svc] {
			firstBegin = min(firstBegin, s[0])
		}
		if firstBegin < lastEnd {
			t.Errorf("%s began at %d, before %s ended at %d", svc, firstBegin, order[i-1], lastEnd)
		}
	}
}

// TestSiteStartStopInRankOrder: 3 ranks × 4 servers. start runs ranks
// ascending, stop descending, and nothing of rank n+1 begins before all
// of rank n ended, as the commands' own timestamps show. --service limits
// a run to one service; a dry run runs nothing.
func TestSiteStartStopInRankOrder(t *testing.T) {
	dir, marks, p := siteRig(t)
	var doc strings.Builder
	doc.WriteString(siteServers(4))
	doc.WriteString("kind: Site\nname: tiers\nservices:\n")
	for rank, svc := range []string{"db", "app", "web"} {
		cmd := stamp(marks, 0.05)
		fmt.Fprintf(&doc, "  - {name: %s, rank: %d, selector: {role: any}, start: %s, stop: %s}\n", svc, rank+1, cmd, cmd)
	}
	if out, errOut, code := p.applyDoc(t, dir, doc.String()); code != 0 {
		t.Fatalf("apply exited %d: %s%s", code, out, errOut)
	}

	// A dry run prints the steps in order and runs none of them.
	out, errOut, code := p.cli(t, dir, "site", "start", "tiers", "--dry-run")
	if code != 0 {
		t.Fatalf("dry run exited %d: %s", code, errOut)
	}
	if i, j := strings.Index(out, "rank 1 start"), strings.Index(out, "rank 3 start"); i < 0 || j < i || strings.Count(out, "# db#0 on site-s") != 4 {
		t.Errorf("the dry run does not list ranks 1..3 with db on 4 servers:\n%s", out)
	}
	if got := stamps(t, marks, "start"); len(got) != 0 {
		t.Fatalf("the dry run ran commands: %v", got)
	}

	v, code, errOut := p.siteRun(t, dir, "start", "tiers")
	if code != 0 || v.State != events.RunSuccess || v.Succeeded != 12 {
		t.Fatalf("start exited %d, run %s with %d succeeded: %s", code, v.State, v.Succeeded, errOut)
	}
	ordered(t, stamps(t, marks, "start"), []string{"db", "app", "web"}, 4)

	v, code, _ = p.siteRun(t, dir, "stop", "tiers")
	if code != 0 || v.State != events.RunSuccess {
		t.Fatalf("stop exited %d, run %s", code, v.State)
	}
	ordered(t, stamps(t, marks, "stop"), []string{"web", "app", "db"}, 4)

	// --service: only app stops again, the others not at all.
	v, code, _ = p.siteRun(t, dir, "stop", "tiers", "--service", "app")
	if code != 0 || v.Succeeded != 4 {
		t.Fatalf("stop --service app exited %d with %d steps", code, v.Succeeded)
	}
	got := stamps(t, marks, "stop")
	if len(got["app"]) != 8 || len(got["db"]) != 4 || len(got["web"]) != 4 {
		t.Errorf("after stop --service app: app %d, db %d, web %d runs; want 8, 4, 4", len(got["app"]), len(got["db"]), len(got["web"]))
	}

	// ps shows every instance stopped, app by its last stop.
	out, _, code = p.cli(t, dir, "ps", "tiers", "-o", "json")
	var states []struct {
		Instances []struct{ Service, Server, State, Last string }
	}
	if err := json.Unmarshal([]byte(out), &states); err != nil || code != 0 || len(states) != 1 || len(states[0].Instances) != 12 {
		t.Fatalf("ps exited %d (%v): %s", code, err, out)
	}
	for _, in := range states[0].Instances {
		if in.State != events.InstanceStopped || in.Last != "stop" {
			t.Errorf("%s on %s: %s after %s, want stopped after stop", in.Service, in.Server, in.State, in.Last)
		}
	}
}

// TestSiteKeepgoingAndStopAtFailure: a rank-2 service fails on one of
// two servers. Without --keepgoing the run stops there: rank 3 never runs
// and shows REVOKED; with it rank 3 runs and the run still ends FAILURE.
// Either way the CLI exits 1.
func TestSiteKeepgoingAndStopAtFailure(t *testing.T) {
	dir, marks, p := siteRig(t)
	ok := stamp(marks, 0)
	doc := siteServers(2) + fmt.Sprintf(`kind: Site
name: shaky
services:
  - {name: a, rank: 1, selector: {role: any}, start: %[1]s}
  - {name: b, rank: 2, selector: {role: any}, start: 'test "$ORCHESTRA_SERVER" != site-s2 || { echo "b cannot start here" >&2; exit 7; }'}
  - {name: c, rank: 3, selector: {role: any}, start: %[1]s}
`, ok)
	if out, errOut, code := p.applyDoc(t, dir, doc); code != 0 {
		t.Fatalf("apply exited %d: %s%s", code, out, errOut)
	}
	v, code, errOut := p.siteRun(t, dir, "start", "shaky")
	if code != 1 || v.State != events.RunFailure || v.Failed != 1 || v.Revoked != 2 {
		t.Fatalf("start exited %d: run %s, %d failed, %d not run; want 1, FAILURE, 1, 2 (%s)", code, v.State, v.Failed, v.Revoked, errOut)
	}
	if !strings.Contains(errOut, "FAILURE") {
		t.Errorf("the CLI does not say the run failed: %s", errOut)
	}
	if got := stamps(t, marks, "start"); len(got["c"]) != 0 {
		t.Errorf("rank 3 ran after rank 2 failed: %v", got["c"])
	}
	last := v.Phases[len(v.Phases)-1]
	if last.State != events.StateRevoked || last.Steps[0].State != events.StateRevoked {
		t.Errorf("rank 3 shows %s/%s, want REVOKED", last.State, last.Steps[0].State)
	}
	for _, st := range v.Phases[1].Steps {
		if want := map[string]string{"site-s1": events.StateSuccess, "site-s2": events.StateFailure}[st.Server]; st.State != want {
			t.Errorf("b on %s: %s, want %s", st.Server, st.State, want)
		}
	}

	v, code, _ = p.siteRun(t, dir, "start", "shaky", "--keepgoing")
	if code != 1 || v.State != events.RunFailure || v.Failed != 1 || v.Revoked != 0 || v.Succeeded != 5 {
		t.Fatalf("start --keepgoing exited %d: run %s, %d ok, %d failed, %d not run; want 1, FAILURE, 5, 1, 0", code, v.State, v.Succeeded, v.Failed, v.Revoked)
	}
	if got := stamps(t, marks, "start"); len(got["c"]) != 2 {
		t.Errorf("with --keepgoing rank 3 ran %d times, want 2", len(got["c"]))
	}
	// The failed instance shows failed, with its output.
	var st struct {
		Instances []struct {
			Service, Server, State, Stderr string
		}
	}
	out, _, _ := p.cli(t, dir, "ps", "shaky", "-o", "json")
	var all []json.RawMessage
	if err := json.Unmarshal([]byte(out), &all); err != nil || len(all) != 1 || json.Unmarshal(all[0], &st) != nil {
		t.Fatalf("ps: %v: %s", err, out)
	}
	i := slices.IndexFunc(st.Instances, func(in struct{ Service, Server, State, Stderr string }) bool {
		return in.Service == "b" && in.Server == "site-s2"
	})
	if i < 0 || st.Instances[i].State != events.InstanceFailed || !strings.Contains(st.Instances[i].Stderr, "b cannot start here") {
		t.Errorf("ps shows b on site-s2 as %+v, want failed with its stderr", st.Instances)
	}

	// A site deleted and made again under its name starts unknown.
	if out, errOut, code := p.cli(t, dir, "delete", "site", "shaky"); code != 0 {
		t.Fatalf("delete exited %d: %s%s", code, out, errOut)
	}
	if out, errOut, code := p.applyDoc(t, dir, doc); code != 0 {
		t.Fatalf("apply exited %d: %s%s", code, out, errOut)
	}
	out, _, _ = p.cli(t, dir, "ps", "shaky", "-o", "json")
	if err := json.Unmarshal([]byte(out), &all); err != nil || len(all) != 1 || json.Unmarshal(all[0], &st) != nil {
		t.Fatalf("ps: %v: %s", err, out)
	}
	for _, in := range st.Instances {
		if in.State != events.InstanceUnknown {
			t.Errorf("after the site was made again, %s on %s is %s, want unknown", in.Service, in.Server, in.State)
		}
	}
}

// TestRollingUpdateKeepsBatch: a rolling update of a service on four
// servers with batch 2 never has more than two instances down at once,
// as a probe polling the instances' marker files throughout sees.
func TestRollingUpdateKeepsBatch(t *testing.T) {
	dir := t.TempDir()
	marks := filepath.Join(dir, "up")
	if err := os.Mkdir(marks, 0o755); err != nil {
		t.Fatal(err)
	}
	p := startUp(t, "--data", filepath.Join(dir, ".orchestra"), "--nats-listen", "127.0.0.1:0")
	p.waitReady(t)
	mark := marks + "/$ORCHESTRA_SERVER"
	doc := siteServers(4) + fmt.Sprintf(`kind: Site
name: roll
update: {strategy: rolling, batch: 2}
services:
  - name: api
    rank: 1
    selector: {role: any}
    start: sleep 0.1; touch %[1]s
    stop: rm -f %[1]s; sleep 0.1
    install: sleep 0.05
    status: test -e %[1]s || exit 3
`, mark)
	if out, errOut, code := p.applyDoc(t, dir, doc); code != 0 {
		t.Fatalf("apply exited %d: %s%s", code, out, errOut)
	}
	if v, code, _ := p.siteRun(t, dir, "start", "roll"); code != 0 || v.Succeeded != 4 {
		t.Fatalf("start exited %d", code)
	}
	var maxDown, polls atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			entries, err := os.ReadDir(marks)
			if err == nil {
				down := int64(4 - len(entries))
				polls.Add(1)
				if down > maxDown.Load() {
					maxDown.Store(down)
				}
			}
			time.Sleep(2 * time.Millisecond)
		}
	})
	v, code, errOut := p.siteRun(t, dir, "update", "roll")
	close(stop)
	wg.Wait()
	if code != 0 || v.State != events.RunSuccess {
		t.Fatalf("update exited %d: %s %s", code, v.State, errOut)
	}
	// Two batches of stop, install, configure (none here), start, status.
	if got := len(v.Phases); got != 8 {
		t.Errorf("the update has %d phases, want 8 (2 batches × stop, install, start, status)", got)
	}
	if maxDown.Load() > 2 || maxDown.Load() < 1 {
		t.Errorf("the probe saw at most %d instances down in %d polls; want 1 or 2 (batch 2)", maxDown.Load(), polls.Load())
	}
	t.Logf("probe: %d polls, at most %d down", polls.Load(), maxDown.Load())
}

// TestSiteRunResumesAfterKill: orchestra up killed with SIGKILL while a
// run's second rank is running, and started again: the run resumes and
// finishes, and no step that had finished runs again.
func TestSiteRunResumesAfterKill(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, ".orchestra")
	marks := filepath.Join(dir, "marks")
	if err := os.Mkdir(marks, 0o755); err != nil {
		t.Fatal(err)
	}
	// A short AckWait: the plan the killed executor held comes back soon.
	p := startUp(t, "--data", data, "--nats-listen", "127.0.0.1:0", "--ack-wait", "3s")
	p.waitReady(t)
	p.token = adminToken(t, data)
	doc := siteServers(2) + fmt.Sprintf(`kind: Site
name: long
services:
  - {name: first, rank: 1, selector: {role: any}, start: %s}
  - {name: second, rank: 2, selector: {role: any}, start: %s}
  - {name: third, rank: 3, selector: {role: any}, start: %s}
`, stamp(marks, 0), stamp(marks, 1.5), stamp(marks, 0))
	if out, errOut, code := p.applyDoc(t, dir, doc); code != 0 {
		t.Fatalf("apply exited %d: %s%s", code, out, errOut)
	}
	out, errOut, code := p.cli(t, dir, "site", "start", "long", "--dry-run", "-o", "json")
	if code != 0 {
		t.Fatalf("dry run: %s", errOut)
	}
	var dry struct{ Phases []json.RawMessage }
	if err := json.Unmarshal([]byte(out), &dry); err != nil || len(dry.Phases) != 3 {
		t.Fatalf("dry run: %v %s", err, out)
	}

	// Start the run in the background and wait until rank 2 is running.
	type result struct {
		code         int
		stdout, errs string
	}
	done := make(chan result, 1)
	go func() {
		o, e, c := p.cli(t, dir, "site", "start", "long")
		done <- result{c, o, e}
	}()
	var id string
	deadline := time.Now().Add(30 * time.Second)
	for id == "" && time.Now().Before(deadline) {
		_, body := p.get(t, "/v1/runs?site=long")
		var page struct{ Items []projections.RunSummary }
		if json.Unmarshal([]byte(body), &page) == nil && len(page.Items) == 1 {
			id = page.Items[0].Run.String()
		}
		time.Sleep(20 * time.Millisecond)
	}
	if id == "" {
		t.Fatal("no run appeared")
	}
	// A second command meanwhile is refused, naming the run in progress.
	if _, e, c := p.cli(t, dir, "site", "start", "long"); c != 1 || !strings.Contains(e, id) || !strings.Contains(e, "409") && !strings.Contains(e, "running") {
		t.Errorf("a second command exited %d: %s; want a refusal naming run %s", c, e, id)
	}
	for time.Now().Before(deadline) {
		if m, _ := filepath.Glob(filepath.Join(marks, "start.first.*")); len(m) == 2 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // rank 2 has begun its 1.5 s
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-p.exited
	<-done // the CLI lost its server

	p = startUp(t, "--data", data, "--nats-listen", "127.0.0.1:0", "--ack-wait", "3s")
	p.waitReady(t)
	var v projections.RunView
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		p.token = adminToken(t, data)
		code, body := p.get(t, "/v1/runs/"+id)
		if code == 200 && json.Unmarshal([]byte(body), &v) == nil && v.Finished != nil {
			break
		}
	}
	if v.Finished == nil || v.State != events.RunSuccess || v.Succeeded != 6 {
		t.Fatalf("after the restart the run is %s with %d succeeded, finished %v", v.State, v.Succeeded, v.Finished)
	}
	got := stamps(t, marks, "start")
	if len(got["first"]) != 2 || len(got["third"]) != 2 {
		t.Errorf("first ran %d times, third %d; want each once per server (2)", len(got["first"]), len(got["third"]))
	}
	// The steps killed mid-run ran again and finished; the attempts cut
	// short wrote nothing.
	if n := len(got["second"]); n != 2 {
		t.Errorf("second finished %d times, want 2 (once per server)", n)
	}
	for _, st := range v.Phases[1].Steps {
		if st.State != events.StateSuccess {
			t.Errorf("second on %s: %s", st.Server, st.State)
		}
	}
}

// TestRunCancelRevokesQueuedSteps: `orchestra run cancel` while the first
// of three instances on one server runs: that one finishes, the two
// queued behind it never start (REVOKED), the next rank never runs, and
// the run ends REVOKED.
func TestRunCancelRevokesQueuedSteps(t *testing.T) {
	dir := t.TempDir()
	marks := filepath.Join(dir, "marks")
	if err := os.Mkdir(marks, 0o755); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, ".orchestra")
	p := startUp(t, "--data", data, "--nats-listen", "127.0.0.1:0")
	p.waitReady(t)
	p.token = adminToken(t, data)
	doc := siteServers(1) + fmt.Sprintf(`kind: Site
name: slow
services:
  - {name: slow, rank: 1, servers: [site-s1], scale: 3, start: %s}
  - {name: after, rank: 2, servers: [site-s1], start: %s}
`, stamp(marks, 1), stamp(marks, 0))
	if out, errOut, code := p.applyDoc(t, dir, doc); code != 0 {
		t.Fatalf("apply exited %d: %s%s", code, out, errOut)
	}
	done := make(chan int, 1)
	go func() {
		_, _, c := p.cli(t, dir, "site", "start", "slow")
		done <- c
	}()
	var id string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		_, body := p.get(t, "/v1/runs?site=slow")
		var page struct{ Items []projections.RunSummary }
		if json.Unmarshal([]byte(body), &page) != nil || len(page.Items) != 1 {
			continue
		}
		id = page.Items[0].Run.String()
		var v projections.RunView
		if _, body := p.get(t, "/v1/runs/"+id); json.Unmarshal([]byte(body), &v) == nil && len(v.Phases) > 0 && v.Phases[0].Steps[0].State == events.StateStarted {
			break
		}
	}
	if out, errOut, code := p.cli(t, dir, "run", "cancel", id); code != 0 {
		t.Fatalf("run cancel exited %d: %s%s", code, out, errOut)
	}
	if code := <-done; code != 1 {
		t.Errorf("site start of a cancelled run exited %d, want 1", code)
	}
	var v projections.RunView
	if _, body := p.get(t, "/v1/runs/"+id); json.Unmarshal([]byte(body), &v) != nil || v.State != events.RunRevoked {
		t.Fatalf("the run is %s, want REVOKED: %s", v.State, body)
	}
	states := []string{}
	for _, st := range v.Phases[0].Steps {
		states = append(states, st.State)
	}
	if want := []string{events.StateSuccess, events.StateRevoked, events.StateRevoked}; !slices.Equal(states, want) {
		t.Errorf("rank 1 steps: %v, want %v", states, want)
	}
	if v.Phases[1].State != events.StateRevoked || v.Succeeded != 1 || v.Revoked != 3 {
		t.Errorf("rank 2 %s; %d succeeded, %d not run; want REVOKED, 1, 3", v.Phases[1].State, v.Succeeded, v.Revoked)
	}
	time.Sleep(1500 * time.Millisecond) // long enough for a revoked step that ran anyway to write
	if got := stamps(t, marks, "start"); len(got["slow"]) != 1 || len(got["after"]) != 0 {
		t.Errorf("after the cancel slow ran %d times and after %d; want 1 and 0", len(got["slow"]), len(got["after"]))
	}
	// The revoked scripts are in the logs as REVOKED.
	out, _, _ := p.cli(t, dir, "scripts", "--state", "REVOKED", "-o", "json")
	var revoked []json.RawMessage
	if err := json.Unmarshal([]byte(out), &revoked); err != nil || len(revoked) != 2 {
		t.Errorf("scripts --state REVOKED: %v, %d scripts, want 2: %s", err, len(revoked), out)
	}
}

// TestSiteStepsQueueBehindModelScripts: site steps go through the same
// per-server queue as the model's scripts, so a step sent while a model
// script runs on its server starts only once that script has ended.
func TestSiteStepsQueueBehindModelScripts(t *testing.T) {
	dir, marks, p := siteRig(t)
	doc := siteServers(1) + fmt.Sprintf(`kind: Backend
name: slow
type: job
actions:
  save: |
    b=$(date +%%s%%N); sleep 1; echo "$b $(date +%%s%%N)" > %[1]s/model
---
kind: Route
backend: slow
server: site-s1
---
kind: Site
name: queued
services:
  - {name: a, rank: 1, servers: [site-s1], start: %[2]s}
`, marks, stamp(marks, 0))
	if out, errOut, code := p.applyDoc(t, dir, doc); code != 0 {
		t.Fatalf("apply exited %d: %s%s", code, out, errOut)
	}
	// The model script starts, and while it runs the site starts.
	p.applyText(t, dir, "kind: Resource\ntype: job\nname: j\nattrs: {}\n")
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		out, _, _ := p.cli(t, dir, "scripts", "--state", "STARTED", "-o", "json")
		if strings.Contains(out, `"backend": "slow"`) || strings.Contains(out, `"backend":"slow"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the model script did not start: %s", out)
		}
	}
	if v, code, errOut := p.siteRun(t, dir, "start", "queued"); code != 0 {
		t.Fatalf("start exited %d: %s %s", code, v.State, errOut)
	}
	b, err := os.ReadFile(filepath.Join(marks, "model"))
	if err != nil {
		t.Fatalf("the model script did not run: %v", err)
	}
	var model [2]int64
	if _, err := fmt.Sscan(string(b), &model[0], &model[1]); err != nil {
		t.Fatal(err)
	}
	step := stamps(t, marks, "start")["a"]
	if len(step) != 1 || step[0][0] < model[1] {
		t.Errorf("the site step ran %v, the model script %v: the step began before the script ended", step, model)
	}
}
