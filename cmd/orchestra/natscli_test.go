package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/orchestra-fleet/orchestra/infra/natsauth"
)

// natsCLI finds the official NATS CLI, which .ci/run installs (go install
// github.com/nats-io/natscli/nats@v0.5.1).
func natsCLI(t *testing.T) string {
	t.Helper()
	if path, err := exec.LookPath("nats"); err == nil {
		return path
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		path := filepath.Join(strings.TrimSpace(string(out)), "bin", "nats")
		if _, err := os.Stat(path); err == nil {
			return path
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("the NATS CLI is not installed; .ci/run installs it")
	}
	t.Skip("the NATS CLI is not installed (go install github.com/nats-io/natscli/nats@v0.5.1)")
	return ""
}

// The README's NATS CLI commands work against orchestra up, with the user
// and password of its data directory: replaying EVENTS from a sequence
// yields, in order, exactly the events the event store reads from there.
func TestNATSCLIReplaysEvents(t *testing.T) {
	cli := natsCLI(t)
	dir := t.TempDir()
	data := filepath.Join(dir, ".orchestra")
	example, err := filepath.Abs("../../examples/hosting.yml")
	if err != nil {
		t.Fatal(err)
	}
	p := startUp(t, "--data", data, "--nats-listen", "127.0.0.1:0")
	p.waitReady(t)
	if out, errOut, code := p.cli(t, dir, "apply", "--wait", "0s", "-f", example); code != 0 {
		t.Fatalf("apply exited %d: %s%s", code, out, errOut)
	}
	store, _ := connect(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const from = 5
	var want []string
	for e, err := range store.Read(ctx, from) {
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, string(e.Payload))
	}
	if len(want) < 5 {
		t.Fatalf("only %d events from %d", len(want), from)
	}
	password, err := os.ReadFile(filepath.Join(data, natsauth.PasswordFile))
	if err != nil {
		t.Fatal(err)
	}
	nats := func(args ...string) (string, error) {
		args = append([]string{"-s", p.nats, "--user", natsauth.User, "--password", strings.TrimSpace(string(password))}, args...)
		cmd := exec.CommandContext(ctx, cli, args...)
		cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_CONFIG_HOME="+dir) // no saved contexts
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		if err != nil {
			return stdout.String(), &cliError{err, stderr.String()}
		}
		return stdout.String(), nil
	}
	out, err := nats("sub", "orchestra.evt.>", "--stream", "EVENTS", "--start-sequence", strconv.Itoa(from),
		"--count", strconv.Itoa(len(want)), "--raw")
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("nats sub from sequence %d printed:\n%s\nwant:\n%s", from, out, strings.Join(want, "\n"))
	}
	if out, err := nats("stream", "info", "EVENTS"); err != nil || !strings.Contains(out, "Messages: "+strconv.Itoa(from-1+len(want))) {
		t.Fatalf("nats stream info EVENTS (%v):\n%s", err, out)
	}
	// Without the password the server refuses the CLI.
	cmd := exec.CommandContext(ctx, cli, "-s", p.nats, "stream", "info", "EVENTS")
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_CONFIG_HOME="+dir)
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("the NATS CLI without credentials was let in:\n%s", out)
	}
	p.stop(t, "http", "core", "nats-server")
}

type cliError struct {
	err    error
	stderr string
}

func (e *cliError) Error() string { return e.err.Error() + ": " + e.stderr }
