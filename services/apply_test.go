package services_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/services"
)

// fiftyObjects returns 50 documents that are valid together: servers,
// a backend, routes and resources. Object 37 is the route web@web1.
func fiftyObjects() []string {
	docs := []string{serverWeb1, backendWeb}
	for i := 2; i < 37; i++ {
		docs = append(docs, fmt.Sprintf(`{"kind":"Server","name":"s%d"}`, i))
	}
	docs = append(docs, `{"kind":"Route","backend":"web","server":"web1","match":"resource.type == \"vhost\""}`)
	for i := 38; i < 50; i++ {
		docs = append(docs, fmt.Sprintf(`{"kind":"Resource","type":"vhost","name":"site%d.example","attrs":{"port":%d}}`, i, 8000+i))
	}
	return docs
}

// TestApplyIsAllOrNothing checks that one bad object among 50 refuses the
// whole apply and writes nothing, whatever stage finds the problem.
func TestApplyIsAllOrNothing(t *testing.T) {
	h := newHarness(t)
	if _, err := h.svc.Bootstrap(context.Background(), nil); err != nil { // the log is not empty
		t.Fatal(err)
	}
	cases := []struct {
		name        string
		index       int
		doc         string
		code, field string
		words       []string
	}{
		{"bad match", 37, `{"kind":"Route","backend":"web","server":"web1","match":"resource.type =="}`,
			services.EINVALID, "objects[37].match", []string{"Route web@web1", "line 1, column"}},
		{"match not boolean", 37, `{"kind":"Route","backend":"web","server":"web1","match":"resource.name"}`,
			services.EINVALID, "objects[37].match", []string{"Route web@web1", "bool"}},
		{"route to a server nobody creates", 37, `{"kind":"Route","backend":"web","server":"web9"}`,
			services.EINVALID, "objects[37].server", []string{"Route web@web9", `server "web9" does not exist`}},
		{"route to a backend nobody creates", 37, `{"kind":"Route","backend":"db","server":"web1"}`,
			services.EINVALID, "objects[37].backend", []string{"Route db@web1", `backend "db" does not exist`}},
		{"masked secret with nothing stored", 45, `{"kind":"Resource","type":"vhost","name":"x.example","secrets":{"pw":"****"}}`,
			services.EINVALID, "objects[45].secrets.pw", []string{"Resource vhost/x.example"}},
		{"bad server port", 10, `{"kind":"Server","name":"s10","port":0.5}`,
			services.EINVALID, "objects[10].port", []string{"a number"}},
		{"version of a missing object", 20, `{"kind":"Server","name":"s20","version":3}`,
			services.ENOTFOUND, "objects[20]", []string{"Server s20", "does not exist"}},
		{"duplicate", 49, serverWeb1, services.EINVALID, "objects[49]", []string{"Server web1", "twice", "objects[0]"}},
		{"deleting a server a route of the apply uses", 49, `{"kind":"Server","name":"web1","delete":true}`,
			services.EINVALID, "objects[49]", []string{"twice"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			docs := fiftyObjects()
			docs[tc.index] = tc.doc
			before := h.lastSeq(t)
			_, err := h.applyAs(admin, docs...)
			wantError(t, err, tc.code, tc.field, tc.words...)
			if after := h.lastSeq(t); after != before {
				t.Fatalf("the refused apply wrote: stream at %d, was %d", after, before)
			}
			fresh := h.newService(t)
			if fresh.Seq() != before {
				t.Fatalf("a fresh service is at %d, want %d", fresh.Seq(), before)
			}
		})
	}

	// Nothing of the refused applies exists: the valid 50 are all created,
	// by a fresh service as well as by the one that refused them.
	res, err := applyWith(h.newService(t), admin, fiftyObjects()...)
	if err != nil {
		t.Fatal(err)
	}
	for i, o := range res.Objects {
		if o.Result != services.Created {
			t.Fatalf("object %d: %+v", i, o)
		}
	}
	if got := h.lastSeq(t) - res.Objects[0].Version + 1; got != 50 || res.Sequence != h.lastSeq(t) {
		t.Fatalf("the apply wrote %d events ending at %d, want 50 ending at %d", got, res.Sequence, h.lastSeq(t))
	}
}

