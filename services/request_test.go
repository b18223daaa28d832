package services_test

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/services"
)

// requestModel is the model the request tests decide against: two servers,
// two backends of type vhost (web: save and reload, routed to web1; cache:
// save and purge, routed to web2), a backend of another type, two vhost
// resources and a queue resource no backend serves.
var requestModel = []string{
	`{"kind":"Server","name":"web1","address":"10.0.0.1"}`,
	`{"kind":"Server","name":"web2","address":"10.0.0.2"}`,
	`{"kind":"Backend","name":"web","type":"vhost","actions":{"save":"echo {{.name}}","reload":"echo reload {{.name}}"}}`,
	`{"kind":"Backend","name":"cache","type":"vhost","actions":{"save":"echo {{.name}}","purge":"echo purge {{.name}}"}}`,
	`{"kind":"Backend","name":"db","type":"database","actions":{"save":"echo {{.name}}","reload":"echo reload {{.name}}","backup":"echo backup"}}`,
	`{"kind":"Route","backend":"web","server":"web1"}`,
	`{"kind":"Route","backend":"cache","server":"web2"}`,
	`{"kind":"Resource","type":"vhost","name":"example.com","attrs":{"port":80}}`,
	`{"kind":"Resource","type":"vhost","name":"other.com","attrs":{"port":81}}`,
	`{"kind":"Resource","type":"queue","name":"jobs"}`,
}

// resourceVersion is the version of resource typ/name as an apply that
// leaves it unchanged reports it.
func resourceVersion(t *testing.T, h *harness, typ, name string) uint64 {
	t.Helper()
	res := h.apply(t, resourceDoc(t, typ, name, nil))
	if o := res.Objects[0]; o.Result != services.Unchanged {
		t.Fatalf("reading the version of %s/%s changed it: %+v", typ, name, o)
	}
	return res.Objects[0].Version
}

// resourceDoc is the apply document of a request-model resource, with
// extra fields (a version, changed attrs) set.
func resourceDoc(t *testing.T, typ, name string, extra map[string]any) string {
	t.Helper()
	attrs := map[string]any{"example.com": map[string]any{"port": 80}, "other.com": map[string]any{"port": 81}}[name]
	fields := map[string]any{"kind": "Resource", "type": typ, "name": name}
	if attrs != nil {
		fields["attrs"] = attrs
	}
	for k, v := range extra {
		fields[k] = v
	}
	return doc(t, fields)
}

// oneEvent checks that the log grew by exactly one event since before, a
// unit of its own on agg made by p, and returns its payload.
func oneEvent(t *testing.T, h *harness, before uint64, res services.RequestResult, agg events.Aggregate, p services.Principal) events.Payload {
	t.Helper()
	if after := h.lastSeq(t); after != before+1 {
		t.Fatalf("the request wrote %d events, want 1", after-before)
	}
	if res.Sequence != before+1 || res.Unit == "" {
		t.Fatalf("result %+v, want unit and sequence %d", res, before+1)
	}
	var got []events.Envelope
	for e, err := range h.store.Read(context.Background(), before+1) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, e)
	}
	if len(got) != 1 {
		t.Fatalf("read %d events after %d, want 1", len(got), before)
	}
	e := got[0]
	if e.Aggregate != agg || e.Unit.String() != res.Unit || e.UnitSize != 1 || e.UnitIndex != 0 || e.Actor != p.Name {
		t.Fatalf("event %d: aggregate %s unit %s (%d of %d) actor %q; want aggregate %s unit %s alone, actor %q",
			e.Sequence, e.Aggregate, e.Unit, e.UnitIndex, e.UnitSize, e.Actor, agg, res.Unit, p.Name)
	}
	payload, err := h.reg.Payload(e)
	if err != nil {
		t.Fatal(err)
	}
	return payload
}

