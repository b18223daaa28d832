package gateway_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/services"
)

type obj = map[string]any

// kindCase is one model kind as the CRUD tests drive it.
type kindCase struct {
	kind       string
	collection string // where POST creates
	item       string // the created object's URL
	create     obj    // body of the POST
	update     obj    // body of a PUT that changes field
	field      string // the field update changes, as "changed" names it
	listed     func(obj) bool
}

func kindCases() []kindCase {
	named := func(k, v string) func(obj) bool { return func(o obj) bool { return o[k] == v } }
	return []kindCase{
		{
			kind: services.KindServer, collection: "/v1/servers", item: "/v1/servers/web9",
			create: obj{"name": "web9", "address": "127.0.0.1", "method": "local"},
			update: obj{"name": "web9", "address": "127.0.0.2", "method": "local"},
			field:  "address", listed: named("name", "web9"),
		},
		{
			kind: services.KindBackend, collection: "/v1/backends", item: "/v1/backends/vhost9",
			create: obj{"name": "vhost9", "type": "website", "actions": obj{"save": "echo {{ .name }}"}},
			update: obj{"name": "vhost9", "type": "website", "actions": obj{"save": "echo {{ .name }}"}, "timeout": "90s"},
			field:  "timeout", listed: named("name", "vhost9"),
		},
		{
			kind: services.KindRoute, collection: "/v1/routes", item: "/v1/routes/spare@spare",
			create: obj{"backend": "spare", "server": "spare"},
			update: obj{"backend": "spare", "server": "spare", "match": `resource.name != "skip"`},
			field:  "match", listed: func(o obj) bool { return o["backend"] == "spare" && o["server"] == "spare" },
		},
		{
			kind: services.KindResource, collection: "/v1/resources/website", item: "/v1/resources/website/blog",
			create: obj{"name": "blog", "attrs": obj{"domain": "blog.example.com"}},
			update: obj{"name": "blog", "attrs": obj{"domain": "blog.example.org"}},
			field:  "attrs.domain", listed: named("name", "blog"),
		},
	}
}

// TestCRUDPerKind drives every kind through create, read, list, replace and
// delete over HTTP, with the statuses, ETags, Location and preconditions a
// client relies on, and checks which calls write events and which do not.
func TestCRUDPerKind(t *testing.T) {
	e := newEnv(t)
	e.resetFixtures(t)
	for _, c := range kindCases() {
		t.Run(c.kind, func(t *testing.T) {
			tok := e.admin
			if c.kind == services.KindResource {
				tok = e.operator
			}
			seq := e.lastSeq(t)
			wrote := func(n uint64) {
				t.Helper()
				now := e.lastSeq(t)
				if now-seq != n {
					t.Errorf("the call wrote %d events, want %d", now-seq, n)
				}
				seq = now
			}

			// Create.
			r := e.call(t, "POST", c.collection, tok, c.create, nil)
			created := r.want(t, http.StatusCreated)
			wrote(1)
			if loc := r.Header.Get("Location"); loc != c.item {
				t.Errorf("Location = %q, want %q", loc, c.item)
			}
			v1 := uint64(created["version"].(float64))
			if et := r.Header.Get("ETag"); et != strconv.Quote(fmt.Sprint(v1)) {
				t.Errorf("ETag = %q, version %d", et, v1)
			}
			if created["result"] != services.Created || created["kind"] != c.kind || v1 != seq {
				t.Errorf("create = %v, want created %s at version %d", created, c.kind, seq)
			}
			if s := r.Header.Get("Orchestra-Sequence"); s != fmt.Sprint(created["sequence"]) || s != fmt.Sprint(seq) {
				t.Errorf("Orchestra-Sequence = %q, body sequence %v, stream at %d", s, created["sequence"], seq)
			}
			e.call(t, "POST", c.collection, tok, c.create, nil).want(t, http.StatusConflict)
			wrote(0)

			// Read and list.
			r = e.call(t, "GET", c.item, e.viewer, nil, nil)
			got := r.want(t, http.StatusOK)
			if got["kind"] != c.kind || got["version"] != float64(v1) || r.Header.Get("ETag") != strconv.Quote(fmt.Sprint(v1)) {
				t.Errorf("GET = %v ETag %q, want kind %s version %d", got, r.Header.Get("ETag"), c.kind, v1)
			}
			if !slices.ContainsFunc(e.listAll(t, c.collection, e.viewer), c.listed) {
				t.Errorf("GET %s does not list the new object", c.collection)
			}

			// Replace: conditional, stale, unchanged.
			etag1 := strconv.Quote(fmt.Sprint(v1))
			r = e.call(t, "PUT", c.item, tok, c.update, map[string]string{"If-Match": etag1})
			put := r.want(t, http.StatusOK)
			wrote(1)
			v2 := uint64(put["version"].(float64))
			etag2 := strconv.Quote(fmt.Sprint(v2))
			if put["result"] != services.Configured || v2 <= v1 || r.Header.Get("ETag") != etag2 {
				t.Errorf("PUT = %v ETag %q, want configured at a version after %d", put, r.Header.Get("ETag"), v1)
			}
			if ch, _ := put["changed"].([]any); !slices.Contains(ch, any(c.field)) {
				t.Errorf("changed = %v, want it to name %s", put["changed"], c.field)
			}
			if r.Header.Get("Location") != "" {
				t.Error("a PUT of an existing object sent Location")
			}
			same := e.call(t, "PUT", c.item, tok, c.update, nil).want(t, http.StatusOK)
			wrote(0)
			if same["result"] != services.Unchanged || same["version"] != float64(v2) {
				t.Errorf("PUT of the same document = %v, want unchanged at %d", same, v2)
			}
			p := e.call(t, "PUT", c.item, tok, c.create, map[string]string{"If-Match": etag1}).want(t, http.StatusConflict)
			wrote(0)
			if p["type"] != "urn:orchestra:problem:"+services.ECONFLICT {
				t.Errorf("stale If-Match: %v", p)
			}
			e.call(t, "PUT", c.item, tok, c.create, map[string]string{"If-None-Match": "*"}).want(t, http.StatusConflict)
			wrote(0)
			if got := e.call(t, "GET", c.item, e.viewer, nil, nil).want(t, http.StatusOK); got["version"] != float64(v2) {
				t.Errorf("GET after PUT = %v, want version %d", got, v2)
			}

			// Delete: stale, then current; then it is gone.
			e.call(t, "DELETE", c.item, tok, nil, map[string]string{"If-Match": etag1}).want(t, http.StatusConflict)
			wrote(0)
			r = e.call(t, "DELETE", c.item, tok, nil, map[string]string{"If-Match": etag2})
			del := r.want(t, http.StatusOK)
			wrote(1)
			if del["result"] != services.Deleted || del["version"] != float64(0) || r.Header.Get("ETag") != "" {
				t.Errorf("DELETE = %v ETag %q, want deleted at version 0 without ETag", del, r.Header.Get("ETag"))
			}
			e.call(t, "GET", c.item, e.viewer, nil, nil).want(t, http.StatusNotFound)
			e.call(t, "DELETE", c.item, tok, nil, nil).want(t, http.StatusNotFound)
			e.call(t, "PUT", c.item, tok, c.create, map[string]string{"If-Match": etag2}).want(t, http.StatusNotFound)
			e.call(t, "PUT", c.item, tok, c.create, map[string]string{"If-Match": "*"}).want(t, http.StatusNotFound)
			wrote(0)
			if slices.ContainsFunc(e.listAll(t, c.collection, e.viewer), c.listed) {
				t.Errorf("GET %s still lists the deleted object", c.collection)
			}

			// PUT without a precondition creates.
			r = e.call(t, "PUT", c.item, tok, c.create, nil)
			r.want(t, http.StatusCreated)
			wrote(1)
			if r.Header.Get("Location") != c.item || r.Header.Get("ETag") == "" {
				t.Errorf("PUT that creates: Location %q ETag %q", r.Header.Get("Location"), r.Header.Get("ETag"))
			}
		})
	}
}

