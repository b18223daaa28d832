package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/infra/natsauth"
	"github.com/orchestra-fleet/orchestra/infra/sshdtest"
)

// localBox is the server box of stepModel on the local method.
const localBox = "address: 127.0.0.1\nmethod: local\n"

// stepModel is a fleet of server box (described by box) and one agent
// server, and a backend whose save logs its start and end to log,
// sleeping between.
func stepModel(log, box string) string {
	return fmt.Sprintf(`kind: Server
name: box
%[2]s---
kind: Server
name: agent1
address: 127.0.0.1
method: agent
---
kind: Backend
name: step
type: job
timeout: 60s
actions:
  save: |
    echo {{ .server.name }} {{ .name }} start >> %[1]s
    sleep {{ .attrs.sleep }}
    echo {{ .server.name }} {{ .name }} end >> %[1]s
---
kind: Route
backend: step
server: box
match: 'resource.attrs.where == "box"'
---
kind: Route
backend: step
server: agent1
match: 'resource.attrs.where == "agent1"'
`, log, box)
}

func job(name, where string, sleep float64) string {
	return fmt.Sprintf("kind: Resource\ntype: job\nname: %s\nattrs: {where: %s, sleep: %g}\n", name, where, sleep)
}

// applyText applies an apply document through the CLI, without waiting
// for its scripts.
func (p *process) applyText(t *testing.T, dir, doc string) {
	t.Helper()
	if out, errOut, code := p.applyDoc(t, dir, doc, "--wait", "0s"); code != 0 {
		t.Fatalf("apply exited %d: %s%s", code, out, errOut)
	}
}

