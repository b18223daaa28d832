package services_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/services"
)

// siteFleet applies servers s1..sn (labelled role: app) and site doc.
func siteFleet(t *testing.T, h *harness, n int, site string) {
	t.Helper()
	docs := []string{}
	for i := 1; i <= n; i++ {
		docs = append(docs, fmt.Sprintf(`{"kind":"Server","name":"s%d","method":"local","labels":{"role":"app"}}`, i))
	}
	h.apply(t, append(docs, site)...)
}

const threeTiers = `{"kind":"Site","name":"shop","update":{"strategy":"rolling","batch":2,"max_failures":1},"services":[
 {"name":"web","rank":3,"servers":["s1"],"start":"w","stop":"w","status":"w","install":"i"},
 {"name":"db","rank":1,"servers":["s1"],"start":"d","stop":"d","commands":{"migrate":"m"}},
 {"name":"app","rank":2,"selector":{"role":"app"},"scale":2,"start":"a","stop":"a","status":"a","commands":{"migrate":"m2"}}]}`

// phases is a run's phases as "rank:command:steps" (group appended as
// /g when set).
func phases(res services.RunResult) []string {
	var out []string
	for _, ph := range res.Phases {
		s := fmt.Sprintf("%d:%s:%d", ph.Rank, ph.Command, len(ph.Steps))
		if ph.Group > 0 {
			s += fmt.Sprintf("/g%d", ph.Group)
		}
		out = append(out, s)
	}
	return out
}

