package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/orchestra-fleet/orchestra/infra/notify"
	"github.com/orchestra-fleet/orchestra/infra/smtptest"
)

// hook is a webhook receiver on loopback that keeps what it was sent.
type hook struct {
	mu    sync.Mutex
	posts []hookPost
}

type hookPost struct {
	path, event, signature, timestamp string
	body                              []byte
}

func (h *hook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	h.mu.Lock()
	h.posts = append(h.posts, hookPost{r.URL.Path, r.Header.Get(notify.HeaderEvent), r.Header.Get(notify.HeaderSignature), r.Header.Get(notify.HeaderTimestamp), body})
	h.mu.Unlock()
}

// wait returns the posts to path of event, once there are n.
func (h *hook) wait(t *testing.T, path, event string, n int) []hookPost {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		var got []hookPost
		h.mu.Lock()
		for _, p := range h.posts {
			if p.path == path && p.event == event {
				got = append(got, p)
			}
		}
		h.mu.Unlock()
		if len(got) >= n {
			return got
		}
	}
	t.Fatalf("no %d %s posts to %s in 30 s", n, event, path)
	return nil
}

// signed checks p's signature is the HMAC-SHA256 of its timestamp, a dot
// and its body, with key.
func signed(t *testing.T, p hookPost, key string) {
	t.Helper()
	m := hmac.New(sha256.New, []byte(key))
	m.Write([]byte(p.timestamp + "."))
	m.Write(p.body)
	if want := "sha256=" + hex.EncodeToString(m.Sum(nil)); p.signature != want {
		t.Errorf("post to %s signed %q, want %q", p.path, p.signature, want)
	}
}

// TestSiteNotifications: a run's end reaches the site's webhook (signed
// with the site's secret), the global webhook (signed with the global
// one) and both email addresses through a real SMTP session; a model
// script that fails reaches the global targets with its stderr.
func TestSiteNotifications(t *testing.T) {
	dir := t.TempDir()
	receiver := &hook{}
	srv := httptest.NewServer(receiver)
	t.Cleanup(srv.Close)
	mail := smtptest.Start(t)
	secret := filepath.Join(dir, "global.key")
	if err := os.WriteFile(secret, []byte("global key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startUp(t, "--data", filepath.Join(dir, ".orchestra"), "--nats-listen", "127.0.0.1:0",
		"--notify-webhook", srv.URL+"/global", "--notify-webhook-secret-file", secret,
		"--notify-email", "ops@example.com", "--smtp", mail.Addr())
	p.waitReady(t)
	doc := siteServers(1) + fmt.Sprintf(`kind: Site
name: told
notify:
  - {webhook: %s/site, secret: "site key"}
  - {email: owner@example.com}
services:
  - {name: a, rank: 1, servers: [site-s1], start: "true"}
---
kind: Backend
name: failing
type: job
actions:
  save: |
    echo "it broke" >&2
    exit 4
---
kind: Route
backend: failing
server: site-s1
`, srv.URL)
	if out, errOut, code := p.applyDoc(t, dir, doc); code != 0 {
		t.Fatalf("apply exited %d: %s%s", code, out, errOut)
	}
	v, code, _ := p.siteRun(t, dir, "start", "told")
	if code != 0 {
		t.Fatalf("start exited %d: %s", code, v.State)
	}
	for _, c := range []struct{ path, key string }{{"/site", "site key"}, {"/global", "global key"}} {
		posts := receiver.wait(t, c.path, notify.EventRunFinished, 1)
		signed(t, posts[0], c.key)
		var body struct {
			Event string
			Run   struct{ Run, Site, State string }
		}
		if err := json.Unmarshal(posts[0].body, &body); err != nil || body.Run.Run != v.Run.String() || body.Run.State != "SUCCESS" || body.Run.Site != "told" {
			t.Errorf("run.finished to %s: %v %s", c.path, err, posts[0].body)
		}
	}
	for _, addr := range []string{"owner@example.com", "ops@example.com"} {
		m := waitMail(t, mail, addr, "[site:told] start - SUCCESS")
		if !strings.Contains(m.Body, v.Run.String()) {
			t.Errorf("the mail to %s does not name the run:\n%s", addr, m)
		}
	}

	// A model script that fails: the global targets hear of it.
	if out, errOut, code := p.applyDoc(t, dir, "kind: Resource\ntype: job\nname: j1\nattrs: {}\n"); code == 0 {
		t.Fatalf("an apply whose script fails exited 0: %s%s", out, errOut)
	}
	posts := receiver.wait(t, "/global", notify.EventScriptFailed, 1)
	signed(t, posts[0], "global key")
	if !strings.Contains(string(posts[0].body), "it broke") {
		t.Errorf("script.failed lacks the stderr: %s", posts[0].body)
	}
	m := waitMail(t, mail, "ops@example.com", "[orchestra] failing FAILURE on site-s1")
	if !strings.Contains(m.Body, "it broke") || !strings.Contains(m.Body, "[EXIT CODE] 4") {
		t.Errorf("the failure report lacks stderr or the exit code:\n%s", m)
	}
	if got := receiver.wait(t, "/site", notify.EventRunFinished, 1); len(got) != 1 {
		t.Errorf("the site's webhook got %d posts, want the one run", len(got))
	}
}

// waitMail waits for the message to addr with subject.
func waitMail(t *testing.T, s *smtptest.Server, addr, subject string) smtptest.Mail {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		for _, m := range s.Messages() {
			if len(m.To) == 1 && m.To[0] == addr {
				if pm := smtptest.Parse(t, m); pm.Subject == subject {
					return pm
				}
			}
		}
	}
	t.Fatalf("no mail to %s with subject %q in 30 s", addr, subject)
	return smtptest.Mail{}
}
