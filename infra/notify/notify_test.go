package notify_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/infra/natstest"
	"github.com/orchestra-fleet/orchestra/infra/notify"
	"github.com/orchestra-fleet/orchestra/infra/smtptest"
	"github.com/orchestra-fleet/orchestra/projections"
)

// testTimeout bounds every wait of a test.
const testTimeout = 30 * time.Second

// Secrets of the webhooks, by path.
var hookSecrets = map[string]string{"/shop": "shop-secret", "/global": "global-secret"}

// hookServer is a webhook receiver that checks signatures and keeps
// every request.
type hookServer struct {
	*httptest.Server

	mu     sync.Mutex
	status map[string]int // by path; 204 when not set
	reqs   []hookRequest
}

type hookRequest struct {
	Path, Event, Delivery, ContentType string
	// SignatureOK: the signature is the body's HMAC with the path's
	// secret, or absent for a path without one.
	SignatureOK bool
	Body        []byte
}

func startHooks(t *testing.T) *hookServer {
	t.Helper()
	h := &hookServer{status: map[string]int{}}
	h.Server = httptest.NewServer(http.HandlerFunc(h.serve))
	t.Cleanup(h.Close)
	return h
}

func (h *hookServer) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	want := ""
	if secret := hookSecrets[r.URL.Path]; secret != "" {
		// Computed here, not with notify.Sign: the test checks the format.
		mac := hmac.New(sha256.New, []byte(secret))
		mac.Write([]byte(r.Header.Get(notify.HeaderTimestamp) + "."))
		mac.Write(body)
		want = "sha256=" + hex.EncodeToString(mac.Sum(nil))
		if ts, err := strconv.ParseInt(r.Header.Get(notify.HeaderTimestamp), 10, 64); err != nil || time.Since(time.Unix(ts, 0)).Abs() > time.Minute {
			want = "a fresh timestamp"
		}
	}
	got := r.Header.Get(notify.HeaderSignature)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.reqs = append(h.reqs, hookRequest{
		Path: r.URL.Path, Event: r.Header.Get(notify.HeaderEvent), Delivery: r.Header.Get(notify.HeaderDelivery),
		ContentType: r.Header.Get("Content-Type"), SignatureOK: hmac.Equal([]byte(got), []byte(want)), Body: body,
	})
	status := h.status[r.URL.Path]
	if status == 0 {
		status = http.StatusNoContent
	}
	w.WriteHeader(status)
}

func (h *hookServer) setStatus(path string, status int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.status[path] = status
}

func (h *hookServer) requests() []hookRequest {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]hookRequest(nil), h.reqs...)
}

// delivered lists the requests that carried delivery id.
func (h *hookServer) delivered(id string) []hookRequest {
	var out []hookRequest
	for _, r := range h.requests() {
		if r.Delivery == id {
			out = append(out, r)
		}
	}
	return out
}

// sites is a fixed SiteTargets.
type sites map[string][]notify.Target

func (s sites) SiteTargets(site string) ([]notify.Target, error) { return s[site], nil }

// scripts is a ScriptSource the test fills.
type scripts struct {
	mu   sync.Mutex
	logs map[uuid.UUID]projections.ScriptLog
}

func (s *scripts) set(l projections.ScriptLog) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.logs[l.ID] = l
}

func (s *scripts) Script(_ context.Context, id uuid.UUID) (projections.ScriptLog, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.logs[id]
	if !ok {
		return l, fmt.Errorf("script %s: %w", id, projections.ErrNotFound)
	}
	return l, nil
}

// rig is a notifier running on an embedded JetStream, with a webhook
// receiver and a mail server.
type rig struct {
	env       *natstest.Env
	reg       *events.Registry
	hooks     *hookServer
	mail      *smtptest.Server
	scripts   *scripts
	cfg       notify.Config
	abandoned chan events.NotificationAbandoned
}