// TestReadDocumentsCanBeWrittenBack: a GET document, edited, is a valid
// PUT body and carries its version as a precondition.
func TestReadDocumentsCanBeWrittenBack(t *testing.T) {
	e := newEnv(t)
	e.resetFixtures(t)
	doc := e.call(t, "GET", "/v1/servers/web1", e.viewer, nil, nil).want(t, http.StatusOK)
	doc["labels"] = obj{"role": "web"}
	res := e.call(t, "PUT", "/v1/servers/web1", e.admin, doc, nil).want(t, http.StatusOK)
	if res["result"] != services.Configured {
		t.Fatalf("PUT of the edited document = %v", res)
	}
	// doc still carries the version it was read at: now stale.
	doc["port"] = 2222
	before := e.lastSeq(t)
	e.call(t, "PUT", "/v1/servers/web1", e.admin, doc, nil).want(t, http.StatusConflict)
	if e.lastSeq(t) != before {
		t.Error("a stale document was written")
	}
	// A version in the body that disagrees with If-Match is refused.
	p := e.call(t, "PUT", "/v1/servers/web1", e.admin, doc, map[string]string{"If-Match": fmt.Sprintf(`"%v"`, res["version"])}).want(t, http.StatusUnprocessableEntity)
	if p["field"] != "version" {
		t.Errorf("field = %v, want version", p["field"])
	}
}

