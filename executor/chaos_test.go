package executor_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/executor"
	"github.com/orchestra-fleet/orchestra/infra/sshdtest"
)

// TestChaosSSHServerGoneMidRun: the sshd of one server is killed while a
// script runs there. That script ends ERROR or TIMEOUT, so does the next
// while the server is gone, and the three other servers (another sshd)
// run their scripts all the while; once the server is back its next
// script succeeds.
func TestChaosSSHServerGoneMidRun(t *testing.T) {
	gone := sshdtest.Start(t)
	others := sshdtest.StartN(t, 3)
	m, err := executor.NewSSH(executor.SSHConfig{Host: "test", KeyFiles: []string{gone.ClientKeyFile, others.ClientKeyFile},
		KnownHosts: []string{gone.KnownHostsFile, others.KnownHostsFile}, ConnectTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	r := newRig(t, executor.Config{Methods: map[string]executor.Method{"ssh": m}})
	sr := &sshRig{rig: r, sshd: gone}
	r.save(sr.sshServer("web1", gone.Addrs[0]))
	names := []string{"o1", "o2", "o3"}
	for i, n := range names {
		s := sr.sshServer(n, others.Addrs[i])
		s.User = others.User
		r.save(s)
	}

	long := script("b", "sleep 60", "5m")
	r.send("web1", long)
	waitStarted(t, r, "web1", long)
	gone.Stop() // the server goes away mid-run

	var sent []events.PlanScript
	for range 5 {
		for _, n := range names {
			s := script("b", "echo ok", "1m")
			r.send(n, s)
			sent = append(sent, s)
		}
	}
	if fin := r.finished("web1", long.ID); fin.State != events.StateError && fin.State != events.StateTimeout {
		t.Errorf("the script cut off mid-run ended %s (%s), want ERROR or TIMEOUT", fin.State, fin.Reason)
	}
	down := script("b", "true", "1m")
	r.send("web1", down)
	if fin := r.finished("web1", down.ID); fin.State != events.StateTimeout && fin.State != events.StateError {
		t.Errorf("a script while the server is gone ended %s (%s)", fin.State, fin.Reason)
	}
	for i, s := range sent {
		if fin := r.finished(names[i%3], s.ID); fin.State != events.StateSuccess {
			t.Errorf("%s on %s ended %s (%s) while web1 was gone", s.ID, names[i%3], fin.State, fin.Reason)
		}
	}
	gone.Restart(t)
	back := script("b", "echo back", "1m")
	r.send("web1", back)
	if fin := r.finished("web1", back.ID); fin.State != events.StateSuccess {
		t.Errorf("once the server is back: %s (%s)", fin.State, fin.Reason)
	}
}

// waitStarted waits (bounded) until s has started on server.
func waitStarted(t *testing.T, r *rig, server string, s events.PlanScript) {
	t.Helper()
	subject, _ := events.ScriptSubject(server, s.ID, events.ScriptStarted{}.ResultType())
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		msg, err := r.env.JS.Conn().Request("$JS.API.DIRECT.GET."+events.StreamResults+"."+subject, nil, 5*time.Second)
		var st events.ScriptStarted
		if err == nil && msg.Header.Get("Status") == "" && json.Unmarshal(msg.Data, &st) == nil {
			return
		}
	}
	t.Fatalf("%s did not start on %s in 30 s", s.ID, server)
}