// newRig starts a notifier. Site shop has a signed webhook (/shop) and
// ops@example.com; the global targets are a signed webhook (/global) and
// admin@example.com. tweak may change the configuration first.
func newRig(t *testing.T, tweak func(*rig)) *rig {
	t.Helper()
	reg, err := events.NewRegistry(events.Catalog()...)
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{
		env: natstest.Start(t), reg: reg, hooks: startHooks(t), mail: smtptest.Start(t),
		scripts: &scripts{logs: map[uuid.UUID]projections.ScriptLog{}}, abandoned: make(chan events.NotificationAbandoned, 16),
	}
	r.cfg = notify.Config{
		JetStream: r.env.JS,
		Registry:  reg,
		Global:    []notify.Target{{Webhook: r.hooks.URL + "/global", Secret: hookSecrets["/global"]}, {Email: "admin@example.com"}},
		SMTP:      r.mail.Addr(),
		Sites: sites{"shop": {
			{Webhook: r.hooks.URL + "/shop", Secret: hookSecrets["/shop"]},
			{Email: "ops@example.com"},
		}},
		Scripts: r.scripts,
		Record: func(_ context.Context, a events.NotificationAbandoned) error {
			r.abandoned <- a
			return nil
		},
		Log:             slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
		MaxRetries:      3,
		InitialInterval: 10 * time.Millisecond,
	}
	if tweak != nil {
		tweak(r)
	}
	n, err := notify.New(r.cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*testTimeout)
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(testTimeout):
			t.Error("Run did not return after its context ended")
		}
	})
	// The consumers deliver only what is published after they exist.
	for name, topic := range n.Topics() {
		waitFor(t, "consumer "+name, func() bool {
			_, err := r.env.JS.Consumer(ctx, topic.Stream, name)
			return err == nil
		})
	}
	return r
}