// TestIdempotencyKey: a repeated request with the same key gets the first
// response again, marked as replayed, and writes nothing more; the same key
// with another request is refused.
func TestIdempotencyKey(t *testing.T) {
	e := newEnv(t)
	e.resetFixtures(t)
	body := obj{"name": "idem", "attrs": obj{"domain": "idem.example.com"}}
	key := map[string]string{"Idempotency-Key": "create-idem-1"}

	before := e.lastSeq(t)
	first := e.call(t, "POST", "/v1/resources/website", e.operator, body, key)
	first.want(t, http.StatusCreated)
	afterFirst := e.lastSeq(t)
	if afterFirst != before+1 {
		t.Fatalf("the first request wrote %d events, want 1", afterFirst-before)
	}
	if first.Header.Get("Idempotent-Replayed") != "" {
		t.Error("the first response is marked as replayed")
	}
	for i := range 2 {
		again := e.call(t, "POST", "/v1/resources/website", e.operator, body, key)
		if again.Status != first.Status || !bytes.Equal(again.Raw, first.Raw) {
			t.Errorf("repeat %d = %d %s, want %d %s", i, again.Status, again.Raw, first.Status, first.Raw)
		}
		for _, h := range []string{"ETag", "Location", "Orchestra-Sequence", "Content-Type"} {
			if again.Header.Get(h) != first.Header.Get(h) {
				t.Errorf("repeat %d: %s = %q, first %q", i, h, again.Header.Get(h), first.Header.Get(h))
			}
		}
		if again.Header.Get("Idempotent-Replayed") != "true" {
			t.Errorf("repeat %d: Idempotent-Replayed = %q", i, again.Header.Get("Idempotent-Replayed"))
		}
	}
	if n := e.lastSeq(t); n != afterFirst {
		t.Errorf("the repeats wrote %d events", n-afterFirst)
	}

	// The same key for another request.
	other := obj{"name": "idem2", "attrs": obj{"domain": "idem2.example.com"}}
	p := e.call(t, "POST", "/v1/resources/website", e.operator, other, key).want(t, http.StatusUnprocessableEntity)
	if p["field"] != "Idempotency-Key" {
		t.Errorf("field = %v, want Idempotency-Key", p["field"])
	}
	p = e.call(t, "PUT", "/v1/resources/website/idem", e.operator, body, key).want(t, http.StatusUnprocessableEntity)
	if p["field"] != "Idempotency-Key" {
		t.Errorf("another method and path: field = %v, want Idempotency-Key", p["field"])
	}
	if n := e.lastSeq(t); n != afterFirst {
		t.Errorf("refused requests wrote %d events", n-afterFirst)
	}

	// Keys belong to a token: another token's request with the same key
	// runs (and finds the resource there).
	e.call(t, "POST", "/v1/resources/website", e.admin, body, key).want(t, http.StatusConflict)

	// An apply, a refusal and a DELETE are kept and replayed too (a
	// retried DELETE gets its first answer, not a 404).
	replayed := func(key, method, path string, body any, status int) {
		t.Helper()
		k := map[string]string{"Idempotency-Key": key}
		r1 := e.call(t, method, path, e.operator, body, k)
		r1.want(t, status)
		r2 := e.call(t, method, path, e.operator, body, k)
		if r2.Status != status || !bytes.Equal(r1.Raw, r2.Raw) || r2.Header.Get("Idempotent-Replayed") != "true" {
			t.Errorf("repeated %s %s = %d %s %v, want the first answer replayed", method, path, r2.Status, r2.Raw, r2.Header)
		}
	}
	replayed("apply-2", "POST", "/v1/apply", obj{"objects": []obj{{"kind": "Resource", "type": "website", "name": "idem3"}}}, http.StatusOK)
	replayed("conflict-3", "POST", "/v1/resources/website", body, http.StatusConflict)
	replayed("delete-4", "DELETE", "/v1/resources/website/idem", nil, http.StatusOK)

	// A key that is not printable ASCII of at most 255 bytes.
	p = e.call(t, "POST", "/v1/resources/website", e.operator, other, map[string]string{"Idempotency-Key": strings.Repeat("k", 256)}).want(t, http.StatusUnprocessableEntity)
	if p["field"] != "Idempotency-Key" {
		t.Errorf("long key: field = %v", p["field"])
	}
}

// TestIdempotencyKeyConcurrent: requests with one key sent at once run
// once; the others get that response replayed, or a 409 while it runs.
func TestIdempotencyKeyConcurrent(t *testing.T) {
	e := newEnv(t)
	const n = 8
	before := e.lastSeq(t)
	body := obj{"name": "race", "attrs": obj{"domain": "race.example.com"}}
	key := map[string]string{"Idempotency-Key": "concurrent-1"}
	var wg sync.WaitGroup
	results := make([]response, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { results[i], errs[i] = e.send("POST", "/v1/resources/website", e.operator, body, key) })
	}
	wg.Wait()
	var created []byte
	for i, r := range results {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		for _, msg := range e.check("POST", "/v1/resources/website", r) {
			t.Error(msg)
		}
		switch {
		case r.Status == http.StatusCreated:
			if created != nil && !bytes.Equal(created, r.Raw) {
				t.Errorf("two different 201 answers: %s and %s", created, r.Raw)
			}
			created = r.Raw
		case r.Status == http.StatusConflict && r.Body["field"] == "Idempotency-Key":
		default:
			t.Errorf("request %d = %d %s", i, r.Status, r.Raw)
		}
	}
	if created == nil {
		t.Error("no request created the resource")
	}
	if got := e.lastSeq(t) - before; got != 1 {
		t.Errorf("%d concurrent requests with one key wrote %d events, want 1", n, got)
	}
}

// TestReadYourWrites: a read that passes a write's sequence sees the write.
func TestReadYourWrites(t *testing.T) {
	e := newEnv(t)
	e.resetFixtures(t)
	for i := range 20 {
		name := fmt.Sprintf("ryw%d", i)
		res := e.call(t, "POST", "/v1/resources/website", e.operator, obj{"name": name}, nil).want(t, http.StatusCreated)
		seq := fmt.Sprint(res["sequence"])
		if got := e.call(t, "GET", "/v1/resources/website/"+name+"?sequence="+seq, e.viewer, nil, nil).want(t, http.StatusOK); got["version"] != res["version"] {
			t.Fatalf("GET ?sequence=%s = %v, want version %v", seq, got, res["version"])
		}
		page := e.call(t, "GET", "/v1/resources/website?limit=1000", e.viewer, nil, map[string]string{"Orchestra-Min-Sequence": seq}).want(t, http.StatusOK)
		items, _ := page["items"].([]any)
		if !slices.ContainsFunc(items, func(it any) bool { return it.(obj)["name"] == name }) {
			t.Fatalf("a list with Orchestra-Min-Sequence %s does not show %s", seq, name)
		}
	}
	for _, bad := range []string{"abc", "-1", "1.5"} {
		p := e.call(t, "GET", "/v1/servers?sequence="+bad, e.viewer, nil, nil).want(t, http.StatusBadRequest)
		if p["field"] != "sequence" {
			t.Errorf("sequence=%s: field = %v", bad, p["field"])
		}
	}
}

