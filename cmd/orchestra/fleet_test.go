package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fleetCLI runs the orchestra binary in dir, a fleet folder, as a
// developer would: no ORCHESTRA_URL or token in the environment.
func fleetCLI(t *testing.T, dir string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "ORCHESTRA_URL=", "ORCHESTRA_TOKEN=")
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

// instance is a row of `orchestra ps -o json` in a fleet folder.
type instance struct {
	Service  string
	Index    int
	State    string
	PID      int
	Restarts int
	Port     int
}

func fleetPS(t *testing.T, dir string) map[string]instance {
	t.Helper()
	out, code := fleetCLI(t, dir, "ps", "-o", "json")
	var states []struct{ Instances []instance }
	if err := json.Unmarshal([]byte(out), &states); err != nil || code != 0 || len(states) != 1 {
		t.Fatalf("ps exited %d (%v): %s", code, err, out)
	}
	m := map[string]instance{}
	for _, in := range states[0].Instances {
		m[fmt.Sprintf("%s#%d", in.Service, in.Index)] = in
	}
	return m
}

// live reports whether pid runs (a zombie does not).
func live(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && !strings.HasPrefix(string(b[i+1:]), " Z")
}

// eventually polls cond for 20 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("%s: not within 20 s", what)
}

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// TestLocalFleet: a folder of three services, end to end through the CLI:
// init; start in rank order, a stray copy stopped; ps; logs -f
// interleaved; scale 1 → 3 → 1; an instance killed with SIGKILL comes
// back with its restarts counted; --rerun restarts only the service whose
// file changed; stop leaves no process (a forked child included); down
// stops the folder's Orchestra.
func TestLocalFleet(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"a/service.yml": "run: ./run.sh\nport: 9100\n",
		"a/run.sh":      "#!/bin/sh\necho \"a $INSTANCE up on $PORT\"\nwhile :; do echo \"a $INSTANCE tick\"; sleep 0.1; done\n",
		"b/service.yml": "depends_on: [a]\nrun: 'sleep 300 & echo \"b child $!\"; while :; do echo \"b $INSTANCE tick\"; sleep 0.1; done'\n",
		"c/service.yml": "depends_on: [b]\nbuild: test ! -e broken.txt && mkdir -p bin && cp \"$(command -v sleep)\" bin/c.new && mv bin/c.new bin/c\nrun: exec ./bin/c 300\nwatch: ['*.txt']\n",
	})
	t.Cleanup(func() {
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, dataDir, upLog))
			t.Logf("the folder's orchestra up logged:\n%s", log)
		}
		var st upState
		if b, err := os.ReadFile(filepath.Join(dir, dataDir, upFile)); err == nil && json.Unmarshal(b, &st) == nil && live(st.PID) {
			_ = syscall.Kill(st.PID, syscall.SIGKILL) // the test failed before down
		}
	})

	out, code := fleetCLI(t, dir, "init")
	if code != 0 || !strings.Contains(out, "rank 3  c") {
		t.Fatalf("init exited %d:\n%s", code, out)
	}
	// A copy of c's program started by hand, outside Orchestra.
	if err := exec.Command("/bin/sh", "-c", "cd "+filepath.Join(dir, "c")+" && mkdir -p bin && cp \"$(command -v sleep)\" bin/c").Run(); err != nil {
		t.Fatal(err)
	}
	stray := exec.Command(filepath.Join(dir, "c", "bin", "c"), "300")
	if err := stray.Start(); err != nil {
		t.Fatal(err)
	}
	strayDone := make(chan struct{})
	go func() { _ = stray.Wait(); close(strayDone) }()
	t.Cleanup(func() { _ = stray.Process.Kill() })

	out, code = fleetCLI(t, dir, "start")
	if code != 0 {
		t.Fatalf("start exited %d:\n%s", code, out)
	}
	ranks := regexp.MustCompile(`(?m)^rank (\d) start\s+(\w)#0`).FindAllStringSubmatch(out, -1)
	var order []string
	for _, m := range ranks {
		if m[0] != "" && !strings.Contains(strings.Join(order, ""), m[2]) {
			order = append(order, m[2])
		}
	}
	if strings.Join(order, "") != "abc" {
		t.Errorf("start order %v, want a, b, c:\n%s", order, out)
	}
	select {
	case <-strayDone:
	case <-time.After(10 * time.Second):
		t.Error("the stray copy of c still runs after start")
	}

	ps := fleetPS(t, dir)
	for _, k := range []string{"a#0", "b#0", "c#0"} {
		if ps[k].State != "running" || !live(ps[k].PID) {
			t.Errorf("%s: %+v", k, ps[k])
		}
	}
	if ps["a#0"].Port != 9100 {
		t.Errorf("a#0's port is %d", ps["a#0"].Port)
	}

	// logs -f: every instance's lines, interleaved, prefixed.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	logs := exec.CommandContext(ctx, binary, "logs", "-f")
	logs.Dir = dir
	pipe, err := logs.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := logs.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(pipe)
	var seen []string
	var childPID int
	for sc.Scan() && len(seen) < 40 {
		line := sc.Text()
		seen = append(seen, strings.Fields(line)[0])
		if _, rest, ok := strings.Cut(line, "b child "); ok {
			childPID, _ = strconv.Atoi(strings.TrimSpace(rest))
		}
	}
	cancel()
	_ = logs.Wait()
	joined := strings.Join(seen, " ")
	if !strings.Contains(joined, "a#0") || !strings.Contains(joined, "b#0") || childPID == 0 {
		t.Fatalf("logs -f showed %v (b's child %d)", seen, childPID)
	}

	// Scale b 1 → 3 → 1.
	if out, code := fleetCLI(t, dir, "scale", "b", "3"); code != 0 {
		t.Fatalf("scale b 3: %s", out)
	}
	ps = fleetPS(t, dir)
	b1, b2 := ps["b#1"], ps["b#2"]
	if b1.State != "running" || b2.State != "running" || !live(b1.PID) || !live(b2.PID) {
		t.Fatalf("after scale 3: %+v %+v", b1, b2)
	}
	if out, code := fleetCLI(t, dir, "scale", "b", "1"); code != 0 {
		t.Fatalf("scale b 1: %s", out)
	}
	if live(b1.PID) || live(b2.PID) || !live(fleetPS(t, dir)["b#0"].PID) {
		t.Errorf("after scale 1: b#1 alive %v, b#2 alive %v", live(b1.PID), live(b2.PID))
	}

	// SIGKILL a#0: it comes back, its restarts counted.
	a := fleetPS(t, dir)["a#0"]
	if err := syscall.Kill(a.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a#0 restarted", func() bool {
		now := fleetPS(t, dir)["a#0"]
		return now.State == "running" && now.PID != a.PID && now.Restarts == a.Restarts+1 && live(now.PID)
	})

	// --rerun: a change to c's watched file restarts c only.
	before := fleetPS(t, dir)
	ctx, cancel = context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rerun := exec.CommandContext(ctx, binary, "start", "--rerun", "c")
	rerun.Dir = dir
	rerunOut, err := rerun.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := rerun.Start(); err != nil {
		t.Fatal(err)
	}
	rsc := bufio.NewScanner(rerunOut)
	for rsc.Scan() && !strings.Contains(rsc.Text(), "watching") {
	}
	// A change that breaks the build: c keeps running, and it is said.
	writeFiles(t, dir, map[string]string{"c/broken.txt": "x\n"})
	for rsc.Scan() && !strings.Contains(rsc.Text(), "the running instances stay") {
	}
	if now := fleetPS(t, dir)["c#0"]; now.PID != before["c#0"].PID || !live(now.PID) {
		t.Fatalf("a failed build replaced c: %+v, before %+v", now, before["c#0"])
	}
	if err := os.Remove(filepath.Join(dir, "c", "broken.txt")); err != nil {
		t.Fatal(err)
	}
	go func() { // keep reading, so the watcher never blocks on its output
		for rsc.Scan() {
		}
	}()
	writeFiles(t, dir, map[string]string{"c/notes.txt": "changed\n"})
	eventually(t, "c restarted", func() bool {
		now := fleetPS(t, dir)["c#0"]
		return now.State == "running" && now.PID != 0 && now.PID != before["c#0"].PID && live(now.PID)
	})
	eventually(t, "the restart's run ended", func() bool {
		out, _ := fleetCLI(t, dir, "ps", "-o", "json")
		var states []struct{ Run *string }
		return json.Unmarshal([]byte(out), &states) == nil && len(states) == 1 && states[0].Run == nil
	})
	_ = rerun.Process.Signal(syscall.SIGINT)
	_ = rerun.Wait()
	after := fleetPS(t, dir)
	if after["a#0"].PID != before["a#0"].PID || after["b#0"].PID != before["b#0"].PID {
		t.Errorf("--rerun restarted more than c: before %+v, after %+v", before, after)
	}

	// Every line is on the LOGS stream too.
	checkLogsStream(t, dir)

	// stop: no process of the fleet is left, b's forked child included.
	last := fleetPS(t, dir)
	if out, code := fleetCLI(t, dir, "stop"); code != 0 {
		t.Fatalf("stop: %s", out)
	}
	for k, in := range last {
		if live(in.PID) {
			t.Errorf("%s (pid %d) runs after stop", k, in.PID)
		}
	}
	if live(childPID) {
		t.Errorf("b's child (pid %d) runs after stop", childPID)
	}
	var st upState
	b, _ := os.ReadFile(filepath.Join(dir, dataDir, upFile))
	if err := json.Unmarshal(b, &st); err != nil || !live(st.PID) {
		t.Fatalf("up.json: %v %s", err, b)
	}
	if out, code := fleetCLI(t, dir, "down"); code != 0 || live(st.PID) {
		t.Fatalf("down exited %d, orchestra up alive %v: %s", code, live(st.PID), out)
	}
}

