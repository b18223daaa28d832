package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/services"
)

// cli runs the orchestra client in dir against p, as an operator would:
// ORCHESTRA_URL set, the token taken from ./.orchestra/admin.token.
func (p *process) cli(t *testing.T, dir string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "ORCHESTRA_URL="+p.http, "ORCHESTRA_TOKEN=")
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), code
}

// The README's walkthrough: up in a folder, apply the example, get the
// resources back as JSON; after a restart they are still there.
func TestApplyExampleSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	example, err := filepath.Abs("../../examples/hosting.yml")
	if err != nil {
		t.Fatal(err)
	}
	start := func() *process {
		p := startUp(t, "--data", filepath.Join(dir, ".orchestra"), "--nats-listen", "127.0.0.1:0")
		p.waitReady(t)
		return p
	}
	p := start()
	if !p.logged(filepath.Join(dir, ".orchestra", "admin.token")) {
		t.Errorf("the startup log does not say where the admin token is:\n%s", p.logs)
	}
	out, errOut, code := p.cli(t, dir, "apply", "-f", example)
	if code != 0 {
		t.Fatalf("apply exited %d: %s%s", code, out, errOut)
	}
	if !strings.Contains(out, "Resource mailbox/alice created") || !strings.Contains(out, "committed at sequence") {
		t.Fatalf("apply printed:\n%s", out)
	}
	check := func(p *process) {
		t.Helper()
		out, errOut, code := p.cli(t, dir, "get", "resources", "-o", "json")
		if code != 0 {
			t.Fatalf("get exited %d: %s", code, errOut)
		}
		var docs []map[string]any
		if err := json.Unmarshal([]byte(out), &docs); err != nil {
			t.Fatalf("get -o json is not a JSON array: %v\n%s", err, out)
		}
		names := map[string]bool{}
		for _, d := range docs {
			names[d["type"].(string)+"/"+d["name"].(string)] = true
		}
		for _, want := range []string{"website/shop", "website/blog", "mailbox/alice"} {
			if !names[want] {
				t.Errorf("get resources lacks %s: %s", want, out)
			}
		}
		if strings.Contains(out, "correct horse") || !strings.Contains(out, `"****"`) {
			t.Errorf("the secret is not masked in the CLI output:\n%s", out)
		}
	}
	check(p)
	// A dry run shows what a change would run where, writes nothing, and
	// masks secrets.
	change := filepath.Join(dir, "change.yml")
	if err := os.WriteFile(change, []byte("kind: Resource\ntype: mailbox\nname: bob\nattrs: {quota_mb: 10}\nsecrets: {password: hunter2-plain}\n"+
		"---\nkind: Resource\ntype: website\nname: news\nattrs: {domain: news.example.com, tier: gold}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = p.cli(t, dir, "plan", "-f", change)
	if code != 0 || !strings.Contains(out, "# mailbox on mail1\n") || !strings.Contains(out, "mail/'bob'") ||
		strings.Contains(out, "hunter2-plain") || !strings.Contains(out, "ORC_SECRET_password='****'") ||
		!strings.Contains(out, "# vhost on web1\n") || !strings.Contains(out, "# vhost on web2\n") || !strings.Contains(out, `echo "reload web server on web1"`) {
		t.Fatalf("plan exited %d:\n%s%s", code, out, errOut)
	}
	if _, errOut, code := p.cli(t, dir, "get", "resource", "mailbox/bob"); code != 1 || !strings.Contains(errOut, "does not exist") {
		t.Fatalf("the dry run wrote the resource (exit %d): %s", code, errOut)
	}
	// Applying the same file again changes nothing.
	if out, _, code := p.cli(t, dir, "apply", "-f", example); code != 0 || !strings.Contains(out, "nothing changed") {
		t.Fatalf("second apply (exit %d):\n%s", code, out)
	}
	p.stop(t, "http", "core", "nats-server")
	p = start()
	check(p)

	// Errors are one line, name the document and the field, and exit 1.
	bad := filepath.Join(dir, "bad.yml")
	if err := os.WriteFile(bad, []byte("kind: Route\nbackend: vhost\nserver: web1\nmatch: 'resource.atrs == 1'\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, errOut, code = p.cli(t, dir, "apply", "-f", bad)
	if code != 1 || strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.Contains(errOut, "bad.yml:1: document 1: match:") {
		t.Fatalf("bad apply exited %d with:\n%s", code, errOut)
	}
	_, errOut, code = p.cli(t, dir, "get", "server", "nope")
	if code != 1 || !strings.Contains(errOut, `"nope" does not exist`) {
		t.Fatalf("get of a missing server exited %d with: %s", code, errOut)
	}
	if _, _, code = p.cli(t, dir, "get", "gadgets"); code != 2 {
		t.Fatalf("get of an unknown kind exited %d, want 2", code)
	}
	p.stop(t, "http", "core", "nats-server")
}

// A change another process appends reaches this process through the log:
// a token issued elsewhere is accepted here without a restart.
func TestUpFollowsChangesOfOtherProcesses(t *testing.T) {
	dir := t.TempDir()
	p := startUp(t, "--data", dir, "--nats-listen", "127.0.0.1:0")
	p.waitReady(t)
	s, _ := connect(t, p)
	const tok = "orc_issued-by-another-process"
	sum := sha256.Sum256([]byte(tok))
	u, _ := services.NewUnit(events.Meta{Actor: "elsewhere"}, time.Now())
	agg := events.Aggregate{Type: events.AggToken, ID: "elsewhere"}
	u.Expect(agg, 0)
	if err := u.Add(agg, &events.TokenCreated{Name: "elsewhere", Role: services.RoleViewer, Hash: hex.EncodeToString(sum[:])}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(context.Background(), u); err != nil {
		t.Fatal(err)
	}
	p.token = tok
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body := p.get(t, "/v1/servers")
		if code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the token appended by another process is still refused: %d %s", code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.stop(t, "http", "core", "nats-server")
}