func TestApplyResults(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	docs := []string{serverWeb1, backendWeb, routeWeb, resourceWeb}

	res := h.apply(t, docs...)
	if res.Unit == "" || res.Sequence != 4 {
		t.Fatalf("first apply: %+v", res)
	}
	want := []services.ObjectResult{
		{Kind: "Server", Name: "web1", Result: services.Created, Version: 1},
		{Kind: "Backend", Name: "web", Result: services.Created, Version: 2},
		{Kind: "Route", Name: "web@web1", Result: services.Created, Version: 3},
		{Kind: "Resource", Name: "vhost/example.com", Result: services.Created, Version: 4},
	}
	for i, o := range res.Objects {
		if o.Changed == nil {
			t.Errorf("object %d: a created object lists no changed fields, not even an empty list", i)
		}
		o.Changed = nil
		if fmt.Sprint(o) != fmt.Sprint(want[i]) {
			t.Fatalf("first apply, object %d:\n %+v\nwant\n %+v", i, o, want[i])
		}
	}
	// The four events are one unit, in apply order.
	var units []string
	for e, err := range h.store.Read(ctx, 1) {
		if err != nil {
			t.Fatal(err)
		}
		if e.Unit.String() != res.Unit || e.UnitSize != 4 || e.Actor != admin.Name {
			t.Fatalf("event %d: unit %s size %d actor %q", e.Sequence, e.Unit, e.UnitSize, e.Actor)
		}
		units = append(units, e.Type)
	}
	if !slices.Equal(units, []string{"ServerSaved", "BackendSaved", "RouteSaved", "ResourceSaved"}) {
		t.Fatalf("events %v", units)
	}

	t.Run("unchanged writes nothing", func(t *testing.T) {
		res := h.apply(t, docs...)
		if res.Unit != "" || res.Sequence != 4 || h.lastSeq(t) != 4 {
			t.Fatalf("unchanged apply: %+v, stream at %d", res, h.lastSeq(t))
		}
		for i, o := range res.Objects {
			if o.Result != services.Unchanged || o.Version != want[i].Version || len(o.Changed) != 0 {
				t.Fatalf("object %d: %+v", i, o)
			}
		}
	})

	t.Run("unchanged when written with defaults spelt out", func(t *testing.T) {
		res := h.apply(t, `{"kind":"Server","name":"web1","address":"10.0.0.1","port":22,"method":"ssh","active":true,"labels":{}}`,
			`{"kind":"Resource","type":"vhost","name":"example.com","attrs":{ "port" : 80 }}`)
		if res.Unit != "" || res.Objects[0].Result != services.Unchanged || res.Objects[1].Result != services.Unchanged {
			t.Fatalf("%+v", res)
		}
	})

	t.Run("configured", func(t *testing.T) {
		res := h.apply(t, `{"kind":"Server","name":"web1","address":"10.0.0.1","port":2222,"labels":{"env":"prod"}}`,
			backendWeb, `{"kind":"Resource","type":"vhost","name":"example.com","attrs":{"port":8080,"tls":true},"labels":{"env":"prod"}}`)
		if h.lastSeq(t) != 6 || res.Sequence != 6 {
			t.Fatalf("stream at %d, result %+v; want two events", h.lastSeq(t), res)
		}
		want := []services.ObjectResult{
			{Kind: "Server", Name: "web1", Result: services.Configured, Version: 5, Changed: []string{"port", "labels"}},
			{Kind: "Backend", Name: "web", Result: services.Unchanged, Version: 2},
			{Kind: "Resource", Name: "vhost/example.com", Result: services.Configured, Version: 6, Changed: []string{"attrs.port", "attrs.tls", "labels.env"}},
		}
		if fmt.Sprint(res.Objects) != fmt.Sprint(want) {
			t.Fatalf("\n %+v\nwant\n %+v", res.Objects, want)
		}
		if got := lastPayload[*events.ResourceSaved](t, h).Changed; !slices.Equal(got, want[2].Changed) {
			t.Fatalf("event lists changed %v", got)
		}
	})

	t.Run("deleted then absent", func(t *testing.T) {
		res := h.apply(t, `{"kind":"Route","backend":"web","server":"web1","delete":true}`,
			`{"kind":"Resource","type":"vhost","name":"example.com","delete":true}`)
		want := []services.ObjectResult{
			{Kind: "Route", Name: "web@web1", Result: services.Deleted},
			{Kind: "Resource", Name: "vhost/example.com", Result: services.Deleted},
		}
		if fmt.Sprint(res.Objects) != fmt.Sprint(want) || res.Sequence != 8 {
			t.Fatalf("\n %+v\nwant\n %+v", res, want)
		}
		res = h.apply(t, `{"kind":"Route","backend":"web","server":"web1","delete":true}`,
			`{"kind":"Resource","type":"vhost","name":"example.com","delete":true}`, `{"kind":"Server","name":"ghost","delete":true}`)
		for _, o := range res.Objects {
			if o.Result != services.Absent || o.Version != 0 {
				t.Fatalf("second delete: %+v", res.Objects)
			}
		}
		if res.Unit != "" || h.lastSeq(t) != 8 {
			t.Fatalf("deleting absent objects wrote: %+v", res)
		}
	})

	t.Run("recreated after delete", func(t *testing.T) {
		res := h.apply(t, routeWeb)
		if o := res.Objects[0]; o.Result != services.Created || o.Version != 9 {
			t.Fatalf("%+v", o)
		}
	})

	t.Run("empty apply refused", func(t *testing.T) {
		_, err := h.svc.Apply(ctx, admin, services.ApplyRequest{})
		wantError(t, err, services.EINVALID, "objects", "nothing to apply")
	})

	t.Run("too many objects refused", func(t *testing.T) {
		objs := make([]services.Object, services.MaxObjects+1)
		_, err := h.svc.Apply(ctx, admin, services.ApplyRequest{Objects: objs})
		wantError(t, err, services.ETOOLARGE, "objects", "1001")
	})

	t.Run("object without a spec refused", func(t *testing.T) {
		_, err := h.svc.Apply(ctx, admin, services.ApplyRequest{Objects: []services.Object{{Kind: "Server"}}})
		wantError(t, err, services.EINVALID, "objects[0].kind")
	})
}