// TestLocalFleetBadInput: a bad service.yml is refused naming the file
// and the key, and nothing starts (no background Orchestra either).
func TestLocalFleetBadInput(t *testing.T) {
	for _, c := range []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"unknown key", map[string]string{"a/service.yml": "run: x\nscael: 2\n"}, "a/service.yml: scael: line 2: not a known key"},
		{"missing run", map[string]string{"a/service.yml": "build: make\n"}, "a/service.yml: run: is missing"},
		{"cycle", map[string]string{"a/service.yml": "run: x\ndepends_on: [b]\n", "b/service.yml": "run: x\ndepends_on: [a]\n"}, "forms a cycle: a → b → a"},
		{"port collision", map[string]string{"a/service.yml": "run: x\nport: 9000\nscale: 2\n", "b/service.yml": "run: x\nport: 9001\n"}, "b/service.yml: port: 9001-9001 collides with a/service.yml's 9000-9001"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, c.files)
			writeFiles(t, dir, map[string]string{"orchestra.yml": "env: {}\n"})
			out, code := fleetCLI(t, dir, "start")
			if code == 0 || !strings.Contains(out, c.want) {
				t.Errorf("start exited %d:\n%s\nwant %q", code, out, c.want)
			}
			if _, err := os.Stat(filepath.Join(dir, dataDir, upFile)); err == nil {
				t.Error("a bad folder started Orchestra")
			}
		})
	}
}