// TestReadWaitIsBounded: a read asking for a sequence the read model does not
// reach gives up after ReadWait with 503 and Retry-After.
func TestReadWaitIsBounded(t *testing.T) {
	const wait = 200 * time.Millisecond
	e := newEnv(t, withReadWait(wait))
	for _, c := range []struct {
		path    string
		headers map[string]string
	}{
		{"/v1/servers?sequence=1000000000", nil},
		{"/v1/resources/website/shop", map[string]string{"Orchestra-Min-Sequence": "1000000000"}},
		{"/v1/tokens?sequence=1000000000", nil},
	} {
		start := time.Now()
		r := e.call(t, "GET", c.path, e.admin, nil, c.headers)
		took := time.Since(start)
		if r.Status != http.StatusServiceUnavailable || r.Header.Get("Retry-After") == "" {
			t.Errorf("GET %s = %d %v %s, want 503 with Retry-After", c.path, r.Status, r.Header, r.Raw)
		}
		if took < wait || took > wait+5*time.Second {
			t.Errorf("GET %s answered after %s; ReadWait is %s", c.path, took, wait)
		}
	}
}

// TestPagination lists 250 resources in pages: every one exactly once, in
// name order, with a next cursor on every page but the last.
func TestPagination(t *testing.T) {
	e := newEnv(t)
	var objects []obj
	var want []string
	for i := range 250 {
		name := fmt.Sprintf("r%03d", i)
		objects = append(objects, obj{"kind": "Resource", "type": "page", "name": name, "attrs": obj{"n": i}})
		want = append(want, name)
	}
	res := e.call(t, "POST", "/v1/apply", e.operator, obj{"objects": objects}, nil).want(t, http.StatusOK)
	if n := len(res["objects"].([]any)); n != 250 {
		t.Fatalf("apply returned %d results", n)
	}
	e.call(t, "POST", "/v1/resources/other", e.operator, obj{"name": "x"}, nil).want(t, http.StatusCreated)

	for _, base := range []string{"/v1/resources/page?", "/v1/resources?type=page&"} {
		var got []string
		var sizes []int
		after := ""
		for range 10 {
			p := base + "limit=100"
			if after != "" {
				p += "&after=" + url.QueryEscape(after)
			}
			page := e.call(t, "GET", p, e.viewer, nil, nil).want(t, http.StatusOK)
			items := page["items"].([]any)
			sizes = append(sizes, len(items))
			for _, it := range items {
				got = append(got, it.(obj)["name"].(string))
			}
			next, _ := page["next"].(string)
			if next == "" {
				break
			}
			after = next
		}
		if !slices.Equal(sizes, []int{100, 100, 50}) || !slices.Equal(got, want) {
			t.Errorf("%s: page sizes %v, %d names (first %q), want 100, 100, 50 of r000…r249 in order", base, sizes, len(got), got[:min(3, len(got))])
		}
	}
	// Defaults and bounds.
	if page := e.call(t, "GET", "/v1/resources/page", e.viewer, nil, nil).want(t, http.StatusOK); len(page["items"].([]any)) != 100 || page["next"] == nil {
		t.Errorf("the default page has %d items, next %v", len(page["items"].([]any)), page["next"])
	}
	if page := e.call(t, "GET", "/v1/resources/page?limit=1000", e.viewer, nil, nil).want(t, http.StatusOK); len(page["items"].([]any)) != 250 || page["next"] != nil {
		t.Errorf("limit=1000 gave %d items, next %v", len(page["items"].([]any)), page["next"])
	}
	if all := e.listAll(t, "/v1/resources", e.viewer); len(all) != 251 {
		t.Errorf("GET /v1/resources lists %d resources, want 251", len(all))
	}
	for _, c := range []struct{ query, field string }{
		{"limit=0", "limit"}, {"limit=1001", "limit"}, {"limit=ten", "limit"}, {"after=%25%25%25", "after"},
	} {
		p := e.call(t, "GET", "/v1/resources/page?"+c.query, e.viewer, nil, nil).want(t, http.StatusBadRequest)
		if p["field"] != c.field {
			t.Errorf("%s: field = %v, want %s", c.query, p["field"], c.field)
		}
	}
}