// applyDoc writes doc to a file in dir and runs orchestra apply -f on it
// with args, as an operator would.
func (p *process) applyDoc(t *testing.T, dir, doc string, args ...string) (string, string, int) {
	t.Helper()
	f, err := os.CreateTemp(dir, "apply-*.yml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(doc); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p.cli(t, dir, append([]string{"apply", "-f", f.Name()}, args...)...)
}

// scriptResults reads every result RESULTS holds about a script.
func scriptResults(t *testing.T, js jetstream.JetStream, server string, id uuid.UUID) (started []events.ScriptStarted, finished []events.ScriptFinished) {
	t.Helper()
	subject, _ := events.ScriptSubject(server, id, ">")
	return readResults(t, js, subject)
}

// readResults reads the starts and ends of scripts RESULTS holds under
// subject (a filter such as events.SubjectResults), in order.
func readResults(t testing.TB, js jetstream.JetStream, subject string) (started []events.ScriptStarted, finished []events.ScriptFinished) {
	t.Helper()
	streamMessages(t, js, events.StreamResults, subject, func(msg jetstream.Msg) {
		switch {
		case strings.HasSuffix(msg.Subject(), ".ScriptStarted"):
			var s events.ScriptStarted
			_ = json.Unmarshal(msg.Data(), &s)
			started = append(started, s)
		case strings.HasSuffix(msg.Subject(), ".ScriptFinished"):
			var f events.ScriptFinished
			_ = json.Unmarshal(msg.Data(), &f)
			finished = append(finished, f)
		}
	})
	return started, finished
}

// waitFinished waits for the final result of the script of the n-th plan
// of server.
func waitFinished(t *testing.T, js jetstream.JetStream, server string, n int) (events.PlanScript, events.ScriptFinished) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if plans := execPlans(t, js)[server]; len(plans) > n {
			s := plans[n].Scripts[0]
			if _, fin := scriptResults(t, js, server, s.ID); len(fin) > 0 {
				return s, fin[len(fin)-1]
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("plan %d of %s did not finish within 60s", n, server)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitFile waits until the file holds want.
func waitFile(t *testing.T, path, want string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if b, _ := os.ReadFile(path); strings.Contains(string(b), want) {
			return
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(path)
			t.Fatalf("%s does not say %q within 60s:\n%s", path, want, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The executor is killed with SIGKILL while a script sleeps. After the
// restart the script runs again as attempt 2, with one final state, and
// the server's next plan (queued behind it before the kill) runs after it.
//
// Over ssh the killed attempt's script is not killed with the executor (the
// connection just ends); the second attempt kills what is left of the first
// before it starts.
func TestKilledExecutorRunsTheScriptAgain(t *testing.T) {
	t.Run("local", func(t *testing.T) { killedExecutor(t, localBox) })
	t.Run("ssh", func(t *testing.T) {
		sshd := sshdtest.Start(t)
		host, port, _ := net.SplitHostPort(sshd.Addrs[0])
		box := fmt.Sprintf("address: %s\nport: %s\nuser: %s\nmethod: ssh\n", host, port, sshd.User)
		killedExecutor(t, box, "--ssh-key", sshd.ClientKeyFile, "--known-hosts", sshd.KnownHostsFile)
	})
}

func killedExecutor(t *testing.T, box string, flags ...string) {
	dir := t.TempDir()
	data := filepath.Join(dir, ".orchestra")
	log := filepath.Join(dir, "box.log")
	args := append([]string{"--data", data, "--nats-listen", "127.0.0.1:0", "--ack-wait", "2s"}, flags...)
	p := startUp(t, args...)
	p.waitReady(t)
	// Script a sleeps 6 s: over ssh its first attempt, left running, would
	// write its end after the second attempt began (about 2 s after the
	// kill) were it not killed then.
	p.applyText(t, dir, stepModel(log, box)+"---\n"+job("a", "box", 6))
	waitFile(t, log, "box a start")
	p.applyText(t, dir, job("b", "box", 0))
	_, js := connect(t, p)
	eventually := time.Now().Add(30 * time.Second)
	for len(execPlans(t, js)["box"]) < 2 && time.Now().Before(eventually) {
		time.Sleep(20 * time.Millisecond)
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.exited

	// Nothing more is written until the restart.
	time.Sleep(500 * time.Millisecond)
	before, _ := os.ReadFile(log)
	if string(before) != "box a start\n" {
		t.Fatalf("after the kill the server log is %q", before)
	}
	p2 := startUp(t, args...)
	p2.waitReady(t)
	_, js = connect(t, p2)
	a, fin := waitFinished(t, js, "box", 0)
	if fin.State != events.StateSuccess || fin.Attempt != 2 {
		t.Fatalf("script a after the restart: %+v", fin)
	}
	started, finished := scriptResults(t, js, "box", a.ID)
	if len(finished) != 1 || len(started) != 2 || started[0].Attempt != 1 || started[1].Attempt != 2 {
		t.Fatalf("script a: %d starts (%+v), %d final states; want attempts 1 and 2 started and one final state", len(started), started, len(finished))
	}
	_, fin = waitFinished(t, js, "box", 1)
	if fin.State != events.StateSuccess || fin.Attempt != 1 {
		t.Fatalf("script b: %+v", fin)
	}
	got, _ := os.ReadFile(log)
	if want := "box a start\nbox a start\nbox a end\nbox b start\nbox b end\n"; string(got) != want {
		t.Fatalf("the server ran, in order:\n%s\nwant:\n%s", got, want)
	}
	p2.stop(t, "http", "core", "nats-server")
}

// An agent with credentials scoped to its server runs the server's plans,
// and with --sync-on-start asks for (and runs) a full sync of it.
func TestAgentRunsItsServersPlans(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, ".orchestra")
	log := filepath.Join(dir, "agent.log")
	p := startUp(t, "--data", data, "--nats-listen", "127.0.0.1:0")
	p.waitReady(t)
	p.applyText(t, dir, stepModel(log, localBox)+"---\n"+job("a", "agent1", 0))

	creds := filepath.Join(dir, "agent1.creds")
	if out, errOut, code := p.cli(t, dir, "agent", "credentials", "agent1", "--data", data, "--out", creds); code != 0 {
		t.Fatalf("agent credentials exited %d: %s%s", code, out, errOut)
	}
	if info, err := os.Stat(creds); err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("credentials file: %v %v", info, err)
	}
	if _, errOut, code := p.cli(t, dir, "agent", "credentials", "agent1", "--data", filepath.Join(dir, "nowhere")); code != 1 || !strings.Contains(errOut, "orchestra up --data") {
		t.Fatalf("credentials without a data directory exited %d: %s", code, errOut)
	}

	agent := exec.Command(binary, "agent", "--server", "agent1", "--nats", p.nats, "--creds", creds, "--sync-on-start")
	var agentLog strings.Builder
	agent.Stderr = &agentLog
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- agent.Wait() }()
	t.Cleanup(func() {
		if agent.ProcessState == nil {
			_ = agent.Process.Kill()
			<-exited
		}
	})

	_, js := connect(t, p)
	if _, fin := waitFinished(t, js, "agent1", 0); fin.State != events.StateSuccess {
		t.Fatalf("the agent's first plan: %+v", fin)
	}
	sync, fin := waitFinished(t, js, "agent1", 1)
	if fin.State != events.StateSuccess || len(sync.Operations) != 1 || sync.Operations[0].Name != "a" {
		t.Fatalf("the sync plan %+v ended %+v", sync, fin)
	}
	started, _ := scriptResults(t, js, "agent1", sync.ID)
	if len(started) != 1 || !strings.HasPrefix(started[0].Executor, "local on ") {
		t.Fatalf("the sync started as %+v", started)
	}
	waitFile(t, log, "agent1 a start\nagent1 a end\nagent1 a start\nagent1 a end\n")

	// A notification makes it ask for another sync (at most one a second).
	time.Sleep(time.Second)
	if err := js.Conn().Publish(natsauth.AgentSubject("agent1", "notify"), nil); err != nil {
		t.Fatal(err)
	}
	if again, fin := waitFinished(t, js, "agent1", 2); fin.State != events.StateSuccess || again.Operations[0].Name != "a" {
		t.Fatalf("the sync after a notification %+v ended %+v", again, fin)
	}

	if err := agent.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("the agent exited with %v:\n%s", err, agentLog.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the agent did not stop on SIGTERM")
	}
	p.stop(t, "http", "core", "nats-server")
}

// FIFO end to end: 1,000 units of work for 20 servers from 10 concurrent
// writers through the API, the planner and the executor. On every server
// the scripts ran in commit order (what they appended to a file on the
// server side, against the EVENTS sequence of each unit), and every plan
// ran once.
func TestFIFOEndToEnd(t *testing.T) {
	const servers, units, writers = 20, 1000, 10
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		t.Fatal(err)
	}
	p := startUp(t, "--data", filepath.Join(dir, ".orchestra"), "--nats-listen", "127.0.0.1:0")
	p.waitReady(t)
	token := adminToken(t, filepath.Join(dir, ".orchestra"))
	fixtures := []map[string]any{{"kind": "Backend", "name": "mark", "type": "unit",
		"actions": map[string]string{"save": "echo {{ .name }} >> " + out + "/{{ .server.name }}"}}}
	for i := range servers {
		name := fmt.Sprintf("s%02d", i)
		fixtures = append(fixtures,
			map[string]any{"kind": "Server", "name": name, "method": "local", "address": "127.0.0.1"},
			map[string]any{"kind": "Route", "backend": "mark", "server": name, "match": fmt.Sprintf("resource.attrs.server == %q", name)})
	}
	if ok, err := p.post(token, fixtures...); err != nil || !ok {
		t.Fatalf("fixtures: %v %v", ok, err)
	}
	errs := make(chan error, writers)
	for w := range writers {
		go func() {
			for i := range units / writers {
				name := fmt.Sprintf("u%d-%d", w, i)
				server := fmt.Sprintf("s%02d", (w*7+i*3)%servers)
				ok, err := p.post(token, map[string]any{"kind": "Resource", "type": "unit", "name": name, "attrs": map[string]any{"server": server}})
				if err == nil && !ok {
					err = fmt.Errorf("apply of %s refused", name)
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range writers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	ran := func() map[string][]string {
		m := map[string][]string{}
		for i := range servers {
			name := fmt.Sprintf("s%02d", i)
			b, _ := os.ReadFile(filepath.Join(out, name))
			m[name] = strings.Fields(string(b))
		}
		return m
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		total := 0
		for _, names := range ran() {
			total += len(names)
		}
		if total >= units {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d scripts ran within 2 minutes", total, units)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // a plan run twice would show now
	_, js := connect(t, p)
	plans := execPlans(t, js)
	total := 0
	for server, names := range ran() {
		var committed []string
		var last uint64
		for _, pl := range plans[server] {
			if pl.Sequence <= last {
				t.Fatalf("%s: plans queued out of commit order (%d after %d)", server, pl.Sequence, last)
			}
			last = pl.Sequence
			committed = append(committed, pl.Scripts[0].Operations[0].Name)
		}
		if strings.Join(names, ",") != strings.Join(committed, ",") {
			t.Fatalf("%s ran %d scripts in an order other than the %d committed:\nran       %v\ncommitted %v", server, len(names), len(committed), names, committed)
		}
		total += len(names)
	}
	if total != units {
		t.Fatalf("%d scripts ran, want %d", total, units)
	}
	p.stop(t, "http", "core", "nats-server")
}

// apply waits for the scripts of synchronous routes: it prints how each
// ended and exits 1 when one failed; async routes' scripts are listed as
// queued; a script still running when the wait ends is said so.
func TestApplyWaitsForSyncScripts(t *testing.T) {
	dir := t.TempDir()
	p := startUp(t, "--data", filepath.Join(dir, ".orchestra"), "--nats-listen", "127.0.0.1:0")
	p.waitReady(t)
	model := `kind: Server
name: box
address: 127.0.0.1
method: local
---
kind: Backend
name: chk
type: job
actions:
  save: |
    echo checking {{ .name }}
    sleep {{ .attrs.sleep }}
    exit {{ .attrs.code }}
---
kind: Backend
name: bg
type: job
actions:
  save: echo later
---
kind: Route
backend: chk
server: box
---
kind: Route
backend: bg
server: box
async: true
`
	apply := func(doc string, args ...string) (string, string, int) {
		t.Helper()
		return p.applyDoc(t, dir, doc, args...)
	}
	res := func(name string, code int, sleep float64) string {
		return fmt.Sprintf("kind: Resource\ntype: job\nname: %s\nattrs: {code: %d, sleep: %g}\n", name, code, sleep)
	}

	out, errOut, code := apply(model + "---\n" + res("good", 0, 0))
	if code != 0 || !regexp.MustCompile(`box\s+chk\s+SUCCESS\s`).MatchString(out) || !regexp.MustCompile(`box\s+bg\s+queued \(async route\)`).MatchString(out) {
		t.Fatalf("a passing apply exited %d:\n%s%s", code, out, errOut)
	}
	out, errOut, code = apply(res("bad", 3, 0))
	if code != 1 || !regexp.MustCompile(`box\s+chk\s+FAILURE \(exit 3\)`).MatchString(out) ||
		!strings.Contains(errOut, "1 script(s) did not succeed: chk on box FAILURE") {
		t.Fatalf("a failing apply exited %d:\n%s%s", code, out, errOut)
	}
	// Its log: state, exit code, the script and its output.
	m := regexp.MustCompile(`FAILURE \(exit 3\)\s+([0-9a-f-]{36})`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no script id in:\n%s", out)
	}
	show, errOut, code := p.cli(t, dir, "scripts", "show", m[1])
	for _, want := range []string{"state     FAILURE (exit 3)", "attempt   1 by local on ", "operation save job/bad", "--- script\nset -e", "echo checking 'bad'", "--- stdout\nchecking bad\n"} {
		if code != 0 || !strings.Contains(show, want) {
			t.Fatalf("scripts show exited %d, without %q:\n%s%s", code, want, show, errOut)
		}
	}
	if _, errOut, code := p.cli(t, dir, "scripts", "show", "0192f1e0-6b1a-7c3e-9d2f-000000000000"); code != 1 || !strings.Contains(errOut, "does not exist") {
		t.Fatalf("scripts show of an unknown script exited %d: %s", code, errOut)
	}
	out, _, code = apply(res("bad2", 4, 0), "-o", "json")
	var doc struct {
		Scripts []struct {
			Backend  string `json:"backend"`
			State    string `json:"state"`
			ExitCode *int   `json:"exit_code"`
		} `json:"scripts"`
		Complete bool `json:"complete"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil || code != 1 || !doc.Complete || len(doc.Scripts) != 2 {
		t.Fatalf("-o json exited %d (%v):\n%s", code, err, out)
	}
	for _, s := range doc.Scripts {
		if s.Backend == "chk" && (s.State != "FAILURE" || s.ExitCode == nil || *s.ExitCode != 4) {
			t.Fatalf("-o json: %+v", s)
		}
	}
	out, errOut, code = apply(res("slow", 0, 5), "--wait", "1s")
	if code != 0 || !regexp.MustCompile(`box\s+chk\s+still running when the wait ended`).MatchString(out) {
		t.Fatalf("a wait cut short exited %d:\n%s%s", code, out, errOut)
	}
	out, errOut, code = apply(res("quick", 3, 0), "--wait", "0s")
	if code != 0 || strings.Contains(out, "chk") {
		t.Fatalf("--wait 0s exited %d:\n%s%s", code, out, errOut)
	}
	if _, errOut, code := apply(res("x", 0, 0), "--wait", "soon"); code != 1 || !strings.Contains(errOut, "wait") {
		t.Fatalf("--wait soon exited %d: %s", code, errOut)
	}
	p.stop(t, "http", "core", "nats-server")
}
