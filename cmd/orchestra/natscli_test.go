package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
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
	// RESULTS as the NATS CLI replays it to its end (-T) and as the API's
	// stream replays it: the same results, in the same order.
	resp, err := http.Get(p.http + "/v1/stream?follow=false&since=24h")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("GET /v1/stream without a token: %d", resp.StatusCode)
	}
	req, _ := http.NewRequestWithContext(ctx, "GET", p.http+"/v1/stream?follow=false&since=24h", nil)
	req.Header.Set("Authorization", "Bearer "+adminToken(t, data))
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	var fromAPI []string
	for line := range strings.SplitSeq(string(body), "\n") {
		if data, ok := strings.CutPrefix(line, "data: "); ok {
			var ev struct {
				Result json.RawMessage `json:"result"`
			}
			if err := json.Unmarshal([]byte(data), &ev); err != nil {
				t.Fatal(err)
			}
			fromAPI = append(fromAPI, canonical(t, ev.Result))
		}
	}
	if len(fromAPI) == 0 {
		t.Fatalf("GET /v1/stream gave no results:\n%s", body)
	}
	out, err = nats("sub", "--stream", "RESULTS", "--all", "-T", "--raw")
	if err != nil {
		t.Fatal(err)
	}
	var fromCLI []string
	for line := range strings.SplitSeq(strings.TrimRight(out, "\n"), "\n") {
		fromCLI = append(fromCLI, canonical(t, []byte(line)))
	}
	if len(fromCLI) < len(fromAPI) || strings.Join(fromCLI[:len(fromAPI)], "\n") != strings.Join(fromAPI, "\n") {
		t.Fatalf("nats sub --stream RESULTS --all -T printed:\n%s\nthe API's stream:\n%s", strings.Join(fromCLI, "\n"), strings.Join(fromAPI, "\n"))
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

// canonical is a JSON document with its keys sorted.
func canonical(t *testing.T, doc []byte) string {
	t.Helper()
	var v any
	if err := json.Unmarshal(doc, &v); err != nil {
		t.Fatalf("%v: %s", err, doc)
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