// TestBadInputNamesTheField: bad bodies, names, expressions, parameters
// and headers are 4xx problems naming the field at fault, never a 500, and
// change nothing.
func TestBadInputNamesTheField(t *testing.T) {
	e := newEnv(t)
	e.resetFixtures(t)
	long := strings.Repeat("n", events.MaxNameLen+1)
	cases := []struct {
		name         string
		method, path string
		body         any
		headers      map[string]string
		status       int
		field        string // "" for errors about the document as a whole
	}{
		{"malformed JSON", "POST", "/v1/servers", `{"name": "web9",`, nil, 422, ""},
		{"not JSON", "POST", "/v1/servers", `name: web9`, nil, 422, ""},
		{"trailing data", "POST", "/v1/servers", `{"name": "web9"} {}`, nil, 422, ""},
		{"empty body", "POST", "/v1/servers", ``, nil, 422, ""},
		{"unknown field", "POST", "/v1/servers", obj{"name": "web9", "colour": "red"}, nil, 422, "colour"},
		{"wrong type", "POST", "/v1/servers", obj{"name": "web9", "port": "22"}, nil, 422, "port"},
		{"kind of another endpoint", "POST", "/v1/servers", obj{"kind": "Backend", "name": "web9"}, nil, 422, "kind"},
		{"delete on a single write", "POST", "/v1/servers", obj{"name": "web9", "delete": true}, nil, 422, "delete"},
		{"unknown kind", "POST", "/v1/apply", obj{"objects": []obj{{"kind": "Widget", "name": "w"}}}, nil, 422, "objects[0].kind"},
		{"no kind", "POST", "/v1/apply", obj{"objects": []obj{{"name": "w"}}}, nil, 422, "objects[0].kind"},
		{"unknown field in apply", "POST", "/v1/apply", obj{"objects": []obj{{"kind": "Server", "name": "a", "address": "127.0.0.1"}, {"kind": "Server", "name": "b", "colour": 1}}}, nil, 422, "objects[1].colour"},
		{"unknown field in apply body", "POST", "/v1/apply", obj{"objects": []obj{}, "dry": true}, nil, 422, "dry"},
		{"empty apply", "POST", "/v1/apply", obj{"objects": []obj{}}, nil, 422, "objects"},
		{"object twice", "POST", "/v1/apply", obj{"objects": []obj{{"kind": "Resource", "type": "website", "name": "a"}, {"kind": "Resource", "type": "website", "name": "a"}}}, nil, 422, "objects[1]"},
		{"too long name", "POST", "/v1/servers", obj{"name": long, "address": "127.0.0.1"}, nil, 422, "name"},
		{"too long resource name", "POST", "/v1/resources/website", obj{"name": long}, nil, 422, "name"},
		{"too long type", "POST", "/v1/resources/" + strings.Repeat("t", 65), obj{"name": "a"}, nil, 422, "type"},
		{"control character in a name", "POST", "/v1/servers", obj{"name": "web\x01", "address": "127.0.0.1"}, nil, 422, "name"},
		{"newline in a resource name", "POST", "/v1/resources/website", obj{"name": "a\nb"}, nil, 422, "name"},
		{"control character in a path name", "DELETE", "/v1/servers/web%01", nil, nil, 422, "name"},
		{"control character in a label", "POST", "/v1/servers", obj{"name": "web9", "address": "127.0.0.1", "labels": obj{"role": "a\x1bb"}}, nil, 422, "labels.role"},
		{"control character in a script", "POST", "/v1/backends", obj{"name": "b9", "type": "website", "actions": obj{"save": "echo \x00"}}, nil, 422, "actions.save"},
		{"bad template", "POST", "/v1/backends", obj{"name": "b9", "type": "website", "actions": obj{"save": "echo {{ .name "}}, nil, 422, "actions.save"},
		{"no actions", "POST", "/v1/backends", obj{"name": "b9", "type": "website"}, nil, 422, "actions"},
		{"bad timeout", "POST", "/v1/backends", obj{"name": "b9", "type": "website", "timeout": "soon", "actions": obj{"save": "true"}}, nil, 422, "timeout"},
		{"bad default match", "POST", "/v1/backends", obj{"name": "b9", "type": "website", "default_match": "resource.", "actions": obj{"save": "true"}}, nil, 422, "default_match"},
		{"bad route expression", "POST", "/v1/routes", obj{"backend": "vhost", "server": "spare", "match": `resource.attrs.domain ==`}, nil, 422, "match"},
		{"route expression not boolean", "POST", "/v1/routes", obj{"backend": "vhost", "server": "spare", "match": `resource.name`}, nil, 422, "match"},
		{"route expression with an unknown name", "POST", "/v1/routes", obj{"backend": "vhost", "server": "spare", "match": `os.exit(1) == nil`}, nil, 422, "match"},
		{"route to a missing server", "POST", "/v1/routes", obj{"backend": "vhost", "server": "nowhere"}, nil, 422, "server"},
		{"route name without @", "PUT", "/v1/routes/vhost", obj{"match": "true"}, nil, 422, "name"},
		{"bad address", "POST", "/v1/servers", obj{"name": "web9", "address": "a b;c"}, nil, 422, "address"},
		{"bad method", "POST", "/v1/servers", obj{"name": "web9", "address": "127.0.0.1", "method": "telnet"}, nil, 422, "method"},
		{"bad port", "POST", "/v1/servers", obj{"name": "web9", "address": "127.0.0.1", "port": 70000}, nil, 422, "port"},
		{"bad host key", "POST", "/v1/servers", obj{"name": "web9", "address": "127.0.0.1", "host_key": "ssh-ed25519 !!!"}, nil, 422, "host_key"},
		{"bad wait", "POST", "/v1/apply?wait=forever", obj{"objects": []obj{{"kind": "Server", "name": "web9", "address": "127.0.0.1"}}}, nil, 400, "wait"},
		{"wait too long", "POST", "/v1/apply?wait=11m", obj{"objects": []obj{{"kind": "Server", "name": "web9", "address": "127.0.0.1"}}}, nil, 400, "wait"},
		{"negative wait", "POST", "/v1/apply?wait=-1s", obj{"objects": []obj{{"kind": "Server", "name": "web9", "address": "127.0.0.1"}}}, nil, 400, "wait"},
		{"bad attribute key", "POST", "/v1/resources/website", obj{"name": "a", "attrs": obj{"bad-key": 1}}, nil, 422, "attrs.bad-key"},
		{"attrs not an object", "POST", "/v1/resources/website", obj{"name": "a", "attrs": []int{1}}, nil, 422, "attrs"},
		{"secret and attribute", "POST", "/v1/resources/website", obj{"name": "a", "attrs": obj{"k": 1}, "secrets": obj{"k": "v"}}, nil, 422, "secrets.k"},
		{"name differs from the URL", "PUT", "/v1/servers/web1", obj{"name": "web2", "address": "127.0.0.1"}, nil, 422, "name"},
		{"type differs from the URL", "POST", "/v1/resources/website", obj{"type": "mailbox", "name": "a"}, nil, 422, "type"},
		{"bad If-Match", "PUT", "/v1/servers/web1", obj{"address": "127.0.0.1"}, map[string]string{"If-Match": "yesterday"}, 422, "If-Match"},
		{"bad If-None-Match", "PUT", "/v1/servers/web1", obj{"address": "127.0.0.1"}, map[string]string{"If-None-Match": `"3"`}, 422, "If-None-Match"},
		{"bad token role", "POST", "/v1/tokens", obj{"name": "t1", "role": "root"}, nil, 422, "role"},
		{"bad token name", "POST", "/v1/tokens", obj{"name": "a/b", "role": "viewer"}, nil, 422, "name"},
		{"unknown token field", "POST", "/v1/tokens", obj{"name": "t1", "role": "viewer", "ttl": 3}, nil, 422, "ttl"},
		{"bad sequence", "GET", "/v1/servers/web1?sequence=soon", nil, nil, 400, "sequence"},
		{"bad limit", "GET", "/v1/routes?limit=-1", nil, nil, 400, "limit"},
		{"last admin token", "DELETE", "/v1/tokens/admin", nil, nil, 409, ""},
		{"missing token", "DELETE", "/v1/tokens/nobody", nil, nil, 404, ""},
		{"server in use", "DELETE", "/v1/servers/web1", nil, nil, 409, ""},
		{"backend in use", "DELETE", "/v1/backends/vhost", nil, nil, 409, ""},
		{"unknown endpoint", "GET", "/v1/widgets", nil, nil, 404, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := e.lastSeq(t)
			r := e.call(t, c.method, c.path, e.admin, c.body, c.headers)
			if r.Status != c.status {
				t.Fatalf("status %d, want %d: %s", r.Status, c.status, r.Raw)
			}
			// An error about the document as a whole (malformed JSON, an
			// empty body) names no field, or "(document)".
			got, _ := r.Body["field"].(string)
			if got != c.field && (c.field != "" || got != "(document)") {
				t.Errorf("field = %q, want %q: %s", got, c.field, r.Raw)
			}
			if d, _ := r.Body["detail"].(string); d == "" {
				t.Errorf("the problem has no detail: %s", r.Raw)
			}
			if after := e.lastSeq(t); after != before {
				t.Errorf("refused input wrote %d events", after-before)
			}
		})
	}
}