// TestApplyAttrsWithHTMLCharacters checks that attributes holding <, > or &
// read back as unchanged.
func TestApplyAttrsWithHTMLCharacters(t *testing.T) {
	h := newHarness(t)
	res := `{"kind":"Resource","type":"link","name":"home","attrs":{"url":"https://example.com/?a=1&b=<2>","note":"line` + "\u2028" + `sep"}}`
	h.apply(t, res)
	if got := h.apply(t, res).Objects[0]; got.Result != services.Unchanged {
		t.Fatalf("same resource again: %+v", got)
	}
	if got := applyResult(t, h.newService(t), res); got.Result != services.Unchanged {
		t.Fatalf("same resource from a fresh service: %+v", got)
	}
}

func applyResult(t *testing.T, svc *services.Service, doc string) services.ObjectResult {
	t.Helper()
	res, err := applyWith(svc, admin, doc)
	if err != nil {
		t.Fatal(err)
	}
	return res.Objects[0]
}

func TestApplyDuplicates(t *testing.T) {
	h := newHarness(t)
	for _, tc := range []struct {
		name  string
		docs  []string
		field string
		words []string
	}{
		{"same server twice", []string{serverWeb1, backendWeb, `{"kind":"Server","name":"web1","port":23}`}, "objects[2]", []string{"Server web1", "twice", "objects[0]"}},
		{"save and delete", []string{routeWeb, `{"kind":"Route","backend":"web","server":"web1","delete":true}`}, "objects[1]", []string{"Route web@web1"}},
		{"same resource", []string{resourceWeb, resourceWeb}, "objects[1]", []string{"Resource vhost/example.com"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.applyAs(admin, tc.docs...)
			wantError(t, err, services.EINVALID, tc.field, tc.words...)
		})
	}
	if h.lastSeq(t) != 0 {
		t.Fatalf("refused applies wrote %d events", h.lastSeq(t))
	}
	// The same name in different kinds is not a duplicate.
	h.apply(t, `{"kind":"Server","name":"web"}`, backendWeb, `{"kind":"Resource","type":"web","name":"web"}`)
}