func TestAction(t *testing.T) {
	h := newHarness(t)
	h.apply(t, requestModel...)
	ctx := context.Background()

	refused := []struct {
		name             string
		p                services.Principal
		typ, res, action string
		code, field      string
		words            []string
	}{
		{"unknown resource", operator, "vhost", "nope.com", "reload", services.ENOTFOUND, "", []string{"vhost/nope.com"}},
		{"unknown type", operator, "mail", "example.com", "reload", services.ENOTFOUND, "", []string{"mail/example.com"}},
		{"action no backend defines", operator, "vhost", "example.com", "restart", services.EINVALID, "action",
			[]string{`"restart"`, "vhost", "cache, web"}},
		{"action only another type defines", operator, "vhost", "example.com", "backup", services.EINVALID, "action",
			[]string{`"backup"`, "(backends of the type: cache, web)"}},
		{"type with no backend", operator, "queue", "jobs", "save", services.EINVALID, "action", []string{"queue", "none"}},
		{"delete", admin, "vhost", "example.com", "delete", services.EINVALID, "action", []string{"delete"}},
		{"bad type", operator, "Vhost", "example.com", "reload", services.EINVALID, "type", nil},
		{"empty type", operator, "", "example.com", "reload", services.EINVALID, "type", nil},
		{"bad action", operator, "vhost", "example.com", "re load", services.EINVALID, "action", nil},
		{"empty action", operator, "vhost", "example.com", "", services.EINVALID, "action", nil},
		{"action too long", operator, "vhost", "example.com", strings.Repeat("a", 65), services.EINVALID, "action", nil},
		{"viewer", viewer, "vhost", "example.com", "reload", services.EFORBIDDEN, "", []string{"operator", viewer.Name}},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			before := h.lastSeq(t)
			res, err := h.svc.Action(ctx, tc.p, tc.typ, tc.res, tc.action)
			wantError(t, err, tc.code, tc.field, tc.words...)
			if res != (services.RequestResult{}) {
				t.Errorf("a refused action returned %+v", res)
			}
			if after := h.lastSeq(t); after != before {
				t.Fatalf("the refused action wrote: stream at %d, was %d", after, before)
			}
		})
	}

	t.Run("requested", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			p      services.Principal
			action string
		}{{"operator reload", operator, "reload"}, {"admin purge", admin, "purge"}, {"save", operator, "save"}} {
			t.Run(tc.name, func(t *testing.T) {
				before := h.lastSeq(t)
				res, err := h.svc.Action(ctx, tc.p, "vhost", "example.com", tc.action)
				if err != nil {
					t.Fatal(err)
				}
				got := oneEvent(t, h, before, res, events.Aggregate{Type: events.AggResource, ID: "vhost/example.com"}, tc.p)
				want := &events.ResourceActionRequested{Type: "vhost", Name: "example.com", Action: tc.action}
				if !reflect.DeepEqual(got, want) {
					t.Fatalf("event %#v, want %#v", got, want)
				}
				if h.svc.Seq() != res.Sequence {
					t.Fatalf("the write model is at %d after the request at %d", h.svc.Seq(), res.Sequence)
				}
			})
		}
	})

	// A request is not a change of the resource: its version stays, and a
	// write conditioned on that version still goes through, from this
	// process, from a fresh one, and from one that had not seen the request.
	t.Run("resource version is kept", func(t *testing.T) {
		v := resourceVersion(t, h, "vhost", "other.com")
		stale := h.newService(t)
		res, err := h.svc.Action(ctx, operator, "vhost", "other.com", "reload")
		if err != nil {
			t.Fatal(err)
		}
		if res.Sequence <= v {
			t.Fatalf("the action landed at %d, the resource is at version %d", res.Sequence, v)
		}
		if got := resourceVersion(t, h, "vhost", "other.com"); got != v {
			t.Fatalf("after the action the resource is at version %d, was %d", got, v)
		}
		// The request's own sequence is not a version of the resource.
		_, err = h.applyAs(operator, resourceDoc(t, "vhost", "other.com", map[string]any{"version": res.Sequence, "attrs": map[string]any{"port": 82}}))
		wantStale(t, err, "objects[0].version", res.Sequence, v)

		for i, svc := range []*services.Service{stale, h.newService(t), h.svc} {
			port := 90 + i
			ap, err := applyWith(svc, operator, resourceDoc(t, "vhost", "other.com", map[string]any{"version": v, "attrs": map[string]any{"port": port}}))
			if err != nil {
				t.Fatalf("writer %d: an apply conditioned on version %d after the action: %v", i, v, err)
			}
			o := ap.Objects[0]
			if o.Result != services.Configured || o.Version != h.lastSeq(t) {
				t.Fatalf("writer %d: %+v, stream at %d", i, o, h.lastSeq(t))
			}
			// The version moved: the old condition is stale now.
			_, err = applyWith(svc, operator, resourceDoc(t, "vhost", "other.com", map[string]any{"version": v, "attrs": map[string]any{"port": 100 + i}}))
			wantStale(t, err, "objects[0].version", v, o.Version)
			v = o.Version
			if _, err := svc.Action(ctx, operator, "vhost", "other.com", "reload"); err != nil {
				t.Fatalf("writer %d: action: %v", i, err)
			}
			if err := h.svc.Sync(ctx); err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("deleted resource", func(t *testing.T) {
		h.apply(t, `{"kind":"Resource","type":"vhost","name":"other.com","delete":true}`)
		before := h.lastSeq(t)
		_, err := h.svc.Action(ctx, operator, "vhost", "other.com", "reload")
		wantError(t, err, services.ENOTFOUND, "", "vhost/other.com")
		if h.lastSeq(t) != before {
			t.Fatal("an action on a deleted resource wrote")
		}
	})
}

func TestSyncServer(t *testing.T) {
	h := newHarness(t)
	h.apply(t, requestModel...)
	ctx := context.Background()

	refused := []struct {
		name, server, backend string
		p                     services.Principal
		code, field           string
		words                 []string
	}{
		{"unknown server", "web9", "", operator, services.ENOTFOUND, "", []string{"web9"}},
		{"unknown server and backend", "web9", "web", operator, services.ENOTFOUND, "", []string{"web9"}},
		{"backend routed elsewhere", "web1", "cache", operator, services.EINVALID, "backend", []string{`"cache"`, "web1", "routed there: web"}},
		{"unknown backend", "web1", "nope", operator, services.EINVALID, "backend", []string{`"nope"`}},
		{"backend of another server", "web2", "web", operator, services.EINVALID, "backend", []string{`"web"`, "web2", "cache"}},
		{"viewer", "web1", "", viewer, services.EFORBIDDEN, "", []string{"operator"}},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			before := h.lastSeq(t)
			_, err := h.svc.SyncServer(ctx, tc.p, tc.server, tc.backend)
			wantError(t, err, tc.code, tc.field, tc.words...)
			if after := h.lastSeq(t); after != before {
				t.Fatalf("the refused sync wrote: stream at %d, was %d", after, before)
			}
		})
	}

	for _, tc := range []struct {
		name, server, backend string
		p                     services.Principal
	}{
		{"whole server", "web1", "", operator},
		{"one backend", "web1", "web", admin},
		{"other server", "web2", "cache", operator},
		{"again", "web1", "", operator},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := h.lastSeq(t)
			res, err := h.svc.SyncServer(ctx, tc.p, tc.server, tc.backend)
			if err != nil {
				t.Fatal(err)
			}
			got := oneEvent(t, h, before, res, events.Aggregate{Type: events.AggServer, ID: tc.server}, tc.p)
			want := &events.ServerSyncRequested{Server: tc.server, Backend: tc.backend}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("event %#v, want %#v", got, want)
			}
		})
	}

	t.Run("server version is kept", func(t *testing.T) {
		res := h.apply(t, `{"kind":"Server","name":"web2","address":"10.0.0.2"}`)
		v := res.Objects[0].Version
		if _, err := h.svc.SyncServer(ctx, operator, "web2", ""); err != nil {
			t.Fatal(err)
		}
		ap := h.apply(t, fmt.Sprintf(`{"kind":"Server","name":"web2","address":"10.0.0.3","version":%d}`, v))
		if o := ap.Objects[0]; o.Result != services.Configured || o.Version != h.lastSeq(t) {
			t.Fatalf("an apply conditioned on the server's version after a sync: %+v", o)
		}
	})

	// A sync over a route that is not active would plan nothing: it is
	// refused, naming the backend, or the server when nothing is left.
	t.Run("inactive routes", func(t *testing.T) {
		h.apply(t, `{"kind":"Route","backend":"web","server":"web1","active":false}`)
		before := h.lastSeq(t)
		_, err := h.svc.SyncServer(ctx, operator, "web1", "web")
		wantError(t, err, services.EINVALID, "backend", `"web"`, "no active route")
		_, err = h.svc.SyncServer(ctx, operator, "web1", "")
		wantError(t, err, services.EINVALID, "", "web1", "nothing to sync")
		if h.lastSeq(t) != before {
			t.Fatal("a refused sync wrote")
		}
	})
}