// TestBodyOver8MiB: a body over the limit is a 413, also when it would be
// kept for an Idempotency-Key; an apply of more objects than a unit holds
// is a 413 too.
func TestBodyOver8MiB(t *testing.T) {
	e := newEnv(t)
	big := `{"name": "big", "attrs": {"blob": "` + strings.Repeat("x", 9<<20) + `"}}`
	for _, c := range []struct {
		name, method, path string
		headers            map[string]string
	}{
		{"PUT", "PUT", "/v1/resources/website/big", nil},
		{"POST with Idempotency-Key", "POST", "/v1/resources/website", map[string]string{"Idempotency-Key": "big-1"}},
		{"apply", "POST", "/v1/apply", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := e.lastSeq(t)
			r := e.call(t, c.method, c.path, e.operator, big, c.headers)
			if r.Status != http.StatusRequestEntityTooLarge || r.Body["type"] != "urn:orchestra:problem:"+services.ETOOLARGE {
				t.Errorf("status %d: %s", r.Status, r.Raw)
			}
			if e.lastSeq(t) != before {
				t.Error("a refused body was written")
			}
		})
	}
	var objects []obj
	for i := range services.MaxObjects + 1 {
		objects = append(objects, obj{"kind": "Resource", "type": "website", "name": fmt.Sprint("n", i)})
	}
	p := e.call(t, "POST", "/v1/apply", e.operator, obj{"objects": objects}, nil).want(t, http.StatusRequestEntityTooLarge)
	if p["field"] != "objects" {
		t.Errorf("field = %v, want objects", p["field"])
	}
}