func TestApplyReferences(t *testing.T) {
	h := newHarness(t)

	t.Run("route to unknown backend or server", func(t *testing.T) {
		_, err := h.applyAs(admin, serverWeb1, routeWeb)
		wantError(t, err, services.EINVALID, "objects[1].backend", "Route web@web1", `backend "web" does not exist`)
		_, err = h.applyAs(admin, backendWeb, routeWeb)
		wantError(t, err, services.EINVALID, "objects[1].server", `server "web1" does not exist`)
		_, err = h.svc.Apply(context.Background(), admin, services.ApplyRequest{Single: true, Objects: []services.Object{mustDecode(t, routeWeb)}})
		wantError(t, err, services.EINVALID, "backend")
		if h.lastSeq(t) != 0 {
			t.Fatal("refused applies wrote")
		}
	})

	orders := [][]string{
		{serverWeb1, backendWeb, routeWeb},
		{routeWeb, backendWeb, serverWeb1},
		{backendWeb, routeWeb, serverWeb1},
	}
	for i, docs := range orders {
		t.Run(fmt.Sprintf("create all in order %d", i), func(t *testing.T) {
			res := h.apply(t, docs...)
			for _, o := range res.Objects {
				if o.Result != services.Created {
					t.Fatalf("%+v", res.Objects)
				}
			}
			// Clean up, routes listed last: the unit is decided as a whole.
			h.apply(t, `{"kind":"Server","name":"web1","delete":true}`, `{"kind":"Backend","name":"web","delete":true}`,
				`{"kind":"Route","backend":"web","server":"web1","delete":true}`)
		})
	}

	h.apply(t, serverWeb1, `{"kind":"Server","name":"web2"}`, backendWeb, routeWeb,
		`{"kind":"Route","backend":"web","server":"web2"}`)

	t.Run("deleting a server in use", func(t *testing.T) {
		before := h.lastSeq(t)
		_, err := h.applyAs(admin, `{"kind":"Server","name":"web1","delete":true}`)
		wantError(t, err, services.ECONFLICT, "objects[0]", "Server web1", `"web@web1"`, "delete them in the same apply")
		_, err = h.applyAs(admin, `{"kind":"Backend","name":"web","delete":true}`, `{"kind":"Route","backend":"web","server":"web1","delete":true}`)
		wantError(t, err, services.ECONFLICT, "objects[0]", "Backend web", `"web@web2"`)
		if strings.Contains(err.Error(), `"web@web1"`) {
			t.Fatalf("the error names a route the apply deletes: %v", err)
		}
		if h.lastSeq(t) != before {
			t.Fatal("refused deletes wrote")
		}
	})

	t.Run("saving a route to a server deleted in the same apply", func(t *testing.T) {
		_, err := h.applyAs(admin, `{"kind":"Server","name":"web2","delete":true}`, `{"kind":"Route","backend":"web","server":"web2","match":"true"}`)
		wantError(t, err, services.EINVALID, "objects[1].server", `server "web2" does not exist`)
	})

	t.Run("deleting a server with its routes", func(t *testing.T) {
		res := h.apply(t, `{"kind":"Server","name":"web1","delete":true}`, `{"kind":"Route","backend":"web","server":"web1","delete":true}`)
		if res.Objects[0].Result != services.Deleted || res.Objects[1].Result != services.Deleted {
			t.Fatalf("%+v", res.Objects)
		}
		res = h.apply(t, `{"kind":"Route","backend":"web","server":"web2","delete":true}`, `{"kind":"Backend","name":"web","delete":true}`,
			`{"kind":"Server","name":"web2","delete":true}`)
		for _, o := range res.Objects {
			if o.Result != services.Deleted {
				t.Fatalf("%+v", res.Objects)
			}
		}
	})
}