func TestRetry(t *testing.T) {
	h := newHarness(t)
	h.apply(t, requestModel...)
	ctx := context.Background()
	op := func(backend, action, name string) events.OperationRef {
		return events.OperationRef{Backend: backend, Action: action, Type: "vhost", Name: name}
	}
	logged := []events.OperationRef{
		op("web", "save", "example.com"),
		op("web", "delete", "example.com"),
		op("web", "save", "gone.com"),
		op("ghost", "save", "example.com"),
		op("web", "purge", "example.com"),
		op("cache", "purge", "other.com"),
		op("web", "delete", "gone.com"),
	}
	wantRetried := []events.OperationRef{logged[0], logged[5]}
	wantSkipped := []struct {
		op    events.OperationRef
		words []string
	}{
		{logged[1], []string{"delete"}},
		{logged[2], []string{"vhost/gone.com", "no longer exists"}},
		{logged[3], []string{"backend ghost", "no longer exists"}},
		{logged[4], []string{"web", `"purge"`}},
		{logged[6], []string{"delete"}},
	}
	checkSkipped := func(t *testing.T, got []services.SkippedOperation) {
		t.Helper()
		if len(got) != len(wantSkipped) {
			t.Fatalf("skipped %+v, want %d operations", got, len(wantSkipped))
		}
		for i, w := range wantSkipped {
			if got[i].Operation != w.op {
				t.Fatalf("skipped[%d] is %+v, want %+v", i, got[i].Operation, w.op)
			}
			for _, word := range w.words {
				if !strings.Contains(got[i].Reason, word) {
					t.Fatalf("skipped[%d]: reason %q does not mention %q", i, got[i].Reason, word)
				}
			}
		}
	}
	script := uuid.MustParse("0192f1e0-6b1a-7c3e-9d2f-5a4b3c2d1e0f")
	agg := events.Aggregate{Type: events.AggScript, ID: script.String()}

	t.Run("viewer", func(t *testing.T) {
		before := h.lastSeq(t)
		_, err := h.svc.Retry(ctx, viewer, script, logged)
		wantError(t, err, services.EFORBIDDEN, "", "operator")
		if h.lastSeq(t) != before {
			t.Fatal("a refused retry wrote")
		}
	})

	var first services.RetryResult
	t.Run("retried and skipped", func(t *testing.T) {
		before := h.lastSeq(t)
		var err error
		first, err = h.svc.Retry(ctx, operator, script, logged)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(first.Retried, wantRetried) {
			t.Fatalf("retried %+v, want %+v", first.Retried, wantRetried)
		}
		checkSkipped(t, first.Skipped)
		got := oneEvent(t, h, before, first.RequestResult, agg, operator)
		want := &events.ScriptRetryRequested{Script: script, Operations: wantRetried}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("event %#v, want %#v", got, want)
		}
	})

	t.Run("again", func(t *testing.T) {
		// The script aggregate has an event now: a second retry expects it
		// there.
		res, err := h.svc.Retry(ctx, admin, script, logged)
		if err != nil {
			t.Fatalf("second retry: %v", err)
		}
		if res.Sequence != first.Sequence+1 || res.Unit == first.Unit || !slices.Equal(res.Retried, wantRetried) {
			t.Fatalf("second retry %+v after %+v", res, first)
		}
		hist, err := h.store.Load(ctx, agg)
		if err != nil {
			t.Fatal(err)
		}
		if len(hist.Events) != 2 || hist.Version != res.Sequence {
			t.Fatalf("the script aggregate has %d events at version %d, want 2 at %d", len(hist.Events), hist.Version, res.Sequence)
		}
	})

	t.Run("again from a process that was behind", func(t *testing.T) {
		stale := h.newService(t)
		if _, err := h.svc.Retry(ctx, operator, script, logged[:1]); err != nil {
			t.Fatal(err)
		}
		before := h.lastSeq(t)
		res, err := stale.Retry(ctx, operator, script, logged[:1])
		if err != nil {
			t.Fatalf("a retry decided against a stale position: %v", err)
		}
		got := oneEvent(t, h, before, res.RequestResult, agg, operator)
		if want := (&events.ScriptRetryRequested{Script: script, Operations: logged[:1]}); !reflect.DeepEqual(got, want) {
			t.Fatalf("event %#v, want %#v", got, want)
		}
		if err := h.svc.Sync(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("nothing left", func(t *testing.T) {
		before := h.lastSeq(t)
		other := uuid.MustParse("0192f1e0-6b1a-7c3e-9d2f-000000000001")
		res, err := h.svc.Retry(ctx, operator, other, []events.OperationRef{logged[1], logged[2], logged[3], logged[4], logged[6]})
		if err != nil {
			t.Fatal(err)
		}
		if res.Unit != "" || res.Sequence != before {
			t.Fatalf("a retry with nothing left: %+v, stream at %d", res.RequestResult, before)
		}
		if res.Retried == nil || len(res.Retried) != 0 {
			t.Fatalf("retried %#v, want an empty list", res.Retried)
		}
		checkSkipped(t, res.Skipped)
		if h.lastSeq(t) != before {
			t.Fatal("a retry with nothing left wrote")
		}
		hist, err := h.store.Load(ctx, events.Aggregate{Type: events.AggScript, ID: other.String()})
		if err != nil {
			t.Fatal(err)
		}
		if len(hist.Events) != 0 {
			t.Fatalf("the script aggregate has %d events", len(hist.Events))
		}
	})

	t.Run("after the model changed", func(t *testing.T) {
		// other.com deleted, cache no longer defining purge: nothing of
		// what was retried first is left but the save of example.com.
		h.apply(t, `{"kind":"Resource","type":"vhost","name":"other.com","delete":true}`)
		res, err := h.svc.Retry(ctx, operator, script, wantRetried)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(res.Retried, wantRetried[:1]) || len(res.Skipped) != 1 || res.Skipped[0].Operation != wantRetried[1] ||
			!strings.Contains(res.Skipped[0].Reason, "vhost/other.com") {
			t.Fatalf("%+v", res)
		}
		h.apply(t, `{"kind":"Backend","name":"web","type":"vhost","actions":{"reload":"echo reload {{.name}}"}}`)
		res, err = h.svc.Retry(ctx, operator, script, wantRetried)
		if err != nil {
			t.Fatal(err)
		}
		if res.Unit != "" || len(res.Retried) != 0 || len(res.Skipped) != 2 || !strings.Contains(res.Skipped[0].Reason, `"save"`) {
			t.Fatalf("%+v", res)
		}
		// A backend that serves another type now never gets the old
		// type's resources.
		h.apply(t, `{"kind":"Backend","name":"web","type":"database","actions":{"save":"echo {{.name}}"}}`)
		res, err = h.svc.Retry(ctx, operator, script, wantRetried[:1])
		if err != nil {
			t.Fatal(err)
		}
		if res.Unit != "" || len(res.Skipped) != 1 || !strings.Contains(res.Skipped[0].Reason, "serves database now, not vhost") {
			t.Fatalf("%+v", res)
		}
	})
}