// waitFor polls cond until it holds, failing the test after testTimeout.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// publishRun stores run on EVENTS as the event store would, in a fresh
// envelope.
func (r *rig) publishRun(t *testing.T, run events.RunFinished) {
	t.Helper()
	e, err := events.New(events.Aggregate{Type: events.AggSiteRun, ID: run.Site}, &run, events.Meta{Actor: "test"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	e.Unit, e.UnitSize = e.ID, 1
	m, err := r.reg.Encode(e)
	if err != nil {
		t.Fatal(err)
	}
	r.publish(t, &nats.Msg{Subject: m.Subject, Header: m.Header, Data: m.Data})
}

// publishScript publishes the end of the first attempt of backend's
// script in unit on server, as an executor would.
func (r *rig) publishScript(t *testing.T, unit uuid.UUID, server, backend, state string) events.ScriptFinished {
	t.Helper()
	id := events.ScriptID(unit, server, backend)
	fin := events.ScriptFinished{
		ID: id, Unit: unit, Server: server, Backend: backend, Attempt: 1, State: state, ExitCode: 1,
		Started: time.Now().Add(-time.Second), Duration: time.Second, Time: time.Now(),
	}
	subject, err := events.ScriptSubject(server, id, fin.ResultType())
	if err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(fin)
	if err != nil {
		t.Fatal(err)
	}
	r.publish(t, &nats.Msg{Subject: subject, Data: data, Header: nats.Header{jetstream.MsgIDHeader: {id.String() + ".ScriptFinished.1"}}})
	return fin
}

func (r *rig) publish(t *testing.T, m *nats.Msg) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if _, err := r.env.JS.PublishMsg(ctx, m); err != nil {
		t.Fatalf("publish %s: %v", m.Subject, err)
	}
}

func TestRunFinishedReachesSiteAndGlobalTargets(t *testing.T) {
	r := newRig(t, nil)
	ok := events.RunFinished{Run: uuid.New(), Site: "shop", Command: "start", State: events.RunSuccess, Succeeded: 2, Started: time.Now()}
	failed := events.RunFinished{Run: uuid.New(), Site: "shop", Command: "start", State: events.RunFailure, Succeeded: 1, Failed: 1,
		Reason: "1 instance failed", Started: time.Now(),
		Failures: []events.StepFailure{{Script: uuid.New(), Service: "db", Server: "web1", Index: 0, Command: "start", State: events.StateFailure, ExitCode: 3}}}
	r.publishRun(t, ok)
	r.publishRun(t, failed)
	waitFor(t, "4 webhook calls and 4 emails", func() bool { return len(r.hooks.requests()) >= 4 && len(r.mail.Messages()) >= 4 })

	// The site's targets come first, then the global ones: /shop,
	// ops@example.com, /global, admin@example.com.
	for i, path := range map[int]string{0: "/shop", 2: "/global"} {
		id := fmt.Sprintf("%s/%d", ok.Run, i)
		reqs := r.hooks.delivered(id)
		if len(reqs) != 1 {
			t.Fatalf("delivery %s: %d requests, want 1", id, len(reqs))
		}
		req := reqs[0]
		if req.Path != path || req.Event != notify.EventRunFinished || req.ContentType != "application/json" || !req.SignatureOK {
			t.Errorf("delivery %s: path %s, event %q, content type %q, signature ok %v", id, req.Path, req.Event, req.ContentType, req.SignatureOK)
		}
		var body struct {
			Event string             `json:"event"`
			Run   events.RunFinished `json:"run"`
		}
		if err := json.Unmarshal(req.Body, &body); err != nil {
			t.Fatalf("delivery %s: %v\n%s", id, err, req.Body)
		}
		if body.Event != notify.EventRunFinished || body.Run.Run != ok.Run || body.Run.Site != "shop" || body.Run.Command != "start" ||
			body.Run.State != events.RunSuccess || body.Run.Succeeded != 2 || !body.Run.Started.Equal(ok.Started) {
			t.Errorf("delivery %s: body %s", id, req.Body)
		}
	}

	var okMail, failedMail *smtptest.Mail
	for _, msg := range r.mail.Messages() {
		p := smtptest.Parse(t, msg)
		switch {
		case msg.To[0] == "ops@example.com" && strings.Contains(p.Body, ok.Run.String()):
			okMail = &p
		case msg.To[0] == "ops@example.com" && strings.Contains(p.Body, failed.Run.String()):
			failedMail = &p
		}
		if msg.From != "orchestra@localhost" {
			t.Errorf("envelope sender %q, want orchestra@localhost", msg.From)
		}
	}
	if okMail == nil || failedMail == nil {
		t.Fatalf("ops@example.com did not get both runs: %v", r.mail.Messages())
	}
	if okMail.Subject != "[site:shop] start - SUCCESS" {
		t.Errorf("subject %q", okMail.Subject)
	}
	if got, want := okMail.Header.Get("Message-Id"), "<"+ok.Run.String()+"/1@localhost>"; got != want {
		t.Errorf("Message-ID %q, want %q", got, want)
	}
	if !strings.Contains(okMail.Body, "2 succeeded, 0 failed, 0 revoked") {
		t.Errorf("body:\n%s", okMail.Body)
	}
	if failedMail.Subject != "[site:shop] start - FAILURE" ||
		!strings.Contains(failedMail.Body, "db#0 on web1: start FAILURE exit 3") ||
		!strings.Contains(failedMail.Body, "1 instance failed") {
		t.Errorf("failed run's mail:\n%s", failedMail)
	}
}

func TestFailedScriptReachesGlobalTargets(t *testing.T) {
	r := newRig(t, nil)
	unit := uuid.New()
	id := events.ScriptID(unit, "web1", "nginx-vhost")
	stderr := `nginx: [emerg] unknown directive "proxy_passs" in /etc/nginx/sites-enabled/shop:12`
	finished := time.Now()
	r.scripts.set(projections.ScriptLog{
		ScriptEntry: projections.ScriptEntry{
			ID: id, Unit: unit, Server: "web1", Backend: "nginx-vhost", State: events.StateFailure, Attempt: 1, Finished: &finished,
			Operations:  []events.OperationRef{{Backend: "nginx-vhost", Action: "save", Type: "website", Name: "shop"}},
			StderrBytes: int64(len(stderr)),
		},
		Script: "nginx -t && systemctl reload nginx",
		Stderr: stderr,
	})
	r.publishScript(t, unit, "web1", "nginx-vhost", events.StateFailure)
	waitFor(t, "the webhook call and the email", func() bool { return len(r.hooks.requests()) >= 1 && len(r.mail.Messages()) >= 1 })

	reqs := r.hooks.delivered(id.String() + ".1/0")
	if len(reqs) != 1 || reqs[0].Path != "/global" || reqs[0].Event != notify.EventScriptFailed || !reqs[0].SignatureOK {
		t.Fatalf("webhook requests %+v", r.hooks.requests())
	}
	var body struct {
		Event  string                `json:"event"`
		Script projections.ScriptLog `json:"script"`
	}
	if err := json.Unmarshal(reqs[0].Body, &body); err != nil {
		t.Fatal(err)
	}
	if body.Event != notify.EventScriptFailed || body.Script.ID != id || body.Script.Stderr != stderr ||
		body.Script.State != events.StateFailure || body.Script.ExitCode == nil || *body.Script.ExitCode != 1 {
		t.Errorf("body %s", reqs[0].Body)
	}

	m := r.mail.MailTo(t, "admin@example.com")
	if m.Subject != "[orchestra] nginx-vhost FAILURE on web1" {
		t.Errorf("subject %q", m.Subject)
	}
	for _, want := range []string{stderr, "[EXIT CODE] 1", "save website shop", "nginx -t && systemctl reload nginx"} {
		if !strings.Contains(m.Body, want) {
			t.Errorf("body lacks %q:\n%s", want, m.Body)
		}
	}
	if n := len(r.mail.Messages()); n != 1 {
		t.Errorf("%d emails; a script failure goes to the global targets only", n)
	}
}

func TestSiteStepsAndSuccessesSendNothing(t *testing.T) {
	r := newRig(t, nil)
	unit := uuid.New()
	r.publishScript(t, unit, "web1", events.StepLabel("shop", "db", 0, "start"), events.StateFailure)
	r.publishScript(t, unit, "web1", "nginx-vhost", events.StateSuccess)
	r.publishScript(t, unit, "web2", "nginx-vhost", events.StateNothing)
	// The consumer reads in order: once the deliveries of a later failure
	// arrived, those of the scripts before would have.
	marker := r.publishScript(t, unit, "web3", "nginx-vhost", events.StateTimeout)
	waitFor(t, "the marker's webhook call and email", func() bool { return len(r.hooks.requests()) >= 1 && len(r.mail.Messages()) >= 1 })
	time.Sleep(100 * time.Millisecond) // a stray delivery would show now
	reqs, mails := r.hooks.requests(), r.mail.Messages()
	if len(reqs) != 1 || reqs[0].Delivery != marker.ID.String()+".1/0" || len(mails) != 1 {
		t.Fatalf("deliveries %+v, emails %d; want only the marker's", reqs, len(mails))
	}
}

func TestScriptLogUnavailableStillSends(t *testing.T) {
	r := newRig(t, nil)
	r.publishScript(t, uuid.New(), "web1", "nginx-vhost", events.StateError) // no log in the read model
	waitFor(t, "the email", func() bool { return len(r.mail.Messages()) >= 1 })
	m := r.mail.MailTo(t, "admin@example.com")
	if m.Subject != "[orchestra] nginx-vhost ERROR on web1" || !strings.Contains(m.Body, "log is unavailable") ||
		!strings.Contains(m.Body, projections.ErrNotFound.Error()) {
		t.Errorf("email:\n%s", m)
	}
}

func TestFailingWebhookIsRetriedThenRecorded(t *testing.T) {
	r := newRig(t, func(r *rig) {
		r.cfg.Global = nil
		r.cfg.Sites = sites{"shop": {{Webhook: r.hooks.URL + "/shop", Secret: hookSecrets["/shop"]}}}
		r.hooks.setStatus("/shop", http.StatusInternalServerError)
	})
	run := events.RunFinished{Run: uuid.New(), Site: "shop", Command: "stop", State: events.RunSuccess, Started: time.Now()}
	r.publishRun(t, run)
	var a events.NotificationAbandoned
	select {
	case a = <-r.abandoned:
	case <-time.After(testTimeout):
		t.Fatal("no abandoned notification recorded")
	}
	want := events.NotificationAbandoned{ID: run.Run.String() + "/0", Target: r.hooks.URL + "/shop", Subject: "[site:shop] stop - SUCCESS"}
	if a.ID != want.ID || a.Target != want.Target || a.Subject != want.Subject || !strings.Contains(a.Reason, "500 Internal Server Error") {
		t.Errorf("recorded %+v, want %+v with a reason naming the status", a, want)
	}
	// Every call failed: the first and MaxRetries more, each signed.
	reqs := r.hooks.delivered(want.ID)
	if len(reqs) != r.cfg.MaxRetries+1 {
		t.Errorf("%d attempts, want %d", len(reqs), r.cfg.MaxRetries+1)
	}
	for _, req := range reqs {
		if !req.SignatureOK {
			t.Errorf("attempt without a valid signature: %+v", req)
		}
	}
}

func TestEmailWithoutSMTPIsAbandoned(t *testing.T) {
	r := newRig(t, func(r *rig) { r.cfg.SMTP = "" })
	run := events.RunFinished{Run: uuid.New(), Site: "shop", Command: "start", State: events.RunSuccess, Started: time.Now()}
	r.publishRun(t, run)
	got := map[string]events.NotificationAbandoned{}
	for len(got) < 2 {
		select {
		case a := <-r.abandoned:
			got[a.Target] = a
		case <-time.After(testTimeout):
			t.Fatalf("recorded %+v; want both email targets", got)
		}
	}
	for _, addr := range []string{"ops@example.com", "admin@example.com"} {
		if a := got[addr]; !strings.Contains(a.Reason, "no SMTP server configured (orchestra up --smtp HOST:PORT)") {
			t.Errorf("%s: recorded %+v", addr, a)
		}
	}
	waitFor(t, "both webhook calls", func() bool { return len(r.hooks.requests()) >= 2 })
}

func TestRedeliveredRunIsSentOnce(t *testing.T) {
	r := newRig(t, func(r *rig) {
		r.cfg.Global = nil
		r.cfg.Sites = sites{"shop": {{Webhook: r.hooks.URL + "/shop", Secret: hookSecrets["/shop"]}}}
	})
	run := events.RunFinished{Run: uuid.New(), Site: "shop", Command: "start", State: events.RunSuccess, Started: time.Now()}
	r.publishRun(t, run)
	r.publishRun(t, run) // the same run reaches the notifier twice
	marker := events.RunFinished{Run: uuid.New(), Site: "shop", Command: "stop", State: events.RunSuccess, Started: time.Now()}
	r.publishRun(t, marker)
	waitFor(t, "the marker run's webhook call", func() bool { return len(r.hooks.delivered(marker.Run.String()+"/0")) == 1 })
	if reqs := r.hooks.delivered(run.Run.String() + "/0"); len(reqs) != 1 {
		t.Fatalf("the run was delivered %d times, want once", len(reqs))
	}
}

func TestConfigValidate(t *testing.T) {
	err := notify.Config{}.Validate()
	if err == nil {
		t.Fatal("an empty config is valid")
	}
	for _, dep := range []string{"JetStream", "Registry", "Sites", "Scripts", "Record"} {
		if !strings.Contains(err.Error(), dep+" is required") {
			t.Errorf("%v does not name %s", err, dep)
		}
	}
	for _, c := range []struct {
		cfg  notify.Config
		want string
	}{
		{notify.Config{Global: []notify.Target{{Webhook: "https://x.example/", Email: "a@x.example"}}}, "global[0]"},
		{notify.Config{From: "not an address"}, "from"},
		{notify.Config{HTTPClient: &http.Client{}}, "no Timeout"},
		{notify.Config{MaxRetries: 30}, "ack wait"},
	} {
		if err := c.cfg.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Validate(%+v) = %v, want an error about %s", c.cfg, err, c.want)
		}
	}
	if _, err := notify.New(notify.Config{}); err == nil {
		t.Error("New accepted an empty config")
	}
}