// checkLogsStream reads a's lines from the LOGS stream of the folder's
// Orchestra (its NATS address from its log, its password from the data
// directory).
func checkLogsStream(t *testing.T, dir string) {
	t.Helper()
	var natsURL string
	f, err := os.Open(filepath.Join(dir, dataDir, upLog))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var rec struct{ Msg, NATS string }
		if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "orchestra up" {
			natsURL = rec.NATS
		}
	}
	_, js := connect(t, &process{nats: natsURL, data: filepath.Join(dir, dataDir)})
	stream, err := js.Stream(context.Background(), "LOGS")
	if err != nil {
		t.Fatal(err)
	}
	msg, err := stream.GetLastMsgForSubject(context.Background(), "orchestra.log.local.a.0")
	if err != nil || !strings.HasPrefix(string(msg.Data), "a 0 ") || msg.Header.Get("Orchestra-Stream") != "stdout" {
		t.Errorf("LOGS: %v %+v", err, msg)
	}
}

// TestLocalFleetReapsAfterKill: orchestra up killed with SIGKILL takes its
// instances' main processes with it, but a child one forked lives on; the
// next start stops it.
func TestLocalFleetReapsAfterKill(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"orchestra.yml": "env: {}\n",
		"b/service.yml": "run: 'sleep 300 & echo \"b child $!\"; while :; do sleep 0.1; done'\n",
	})
	var childPID int
	t.Cleanup(func() {
		if childPID > 0 && live(childPID) {
			_ = syscall.Kill(childPID, syscall.SIGKILL)
		}
		var st upState
		if b, err := os.ReadFile(filepath.Join(dir, dataDir, upFile)); err == nil && json.Unmarshal(b, &st) == nil && live(st.PID) {
			_ = syscall.Kill(st.PID, syscall.SIGKILL)
		}
	})
	if out, code := fleetCLI(t, dir, "start"); code != 0 {
		t.Fatalf("start: %s", out)
	}
	eventually(t, "b's child in its log", func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, dataDir, logsDir, "b.0.log"))
		_, rest, ok := strings.Cut(string(b), "b child ")
		if ok {
			childPID, _ = strconv.Atoi(strings.TrimSpace(strings.SplitN(rest, "\n", 2)[0]))
		}
		return childPID > 0
	})
	var st upState
	b, _ := os.ReadFile(filepath.Join(dir, dataDir, upFile))
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, "orchestra up gone", func() bool { return !live(st.PID) })
	time.Sleep(200 * time.Millisecond)
	if !live(childPID) {
		t.Skip("the child died with orchestra up here: nothing to reap")
	}
	if out, code := fleetCLI(t, dir, "start"); code != 0 {
		t.Fatalf("start again: %s", out)
	}
	if live(childPID) {
		t.Errorf("b's child (pid %d) from before the kill still runs after the next start", childPID)
	}
	if out, code := fleetCLI(t, dir, "down"); code != 0 {
		t.Fatalf("down: %s", out)
	}
}