// TestSecretsAreMasked: a secret's plain value never comes back — not in
// write results, reads, listings or apply results, nor in the event log —
// and "****" written back keeps it.
func TestSecretsAreMasked(t *testing.T) {
	e := newEnv(t)
	e.resetFixtures(t)
	const plain = "pl41n-S3cret-value"
	const plain2 = "an0ther-S3cret"
	check := func(what string, raw []byte) {
		t.Helper()
		if bytes.Contains(raw, []byte(plain)) || bytes.Contains(raw, []byte(plain2)) {
			t.Errorf("%s shows a plain secret: %s", what, raw)
		}
	}
	masked := func(what string, doc obj, keys ...string) {
		t.Helper()
		s, _ := doc["secrets"].(obj)
		for _, k := range keys {
			if s[k] != services.Masked {
				t.Errorf("%s: secrets.%s = %v, want %q", what, k, s[k], services.Masked)
			}
		}
	}

	doc := obj{"attrs": obj{"domain": "shop.example.com"}, "secrets": obj{"db_password": plain}}
	r := e.call(t, "PUT", "/v1/resources/website/shop", e.operator, doc, nil)
	r.want(t, http.StatusOK)
	check("PUT", r.Raw)
	r = e.call(t, "GET", "/v1/resources/website/shop", e.viewer, nil, nil)
	check("GET", r.Raw)
	masked("GET", r.want(t, http.StatusOK), "db_password")
	r = e.call(t, "GET", "/v1/resources?limit=1000", e.viewer, nil, nil)
	check("list", r.Raw)
	for _, it := range r.want(t, http.StatusOK)["items"].([]any) {
		if it.(obj)["name"] == "shop" {
			masked("list", it.(obj), "db_password")
		}
	}

	// "****" keeps the stored value: nothing changes.
	before := e.lastSeq(t)
	keep := obj{"attrs": obj{"domain": "shop.example.com"}, "secrets": obj{"db_password": services.Masked}}
	if res := e.call(t, "PUT", "/v1/resources/website/shop", e.operator, keep, nil).want(t, http.StatusOK); res["result"] != services.Unchanged {
		t.Errorf("writing %q back = %v, want unchanged", services.Masked, res)
	}
	if e.lastSeq(t) != before {
		t.Error("writing the mask back wrote an event")
	}
	p := e.call(t, "PUT", "/v1/resources/website/shop", e.operator, obj{"secrets": obj{"api_key": services.Masked}}, nil).want(t, http.StatusUnprocessableEntity)
	if p["field"] != "secrets.api_key" {
		t.Errorf("masking a secret that has no value: field %v", p["field"])
	}

	// Apply.
	apply := obj{"objects": []obj{
		{"kind": "Resource", "type": "website", "name": "shop", "attrs": obj{"domain": "shop.example.com"}, "secrets": obj{"db_password": plain2}},
		{"kind": "Resource", "type": "mailbox", "name": "ops", "secrets": obj{"password": plain}},
	}}
	r = e.call(t, "POST", "/v1/apply", e.operator, apply, nil)
	r.want(t, http.StatusOK)
	check("apply", r.Raw)
	for _, p := range []string{"/v1/resources/website/shop", "/v1/resources/mailbox/ops"} {
		r = e.call(t, "GET", p, e.viewer, nil, nil)
		check(p, r.Raw)
		masked(p, r.want(t, http.StatusOK))
	}

	// A bad secret's error names the key, not the value.
	r = e.call(t, "POST", "/v1/resources/website", e.operator, obj{"name": "x", "secrets": obj{"k": plain + "\x01"}}, nil)
	r.want(t, http.StatusUnprocessableEntity)
	check("an error", r.Raw)

	// The log holds sealed values only.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := e.JS.Stream(ctx, events.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	sealed := 0
	for seq := uint64(1); seq <= e.lastSeq(t); seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		check(fmt.Sprintf("event %d", seq), m.Data)
		if bytes.Contains(m.Data, []byte("db_password")) {
			sealed++
		}
	}
	if sealed == 0 {
		t.Error("no event holds the secret at all: the log check proves nothing")
	}
}