func TestRunPhasesFollowRanks(t *testing.T) {
	h := newHarness(t)
	siteFleet(t, h, 3, threeTiers)
	ctx := context.Background()
	for _, c := range []struct {
		req  services.RunRequest
		want string
	}{
		{services.RunRequest{Command: "start"}, "1:start:1 2:start:6 3:start:1"},
		{services.RunRequest{Command: "stop"}, "3:stop:1 2:stop:6 1:stop:1"},
		{services.RunRequest{Command: "restart"}, "3:stop:1 2:stop:6 1:stop:1 1:start:1 2:start:6 3:start:1"},
		{services.RunRequest{Command: "status"}, "0:status:7"},
		{services.RunRequest{Command: "start", Services: []string{"web", "db"}}, "1:start:1 3:start:1"},
		{services.RunRequest{Command: "run", Custom: "migrate"}, "1:migrate:1 2:migrate:6"},
		{services.RunRequest{Command: "run", Custom: "migrate", Order: "desc"}, "2:migrate:6 1:migrate:1"},
		// Rolling, batch 2: db (one server), app on s1+s2 then s3 (two
		// instances each), web; each batch stop, install, start, status.
		{services.RunRequest{Command: "update"},
			"1:stop:1/g1 1:start:1/g1 2:stop:4/g2 2:start:4/g2 2:status:4/g2 2:stop:2/g3 2:start:2/g3 2:status:2/g3 3:stop:1/g4 3:install:1/g4 3:start:1/g4 3:status:1/g4"},
	} {
		c.req.Site, c.req.DryRun = "shop", true
		res, err := h.svc.RequestRun(ctx, operator, c.req)
		if err != nil {
			t.Fatalf("%+v: %v", c.req, err)
		}
		if got := strings.Join(phases(res), " "); got != c.want {
			t.Errorf("%s %s %v:\n got %s\nwant %s", c.req.Command, c.req.Custom, c.req.Services, got, c.want)
		}
		if res.Run != "" {
			t.Errorf("a dry run has run id %q", res.Run)
		}
	}
	// A stop-all update: stop descending, then install, configure, start
	// rank by rank.
	h.apply(t, strings.Replace(threeTiers, `"update":{"strategy":"rolling","batch":2,"max_failures":1}`, `"update":{"strategy":"stop-all"}`, 1))
	res, err := h.svc.RequestRun(ctx, operator, services.RunRequest{Site: "shop", Command: "update", DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(phases(res), " "), "3:stop:1 2:stop:6 1:stop:1 1:start:1 2:start:6 3:install:1 3:start:1"; got != want {
		t.Errorf("stop-all update:\n got %s\nwant %s", got, want)
	}
}

func TestRunRequestErrors(t *testing.T) {
	h := newHarness(t)
	siteFleet(t, h, 3, threeTiers)
	ctx := context.Background()
	for _, c := range []struct {
		req         services.RunRequest
		code, field string
	}{
		{services.RunRequest{Site: "nope", Command: "start"}, services.ENOTFOUND, ""},
		{services.RunRequest{Site: "shop", Command: "launch"}, services.EINVALID, "command"},
		{services.RunRequest{Site: "shop", Command: "start", Services: []string{"cache"}}, services.EINVALID, "services[0]"},
		{services.RunRequest{Site: "shop", Command: "run", Custom: "vacuum"}, services.EINVALID, "command"},
		{services.RunRequest{Site: "shop", Command: "run"}, services.EINVALID, "custom"},
		{services.RunRequest{Site: "shop", Command: "run", Custom: "migrate", Order: "up"}, services.EINVALID, "order"},
		{services.RunRequest{Site: "shop", Command: "start", Order: "desc"}, services.EINVALID, "order"},
		{services.RunRequest{Site: "shop", Command: "start", Custom: "migrate"}, services.EINVALID, "custom"},
		{services.RunRequest{Site: "shop", Command: "stop", Services: []string{"db"}, DryRun: false, Keepgoing: true, Custom: ""}, "", ""},
	} {
		_, err := h.svc.RequestRun(ctx, operator, c.req)
		if c.code == "" {
			if err != nil {
				t.Errorf("%+v: %v", c.req, err)
			}
			continue
		}
		wantError(t, err, c.code, c.field)
	}
	_, err := h.svc.RequestRun(ctx, viewer, services.RunRequest{Site: "shop", Command: "start"})
	wantError(t, err, services.EFORBIDDEN, "")
}

// TestOneRunAtATime: a command while another runs is a conflict naming
// the run in progress, and so is deleting the site; cancelling needs a
// run that is not over.
func TestOneRunAtATime(t *testing.T) {
	h := newHarness(t)
	siteFleet(t, h, 1, threeTiers)
	ctx := context.Background()
	first, err := h.svc.RequestRun(ctx, operator, services.RunRequest{Site: "shop", Command: "start"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = h.svc.RequestRun(ctx, operator, services.RunRequest{Site: "shop", Command: "stop"})
	wantError(t, err, services.ECONFLICT, "", first.Run, "start")
	// Another process deciding against the same log refuses too.
	_, err = h.newService(t).RequestRun(ctx, operator, services.RunRequest{Site: "shop", Command: "stop"})
	wantError(t, err, services.ECONFLICT, "", first.Run)
	_, err = h.applyAs(admin, `{"kind":"Site","name":"shop","delete":true}`)
	wantError(t, err, services.ECONFLICT, "objects[0]", first.Run)
	// A dry run is not a run: it is answered.
	if _, err := h.svc.RequestRun(ctx, operator, services.RunRequest{Site: "shop", Command: "stop", DryRun: true}); err != nil {
		t.Errorf("a dry run during a run: %v", err)
	}
	if _, err := h.svc.CancelRun(ctx, operator, uuid.New()); services.ErrorCode(err) != services.ENOTFOUND {
		t.Errorf("cancelling an unknown run: %v", err)
	}
	if _, err := h.svc.CancelRun(ctx, operator, uuid.MustParse(first.Run)); err != nil {
		t.Fatal(err)
	}
	if _, ok := lastPayload[*events.RunCancelRequested](t, h), true; !ok {
		t.Fatal("no RunCancelRequested")
	}
}

// TestSiteValidation: bad sites are refused naming the field, nothing is
// written.
func TestSiteValidation(t *testing.T) {
	h := newHarness(t)
	siteFleet(t, h, 1, threeTiers)
	before := h.lastSeq(t)
	svc := func(fields string) string {
		return `{"kind":"Site","name":"bad","services":[` + fields + `]}`
	}
	for _, c := range []struct{ doc, field string }{
		{svc(`{"name":"a","servers":["nowhere"],"start":"x"}`), "objects[0].services[0].servers[0]"},
		{svc(`{"name":"a","servers":["s1"],"start":"x"},{"name":"a","servers":["s1"],"start":"y"}`), "objects[0].services[1].name"},
		{svc(`{"name":"a","servers":["s1"],"start":"x","scale":-1}`), "objects[0].services[0].scale"},
		{svc(`{"name":"a","servers":["s1"],"start":"x","rank":-2}`), "objects[0].services[0].rank"},
		{svc(`{"name":"a","servers":["s1"],"selector":{"role":"app"},"start":"x"}`), "objects[0].services[0].servers"},
		{svc(`{"name":"a","start":"x"}`), "objects[0].services[0].servers"},
		{svc(`{"name":"a","servers":["s1"]}`), "objects[0].services[0].start"},
		{svc(`{"name":"a","servers":["s1"],"start":"x","env":{"1X":"v"}}`), "objects[0].services[0].env.1X"},
		{svc(`{"name":"a","servers":["s1"],"start":"x","env":{"INSTANCE":"v"}}`), "objects[0].services[0].env.INSTANCE"},
		{svc(`{"name":"a","servers":["s1"],"start":"x","commands":{"stop":"y"}}`), "objects[0].services[0].commands.stop"},
		{svc(`{"name":"a","servers":["s1"],"start":"x","timeout":"soon"}`), "objects[0].services[0].timeout"},
		{svc(`{"name":"a b","servers":["s1"],"start":"x"}`), "objects[0].services[0].name"},
		{svc(``), "objects[0].services"},
		{`{"kind":"Site","name":"bad","update":{"strategy":"bogus"},"services":[{"name":"a","servers":["s1"],"start":"x"}]}`, "objects[0].update.strategy"},
		{`{"kind":"Site","name":"bad","update":{"batch":2},"services":[{"name":"a","servers":["s1"],"start":"x"}]}`, "objects[0].update.strategy"},
		{`{"kind":"Site","name":"bad","update":{"strategy":"rolling","batch":-1},"services":[{"name":"a","servers":["s1"],"start":"x"}]}`, "objects[0].update.batch"},
		{`{"kind":"Site","name":"bad","notify":[{"webhook":"http://h/x","email":"a@b.c"}],"services":[{"name":"a","servers":["s1"],"start":"x"}]}`, "objects[0].notify[0]"},
		{`{"kind":"Site","name":"bad","notify":[{"webhook":"ftp://h/x"}],"services":[{"name":"a","servers":["s1"],"start":"x"}]}`, "objects[0].notify[0].webhook"},
		{`{"kind":"Site","name":"bad","notify":[{"email":"not an address"}],"services":[{"name":"a","servers":["s1"],"start":"x"}]}`, "objects[0].notify[0].email"},
		{`{"kind":"Site","name":"bad","services":[{"name":"a","servers":["s1"],"start":"x","bogus":1}]}`, "bogus"},
	} {
		_, err := h.applyAs(admin, c.doc)
		var e *services.Error
		if err == nil || !errors.As(err, &e) || !strings.HasSuffix(e.Field, strings.TrimPrefix(c.field, "objects[0].")) {
			t.Errorf("%s:\n got %v\nwant an error on %s", c.doc, err, c.field)
		}
	}
	if got := h.lastSeq(t); got != before {
		t.Errorf("bad sites wrote events: the log moved from %d to %d", before, got)
	}
	// Deleting a server a site names is refused, naming the site.
	_, err := h.applyAs(admin, `{"kind":"Server","name":"s1","delete":true}`)
	wantError(t, err, services.ECONFLICT, "objects[0]", `site "shop"`)
}

// TestSiteSecretsSealedAndMasked: a webhook's secret is sealed in the
// event and masked in views; writing the mask back keeps it.
func TestSiteSecretsSealedAndMasked(t *testing.T) {
	h := newHarness(t)
	site := `{"kind":"Site","name":"shop","notify":[{"webhook":"https://hooks.example.com/x","secret":"%s"}],"services":[{"name":"a","servers":["s1"],"start":"x"}]}`
	siteFleet(t, h, 1, fmt.Sprintf(site, "hmac key"))
	saved := lastPayload[*events.SiteSaved](t, h)
	sealed := saved.Site.Notify[0].Secret
	if sealed == "" || strings.Contains(sealed, "hmac key") {
		t.Fatalf("the secret is stored as %q", sealed)
	}
	if v := services.ViewSite(saved.Site); v.Notify[0].Secret != services.Masked {
		t.Errorf("the view shows %q", v.Notify[0].Secret)
	}
	n, err := services.OpenNotify(h.sealer, "shop", saved.Site.Notify[0])
	if err != nil || n.Secret != "hmac key" {
		t.Fatalf("opened %q, %v", n.Secret, err)
	}
	res := h.apply(t, fmt.Sprintf(site, services.Masked))
	if res.Objects[0].Result != services.Unchanged {
		t.Errorf("writing the mask back: %s", res.Objects[0].Result)
	}
	res = h.apply(t, fmt.Sprintf(site, "new key"))
	if res.Objects[0].Result != services.Configured || strings.Join(res.Objects[0].Changed, ",") != "notify" {
		t.Errorf("a new secret: %s %v", res.Objects[0].Result, res.Objects[0].Changed)
	}
}

// TestStepScriptQuotesValues: whatever an environment value holds, the
// step's script sets it as a value and runs nothing of it.
func TestStepScriptQuotesValues(t *testing.T) {
	h := newHarness(t)
	evil := `'; touch /tmp/pwned; echo '$(id)` + "`id`\"\n"
	site := doc(t, map[string]any{"kind": "Site", "name": "shop", "services": []any{map[string]any{
		"name": "a", "servers": []string{"s1"}, "env": map[string]string{"V": evil}, "start": `printf '%s' "$V"`,
	}}})
	siteFleet(t, h, 1, site)
	res, err := h.svc.RequestRun(context.Background(), operator, services.RunRequest{Site: "shop", Command: "start", DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("/bin/sh", "-c", res.Phases[0].Steps[0].Text).Output()
	if err != nil || string(out) != evil {
		t.Fatalf("the script printed %q (%v), want the value %q", out, err, evil)
	}
}

// discard is the runner's log in tests.
var discard = slog.New(slog.DiscardHandler)

// stepBus records what the runner sends and revokes; the test plays the
// executors by handing the runner each step's end.
type stepBus struct {
	mu      sync.Mutex
	sent    [][]events.RunStep
	revoked []events.RunStep
	ended   map[uuid.UUID]events.ScriptFinished
	// onFinished, when set, runs at each look-up of a step's end.
	onFinished func()
}

func (b *stepBus) Send(_ context.Context, _ *events.RunRequested, _ int, steps []events.RunStep) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sent = append(b.sent, steps)
	return nil
}

func (b *stepBus) Finished(_ context.Context, st events.RunStep) (events.ScriptFinished, bool, error) {
	if b.onFinished != nil {
		b.onFinished()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	f, ok := b.ended[st.Script]
	return f, ok, nil
}

func (b *stepBus) Revoke(_ context.Context, _ *events.RunRequested, steps []events.RunStep) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.revoked = append(b.revoked, steps...)
	return nil
}

// startRun requests req and starts a runner on a recording step bus, which
// sends the run's first phase.
func startRun(t *testing.T, h *harness, req services.RunRequest) (uuid.UUID, *stepBus, *services.Runner) {
	t.Helper()
	res, err := h.svc.RequestRun(context.Background(), operator, req)
	if err != nil {
		t.Fatal(err)
	}
	bus := &stepBus{ended: map[uuid.UUID]events.ScriptFinished{}}
	r := services.NewRunner(h.svc, bus, discard)
	if err := r.Resume(context.Background()); err != nil {
		t.Fatal(err)
	}
	return uuid.MustParse(res.Run), bus, r
}

// finish ends every step of the last phase sent, exit code by fail.
func (b *stepBus) finish(t *testing.T, r *services.Runner, run uuid.UUID, fail func(events.RunStep) bool) {
	t.Helper()
	b.mu.Lock()
	steps := b.sent[len(b.sent)-1]
	b.mu.Unlock()
	for _, st := range steps {
		fin := events.ScriptFinished{ID: st.Script, Unit: run, Server: st.Server, Backend: st.Label, Attempt: 1, State: events.StateSuccess, Time: time.Now()}
		if fail(st) {
			fin.State, fin.ExitCode = events.StateFailure, 1
		}
		b.mu.Lock()
		b.ended[st.Script] = fin
		b.mu.Unlock()
		if err := r.Result(context.Background(), fin); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRollingLeavesFailedInstancesOut: in a rolling batch, an instance
// whose stop failed is not installed, started or checked; the update
// goes on while failures stay within max_failures and ends once more
// fail. A runner started afresh (as after a restart) picks up the run.
func TestRollingLeavesFailedInstancesOut(t *testing.T) {
	h := newHarness(t)
	site := `{"kind":"Site","name":"roll","update":{"strategy":"rolling","batch":2,"max_failures":1},"services":[
	 {"name":"api","selector":{"role":"app"},"start":"s","stop":"t","status":"u"}]}`
	siteFleet(t, h, 4, site)
	ctx := context.Background()
	run, bus, r := startRun(t, h, services.RunRequest{Site: "roll", Command: "update"})
	never := func(events.RunStep) bool { return false }
	// Batch 1 (s1, s2): s2's stop fails; s2 is left out of start and status.
	bus.finish(t, r, run, func(st events.RunStep) bool { return st.Server == "s2" })
	for _, cmd := range []string{"start", "status"} {
		if got := bus.sent[len(bus.sent)-1]; len(got) != 1 || got[0].Server != "s1" || got[0].Command != cmd {
			t.Fatalf("%s sent %+v, want s1 alone", cmd, got)
		}
		bus.finish(t, r, run, never)
	}
	// Batch 2 goes on (1 failure ≤ max_failures 1); a runner started
	// afresh takes over from the log and the bus.
	r = services.NewRunner(h.svc, bus, discard)
	if err := r.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if got := bus.sent[len(bus.sent)-1]; len(got) != 2 || got[0].Command != "stop" || got[0].Server != "s3" {
		t.Fatalf("batch 2 stop sent %+v", got)
	}
	bus.finish(t, r, run, func(st events.RunStep) bool { return st.Server == "s4" })
	// Two failures > max_failures: the update ends, the rest not run.
	fin := lastPayload[*events.RunFinished](t, h)
	// Not run: s2's start and status, and batch 2's start and status.
	if fin.State != events.RunFailure || fin.Failed != 2 || fin.Revoked != 6 || fin.Succeeded != 4 || len(fin.Failures) != 2 {
		t.Fatalf("the update ended %+v", fin)
	}
	if _, err := h.svc.RequestRun(ctx, operator, services.RunRequest{Site: "roll", Command: "status", DryRun: false}); err != nil {
		t.Errorf("a command after the run ended: %v", err)
	}
}

// TestCancelRevokesQueuedSteps: a cancelled run revokes the steps of the
// phase that were not reported ended, starts no other phase and ends
// REVOKED.
func TestCancelRevokesQueuedSteps(t *testing.T) {
	h := newHarness(t)
	siteFleet(t, h, 2, threeTiers)
	ctx := context.Background()
	run, bus, r := startRun(t, h, services.RunRequest{Site: "shop", Command: "start"})
	bus.finish(t, r, run, func(events.RunStep) bool { return false }) // rank 1
	if _, err := h.svc.CancelRun(ctx, operator, run); err != nil {
		t.Fatal(err)
	}
	if err := r.Requested(ctx, "shop"); err != nil {
		t.Fatal(err)
	}
	if len(bus.revoked) != 4 { // app: scale 2 on s1 and s2
		t.Fatalf("revoked %d steps, want the 4 of rank 2", len(bus.revoked))
	}
	for _, st := range bus.revoked {
		fin := events.ScriptFinished{ID: st.Script, Unit: run, Server: st.Server, State: events.StateRevoked, ExitCode: -1}
		if err := r.Result(ctx, fin); err != nil {
			t.Fatal(err)
		}
	}
	fin := lastPayload[*events.RunFinished](t, h)
	if fin.State != events.RunRevoked || fin.Succeeded != 1 || fin.Revoked != 5 || len(bus.sent) != 2 {
		t.Fatalf("the run ended %+v after %d phases sent", fin, len(bus.sent))
	}
}

// TestCancelWhileAPhaseEnds: a cancel that lands while a runner (here one
// that just started) is ending a phase whose steps all ended: the phase's
// end is not lost with it, and the run ends REVOKED instead of waiting
// for results that already came.
func TestCancelWhileAPhaseEnds(t *testing.T) {
	h := newHarness(t)
	siteFleet(t, h, 1, threeTiers)
	ctx := context.Background()
	run, bus, _ := startRun(t, h, services.RunRequest{Site: "shop", Command: "start"})
	// Rank 1 ran and ended, but this runner never heard: it stops.
	for _, st := range bus.sent[0] {
		bus.ended[st.Script] = events.ScriptFinished{ID: st.Script, Unit: run, Server: st.Server, Attempt: 1, State: events.StateSuccess}
	}
	// Another runner takes over and, while it reads the results, the
	// operator cancels.
	var once sync.Once
	bus.onFinished = func() {
		once.Do(func() {
			if _, err := h.svc.CancelRun(ctx, operator, run); err != nil {
				t.Error(err)
			}
		})
	}
	if err := services.NewRunner(h.svc, bus, discard).Resume(ctx); err != nil {
		t.Fatal(err)
	}
	fin := lastPayload[*events.RunFinished](t, h)
	if fin.State != events.RunRevoked || fin.Succeeded != 1 || len(bus.sent) != 1 || len(bus.revoked) != 0 {
		t.Fatalf("the run ended %+v, %d phases sent, %d steps revoked; want REVOKED after rank 1, nothing more sent or revoked", fin, len(bus.sent), len(bus.revoked))
	}
}