func mustDecode(t *testing.T, doc string) services.Object {
	t.Helper()
	o, err := services.DecodeObject([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func TestApplyConditions(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	v1 := h.apply(t, serverWeb1).Objects[0].Version
	v2 := h.apply(t, `{"kind":"Server","name":"web1","address":"10.0.0.1","port":2222}`).Objects[0].Version
	withCond := func(doc string, c services.Condition) services.ApplyRequest {
		o := mustDecode(t, doc)
		o.Cond = c
		return services.ApplyRequest{Objects: []services.Object{o}, Single: true}
	}

	t.Run("stale version", func(t *testing.T) {
		before := h.lastSeq(t)
		_, err := h.svc.Apply(ctx, admin, withCond(serverWeb1, services.Condition{Version: v1}))
		wantStale(t, err, "version", v1, v2)
		if h.lastSeq(t) != before {
			t.Fatal("a stale write wrote")
		}
	})

	t.Run("current version", func(t *testing.T) {
		res, err := h.svc.Apply(ctx, admin, withCond(`{"kind":"Server","name":"web1","address":"10.0.0.1","port":2200}`, services.Condition{Version: v2}))
		if err != nil || res.Objects[0].Result != services.Configured {
			t.Fatalf("%+v, %v", res, err)
		}
		v2 = res.Objects[0].Version
	})

	t.Run("must not exist", func(t *testing.T) {
		_, err := h.svc.Apply(ctx, admin, withCond(serverWeb1, services.Condition{MustNotBe: true}))
		wantError(t, err, services.ECONFLICT, "", "Server web1", "already exists", fmt.Sprint(v2))
		res, err := h.svc.Apply(ctx, admin, withCond(`{"kind":"Server","name":"web2"}`, services.Condition{MustNotBe: true}))
		if err != nil || res.Objects[0].Result != services.Created {
			t.Fatalf("%+v, %v", res, err)
		}
	})

	t.Run("must exist", func(t *testing.T) {
		_, err := h.svc.Apply(ctx, admin, withCond(`{"kind":"Server","name":"web3"}`, services.Condition{MustExist: true}))
		wantError(t, err, services.ENOTFOUND, "", "Server web3", "does not exist")
		_, err = h.svc.Apply(ctx, admin, withCond(`{"kind":"Server","name":"web3","delete":true}`, services.Condition{MustExist: true}))
		wantError(t, err, services.ENOTFOUND, "", "does not exist")
		res, err := h.svc.Apply(ctx, admin, withCond(`{"kind":"Server","name":"web2","port":23}`, services.Condition{MustExist: true}))
		if err != nil || res.Objects[0].Result != services.Configured {
			t.Fatalf("%+v, %v", res, err)
		}
	})

	t.Run("version in an apply document", func(t *testing.T) {
		_, err := h.applyAs(admin, fmt.Sprintf(`{"kind":"Server","name":"web1","address":"10.0.0.1","port":2201,"version":%d}`, v1))
		wantStale(t, err, "objects[0].version", v1, v2)
		_, err = h.applyAs(admin, `{"kind":"Server","name":"web9","version":1}`)
		wantError(t, err, services.ENOTFOUND, "objects[0]", "Server web9")
		res, err := h.applyAs(admin, fmt.Sprintf(`{"kind":"Server","name":"web1","address":"10.0.0.1","port":2201,"version":%d}`, v2))
		if err != nil || res.Objects[0].Result != services.Configured {
			t.Fatalf("%+v, %v", res, err)
		}
		// A stale version refuses a deletion, too.
		_, err = h.applyAs(admin, fmt.Sprintf(`{"kind":"Server","name":"web1","delete":true,"version":%d}`, v2))
		if services.ErrorCode(err) != services.ECONFLICT {
			t.Fatalf("stale delete: %v", err)
		}
	})
}

// wantStale checks err refuses a write that expected version want of an
// object now at version have: a conflict naming both versions, reported
// either as a *services.ConflictError or as an error on the version field.
func wantStale(t *testing.T, err error, field string, want, have uint64) {
	t.Helper()
	if services.ErrorCode(err) != services.ECONFLICT {
		t.Fatalf("ErrorCode = %q, want conflict (err: %v)", services.ErrorCode(err), err)
	}
	var ce *services.ConflictError
	var e *services.Error
	switch {
	case errors.As(err, &ce):
		if ce.Expected != want || ce.Actual != have || ce.Aggregate.Type != events.AggServer {
			t.Fatalf("err = %#v", ce)
		}
	case errors.As(err, &e):
		if e.Field != field {
			t.Fatalf("Field = %q, want %q (err: %v)", e.Field, field, err)
		}
	}
	for _, v := range []uint64{want, have} {
		if !strings.Contains(err.Error(), fmt.Sprint(v)) {
			t.Fatalf("the error does not name version %d: %v", v, err)
		}
	}
}

func TestRoles(t *testing.T) {
	h := newHarness(t)
	h.apply(t, serverWeb1, backendWeb)
	docs := map[string]string{
		"Server": `{"kind":"Server","name":"web2"}`, "Backend": `{"kind":"Backend","name":"db","type":"db","actions":{"save":"true"}}`,
		"Route": routeWeb, "Resource": resourceWeb,
	}
	for _, kind := range []string{"Server", "Backend", "Route", "Resource"} {
		for _, p := range []services.Principal{viewer, {Name: "mallory", Role: "root"}, {}} {
			t.Run(kind+" by "+p.Role, func(t *testing.T) {
				_, err := h.applyAs(p, docs[kind])
				wantError(t, err, services.EFORBIDDEN, "objects[0]", kind+" ")
			})
		}
		if kind == "Resource" {
			continue
		}
		t.Run(kind+" by operator", func(t *testing.T) {
			_, err := h.applyAs(operator, docs[kind])
			wantError(t, err, services.EFORBIDDEN, "objects[0]", kind+" ", "admin role", "oscar")
		})
	}
	t.Run("delete by operator", func(t *testing.T) {
		_, err := h.applyAs(operator, `{"kind":"Server","name":"web1","delete":true}`)
		wantError(t, err, services.EFORBIDDEN, "objects[0]", "Server web1")
	})
	t.Run("operator mixing kinds", func(t *testing.T) {
		_, err := h.applyAs(operator, resourceWeb, `{"kind":"Server","name":"web1","port":23}`)
		wantError(t, err, services.EFORBIDDEN, "objects[1]", "Server web1")
	})
	if h.lastSeq(t) != 2 {
		t.Fatalf("forbidden applies wrote: stream at %d", h.lastSeq(t))
	}
	t.Run("operator manages resources", func(t *testing.T) {
		if res, err := h.applyAs(operator, resourceWeb); err != nil || res.Objects[0].Result != services.Created {
			t.Fatalf("%+v, %v", res, err)
		}
		if res, err := h.applyAs(operator, `{"kind":"Resource","type":"vhost","name":"example.com","delete":true}`); err != nil || res.Objects[0].Result != services.Deleted {
			t.Fatalf("%+v, %v", res, err)
		}
	})
	t.Run("admin manages everything", func(t *testing.T) {
		res, err := h.applyAs(admin, docs["Server"], docs["Backend"], docs["Route"], docs["Resource"])
		if err != nil || len(res.Objects) != 4 {
			t.Fatalf("%+v, %v", res, err)
		}
	})
	t.Run("Can", func(t *testing.T) {
		for _, tc := range []struct {
			p    services.Principal
			role string
			want bool
		}{
			{viewer, services.RoleViewer, true}, {viewer, services.RoleOperator, false}, {viewer, services.RoleAdmin, false},
			{operator, services.RoleViewer, true}, {operator, services.RoleOperator, true}, {operator, services.RoleAdmin, false},
			{admin, services.RoleAdmin, true}, {services.Principal{Role: "root"}, services.RoleViewer, false},
			{admin, "root", false}, {services.System, services.RoleAdmin, true},
		} {
			if got := tc.p.Can(tc.role); got != tc.want {
				t.Errorf("%+v.Can(%q) = %v", tc.p, tc.role, got)
			}
		}
	})
}