// TestApplyIsAllOrNothing: an apply of 50 objects with one invalid is a 422
// naming objects[i] and the field, and writes none of them; without the
// invalid one, all 50 are written in one unit.
func TestApplyIsAllOrNothing(t *testing.T) {
	e := newEnv(t)
	e.resetFixtures(t)
	batch := func(bad int, badDoc obj) []obj {
		var out []obj
		for i := range 50 {
			d := obj{"kind": "Resource", "type": "batch", "name": fmt.Sprintf("b%02d", i), "attrs": obj{"i": i}}
			if i == bad {
				d = badDoc
			}
			out = append(out, d)
		}
		return out
	}
	cases := []struct {
		name  string
		bad   int
		doc   obj
		field string
	}{
		{"unknown field", 3, obj{"kind": "Resource", "type": "batch", "name": "b03", "colour": "red"}, "objects[3].colour"},
		{"bad attribute", 37, obj{"kind": "Resource", "type": "batch", "name": "b37", "attrs": obj{"bad-key": 1}}, "objects[37].attrs.bad-key"},
		{"control character", 20, obj{"kind": "Resource", "type": "batch", "name": "b\x0720"}, "objects[20].name"},
		{"bad route expression", 49, obj{"kind": "Route", "backend": "vhost", "server": "spare", "match": "resource.attrs.i >"}, "objects[49].match"},
		{"route to a missing server", 0, obj{"kind": "Route", "backend": "vhost", "server": "nowhere"}, "objects[0].server"},
		{"stale version", 12, obj{"kind": "Resource", "type": "website", "name": "shop", "version": 1}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := e.lastSeq(t)
			r := e.call(t, "POST", "/v1/apply", e.admin, obj{"objects": batch(c.bad, c.doc)}, nil)
			if c.field == "" {
				r.want(t, http.StatusConflict)
			} else {
				p := r.want(t, http.StatusUnprocessableEntity)
				if p["field"] != c.field {
					t.Errorf("field = %v, want %s", p["field"], c.field)
				}
			}
			if e.lastSeq(t) != before {
				t.Errorf("a refused apply wrote %d events", e.lastSeq(t)-before)
			}
			if n := len(e.listAll(t, "/v1/resources/batch", e.viewer)); n != 0 {
				t.Errorf("a refused apply left %d resources", n)
			}
		})
	}

	before := e.lastSeq(t)
	res := e.call(t, "POST", "/v1/apply", e.operator, obj{"objects": batch(-1, nil)}, nil).want(t, http.StatusOK)
	if after := e.lastSeq(t); after != before+50 || res["sequence"] != float64(after) {
		t.Errorf("the apply wrote %d events, sequence %v; want 50 ending at %d", after-before, res["sequence"], after)
	}
	results := res["objects"].([]any)
	for i, o := range results {
		if o.(obj)["result"] != services.Created || o.(obj)["name"] != fmt.Sprintf("batch/b%02d", i) {
			t.Errorf("objects[%d] = %v", i, o)
		}
	}
	if n := len(e.listAll(t, "/v1/resources/batch", e.viewer)); n != 50 {
		t.Errorf("%d resources listed, want 50", n)
	}
	// The same apply again changes nothing and writes nothing.
	again := e.call(t, "POST", "/v1/apply", e.operator, obj{"objects": batch(-1, nil)}, nil).want(t, http.StatusOK)
	if e.lastSeq(t) != before+50 || again["unit"] != nil {
		t.Errorf("a repeated apply wrote events or a unit: %v", again["unit"])
	}
}

// TestTokens: issue, use, list, revoke.
func TestTokens(t *testing.T) {
	e := newEnv(t)
	r := e.call(t, "POST", "/v1/tokens", e.admin, obj{"name": "ci", "role": "operator"}, nil)
	created := r.want(t, http.StatusCreated)
	tok, _ := created["token"].(string)
	if r.Header.Get("Location") != "/v1/tokens/ci" || !strings.HasPrefix(tok, "orc_") || created["role"] != "operator" {
		t.Fatalf("POST /v1/tokens = %v, Location %q", created, r.Header.Get("Location"))
	}
	e.call(t, "POST", "/v1/tokens", e.admin, obj{"name": "ci", "role": "viewer"}, nil).want(t, http.StatusConflict)

	// The new token works, with its role.
	e.call(t, "POST", "/v1/resources/website", tok, obj{"name": "by-ci"}, nil).want(t, http.StatusCreated)
	e.call(t, "POST", "/v1/servers", tok, obj{"name": "web9", "address": "127.0.0.1"}, nil).want(t, http.StatusForbidden)
	e.call(t, "GET", "/v1/tokens", tok, nil, nil).want(t, http.StatusForbidden)

	// Listings never show a token.
	r = e.call(t, "GET", "/v1/tokens", e.admin, nil, nil)
	for _, s := range []string{tok, e.admin, e.operator, e.viewer} {
		if bytes.Contains(r.Raw, []byte(s)) || bytes.Contains(r.Raw, []byte(strings.TrimPrefix(s, "orc_"))) {
			t.Errorf("GET /v1/tokens shows a token: %s", r.Raw)
		}
	}
	var names []string
	for _, it := range r.want(t, http.StatusOK)["items"].([]any) {
		names = append(names, it.(obj)["name"].(string))
	}
	if !slices.Equal(names, []string{"admin", "ci", "operator", "viewer"}) {
		t.Errorf("tokens listed: %v", names)
	}

	// Revoked, it is refused.
	e.call(t, "DELETE", "/v1/tokens/ci", e.admin, nil, nil).want(t, http.StatusOK)
	if r := e.call(t, "GET", "/v1/servers", tok, nil, nil); r.Status != http.StatusUnauthorized {
		t.Errorf("a revoked token: %d", r.Status)
	}
	e.call(t, "DELETE", "/v1/tokens/ci", e.admin, nil, nil).want(t, http.StatusNotFound)
}

// A token is shown once and never kept, so creating one takes no
// Idempotency-Key: a kept answer would hand the token out again.
func TestTokenCreationIsNeverKept(t *testing.T) {
	e := newEnv(t)
	before := e.lastSeq(t)
	p := e.call(t, "POST", "/v1/tokens", e.admin, obj{"name": "kept", "role": "viewer"},
		map[string]string{"Idempotency-Key": "k1"}).want(t, http.StatusUnprocessableEntity)
	if p["field"] != "Idempotency-Key" {
		t.Fatalf("field = %v, want Idempotency-Key", p["field"])
	}
	if e.lastSeq(t) != before {
		t.Fatal("the refused request issued a token")
	}
}
