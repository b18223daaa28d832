package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestReadSideCLI: orchestra scripts, units show and logs, against a real
// orchestra up running scripts on two local servers.
func TestReadSideCLI(t *testing.T) {
	dir := t.TempDir()
	p := startUp(t, "--data", filepath.Join(dir, ".orchestra"), "--nats-listen", "127.0.0.1:0")
	p.waitReady(t)
	apply := func(doc string) map[string]any {
		t.Helper()
		out, errOut, _ := p.applyDoc(t, dir, doc, "-o", "json")
		var res map[string]any
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("apply: %v\n%s%s", err, out, errOut)
		}
		return res
	}
	job := func(name, server string, code int) string {
		return fmt.Sprintf("---\nkind: Resource\ntype: job\nname: %s\nattrs: {code: %d, server: %s}\n", name, code, server)
	}
	model := `kind: Server
name: box1
address: 127.0.0.1
method: local
---
kind: Server
name: box2
address: 127.0.0.1
method: local
---
kind: Backend
name: chk
type: job
actions:
  save: |
    printf 'first line of %s\nsecond line of %s\n' {{ .name }} {{ .name }}
    exit {{ .attrs.code }}
---
kind: Route
backend: chk
server: box1
match: resource.attrs.server == "box1"
---
kind: Route
backend: chk
server: box2
match: resource.attrs.server == "box2"
`
	apply(model + job("a1", "box1", 0) + job("a2", "box2", 0))
	failed := apply(job("b1", "box1", 3) + job("d1", "nowhere", 0))
	unit, _ := failed["unit"].(string)
	if unit == "" {
		t.Fatalf("the apply answered no unit: %v", failed)
	}

	// orchestra scripts, filtered.
	list := func(args ...string) []map[string]any {
		t.Helper()
		out, errOut, code := p.cli(t, dir, append([]string{"scripts", "-o", "json"}, args...)...)
		var items []map[string]any
		if err := json.Unmarshal([]byte(out), &items); code != 0 || err != nil {
			t.Fatalf("scripts %v exited %d (%v):\n%s%s", args, code, err, out, errOut)
		}
		return items
	}
	if all := list(); len(all) != 3 {
		t.Errorf("scripts lists %d, want 3: %v", len(all), all)
	}
	for _, s := range list("--server", "box1") {
		if s["server"] != "box1" {
			t.Errorf("--server box1 lists %v", s)
		}
	}
	if fails := list("--state", "failure"); len(fails) != 1 || fails[0]["server"] != "box1" || fails[0]["exit_code"] != 3.0 {
		t.Errorf("--state failure lists %v", fails)
	}
	if ofUnit := list("--unit", unit); len(ofUnit) != 1 {
		t.Errorf("--unit lists %v", ofUnit)
	}
	if byRes := list("--resource", "job/a2"); len(byRes) != 1 || byRes[0]["server"] != "box2" {
		t.Errorf("--resource job/a2 lists %v", byRes)
	}
	out, errOut, code := p.cli(t, dir, "scripts", "--server", "box1")
	if code != 0 || !regexp.MustCompile(`(?m)^ID\s+SERVER\s+BACKEND\s+STATE`).MatchString(out) ||
		!regexp.MustCompile(`box1\s+chk\s+FAILURE\s+3\s+1\s`).MatchString(out) {
		t.Errorf("scripts as a table exited %d:\n%s%s", code, out, errOut)
	}
	if _, errOut, code := p.cli(t, dir, "scripts", "--state", "DONE"); code != 1 || !strings.Contains(errOut, "state: ") {
		t.Errorf("--state DONE exited %d: %s", code, errOut)
	}

	// orchestra units show: the failure and the dropped operation.
	out, errOut, code = p.cli(t, dir, "units", "show", unit)
	for _, want := range []string{"scripts     0 queued, 0 running, 0 succeeded, 1 failed", "dropped     save job/d1 (chk)"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("units show exited %d, without %q:\n%s%s", code, want, out, errOut)
		}
	}

	// orchestra status: both servers reached, box1's last script failed.
	out, errOut, code = p.cli(t, dir, "status")
	if code != 0 || !regexp.MustCompile(`(?m)^box1\s+true\s+FAILURE\s`).MatchString(out) || !regexp.MustCompile(`(?m)^box2\s+true\s+SUCCESS\s`).MatchString(out) {
		t.Errorf("status exited %d:\n%s%s", code, out, errOut)
	}
	var statuses []map[string]any
	if out, _, _ := p.cli(t, dir, "status", "-o", "json"); json.Unmarshal([]byte(out), &statuses) != nil || len(statuses) != 2 {
		t.Errorf("status -o json:\n%s", out)
	}
	// orchestra history: the failed save of b1, the dropped save of d1.
	out, errOut, code = p.cli(t, dir, "history", "job/b1")
	if code != 0 || !regexp.MustCompile(`save\s+chk\s+box1\s+FAILURE\s+[0-9a-f-]{36}`).MatchString(out) {
		t.Errorf("history job/b1 exited %d:\n%s%s", code, out, errOut)
	}
	out, errOut, code = p.cli(t, dir, "history", "job/d1")
	if code != 0 || !regexp.MustCompile(`save\s+chk\s+DROPPED\s+no active route of backend chk`).MatchString(out) {
		t.Errorf("history job/d1 exited %d:\n%s%s", code, out, errOut)
	}
	if _, errOut, code := p.cli(t, dir, "history", "job/none"); code != 1 || !strings.Contains(errOut, "no operation on job/none") {
		t.Errorf("history of a resource without one exited %d: %s", code, errOut)
	}

	// orchestra logs: every line once, prefixed, plain when not a terminal.
	out, errOut, code = p.cli(t, dir, "logs", "--since", "1h")
	for _, want := range []string{"box1 chk | first line of a1\n", "box2 chk | second line of a2\n", "box1 chk | first line of b1\n"} {
		if code != 0 || strings.Count(out, want) != 1 {
			t.Errorf("logs exited %d, without one %q:\n%s%s", code, want, out, errOut)
		}
	}
	if !regexp.MustCompile(`box1 chk \| ── script \S+ FAILURE, exit 3 in `).MatchString(out) || strings.Contains(out, "\x1b[") {
		t.Errorf("logs:\n%s", out)
	}

	// orchestra logs -f --server box2: what ran, then what comes, only box2.
	cmd := exec.Command(binary, "logs", "-f", "--server", "box2")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "ORCHESTRA_URL="+p.http, "ORCHESTRA_TOKEN=")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var seen []string
	waitLine := func(want string) {
		t.Helper()
		for {
			select {
			case l := <-lines:
				seen = append(seen, l)
				if l == want {
					return
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("logs -f did not print %q; it printed:\n%s", want, strings.Join(seen, "\n"))
			}
		}
	}
	waitLine("box2 chk | second line of a2")
	apply(job("f1", "box2", 0) + job("f2", "box1", 0))
	waitLine("box2 chk | second line of f1")
	for _, l := range seen {
		if !strings.HasPrefix(l, "box2 chk | ") {
			t.Errorf("logs -f --server box2 printed %q", l)
		}
	}

	// orchestra replay: both read models rebuilt from sequence 1 say the
	// same as the copies built live, and the old files are gone.
	before := map[string]string{}
	dump := func(args ...string) string {
		t.Helper()
		out, errOut, code := p.cli(t, dir, args...)
		if code != 0 {
			t.Fatalf("%v exited %d: %s", args, code, errOut)
		}
		return out
	}
	views := [][]string{{"scripts", "-o", "json", "--limit", "1000"}, {"get", "resources", "-o", "json"}, {"get", "servers", "-o", "json"}, {"units", "show", unit, "-o", "json"}}
	for _, v := range views {
		before[strings.Join(v, " ")] = dump(v...)
	}
	out, errOut, code = p.cli(t, dir, "replay")
	if code != 0 || !regexp.MustCompile(`(?m)^model: rebuilt to sequence \d+`).MatchString(out) || !regexp.MustCompile(`(?m)^results: rebuilt to sequence \d+`).MatchString(out) ||
		!strings.Contains(errOut, "replay results: 100%") {
		t.Fatalf("replay exited %d:\n%s%s", code, out, errOut)
	}
	for _, v := range views {
		if got := dump(v...); got != before[strings.Join(v, " ")] {
			t.Errorf("%v after the replay:\n%s\nbefore:\n%s", v, got, before[strings.Join(v, " ")])
		}
	}
	files, err := filepath.Glob(filepath.Join(dir, ".orchestra", "read", "*.db"))
	if err != nil || len(files) != 2 || slices.ContainsFunc(files, func(f string) bool { return strings.HasSuffix(f, "/model.db") || strings.HasSuffix(f, "/results.db") }) {
		t.Errorf("read model files after the replay: %v", files)
	}
	if _, errOut, code := p.cli(t, dir, "replay", "--projection", "planner"); code != 1 || !strings.Contains(errOut, "projection") {
		t.Errorf("replay --projection planner exited %d: %s", code, errOut)
	}
	p.stop(t, "http", "core", "nats-server")
}
