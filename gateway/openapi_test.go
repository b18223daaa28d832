package gateway_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/orchestra-fleet/orchestra/gateway"
	"github.com/orchestra-fleet/orchestra/services"
)

// openAPI is the OpenAPI document as the tests use it: the operations, and
// the raw document to resolve $refs and validate JSON against its schemas.
type openAPI struct {
	raw map[string]any
	ops []*operation
}

// operation is one method of one path of the document.
type operation struct {
	Method string // upper case, as in gateway.Route
	Path   string
	raw    map[string]any
}

func (o *operation) String() string { return o.Method + " " + o.Path }
func (o *operation) str(key string) string {
	s, _ := o.raw[key].(string)
	return s
}

// Role is the operation's x-orchestra-role.
func (o *operation) Role() string { return o.str("x-orchestra-role") }

// ExamplePath is the operation's x-orchestra-example-path.
func (o *operation) ExamplePath() string { return o.str("x-orchestra-example-path") }

// hasParam reports whether one of op's parameters satisfies pred.
func hasParam(doc *openAPI, op *operation, pred func(map[string]any) bool) bool {
	params, _ := op.raw["parameters"].([]any)
	for _, p := range params {
		if pv, err := doc.resolve(p); err == nil {
			if pm, ok := pv.(map[string]any); ok && pred(pm) {
				return true
			}
		}
	}
	return false
}

// schemaFormat is the format of a parameter's schema, "" if none.
func schemaFormat(p map[string]any) string {
	s, _ := p["schema"].(map[string]any)
	f, _ := s["format"].(string)
	return f
}

var httpMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

// parseOpenAPI decodes the document and lists its operations, sorted by
// path and method.
func parseOpenAPI(data []byte) (*openAPI, error) {
	doc := &openAPI{}
	if err := json.Unmarshal(data, &doc.raw); err != nil {
		return nil, fmt.Errorf("the OpenAPI document is not JSON: %w", err)
	}
	paths, ok := doc.raw["paths"].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("the OpenAPI document has no paths")
	}
	for path, item := range paths {
		item, ok := item.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("paths[%q] is not an object", path)
		}
		for m, v := range item {
			if !slices.Contains(httpMethods, m) {
				return nil, fmt.Errorf("paths[%q] has %q; only operations are expected there", path, m)
			}
			raw, ok := v.(map[string]any)
			if !ok {
				return nil, fmt.Errorf("paths[%q].%s is not an object", path, m)
			}
			doc.ops = append(doc.ops, &operation{Method: strings.ToUpper(m), Path: path, raw: raw})
		}
	}
	sort.Slice(doc.ops, func(i, j int) bool {
		if doc.ops[i].Path != doc.ops[j].Path {
			return doc.ops[i].Path < doc.ops[j].Path
		}
		return doc.ops[i].Method < doc.ops[j].Method
	})
	return doc, nil
}

// resolve follows $ref (local JSON pointers only) until v is no reference.
func (d *openAPI) resolve(v any) (any, error) {
	for range 32 {
		m, ok := v.(map[string]any)
		if !ok {
			return v, nil
		}
		ref, ok := m["$ref"].(string)
		if !ok {
			return v, nil
		}
		target, err := d.pointer(ref)
		if err != nil {
			return nil, err
		}
		v = target
	}
	return nil, fmt.Errorf("$ref chain too long")
}

// pointer returns what a "#/a/b" reference points at.
func (d *openAPI) pointer(ref string) (any, error) {
	rest, ok := strings.CutPrefix(ref, "#/")
	if !ok {
		return nil, fmt.Errorf("$ref %q is not a local reference", ref)
	}
	var cur any = d.raw
	for _, tok := range strings.Split(rest, "/") {
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("$ref %q: %q is not inside an object", ref, tok)
		}
		if cur, ok = m[tok]; !ok {
			return nil, fmt.Errorf("$ref %q does not resolve (no %q)", ref, tok)
		}
	}
	return cur, nil
}

// find returns the operation that serves method and the URL path p (query
// ignored), preferring literal segments over placeholders as ServeMux does.
func (d *openAPI) find(method, p string) *operation {
	p, _, _ = strings.Cut(p, "?")
	segs := strings.Split(p, "/")
	var best *operation
	bestLiterals := -1
	for _, op := range d.ops {
		if op.Method != method {
			continue
		}
		tmpl := strings.Split(op.Path, "/")
		if len(tmpl) != len(segs) {
			continue
		}
		literals, ok := 0, true
		for i, s := range tmpl {
			switch {
			case strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}"):
				ok = ok && segs[i] != ""
			case s == segs[i]:
				literals++
			default:
				ok = false
			}
		}
		if ok && literals > bestLiterals {
			best, bestLiterals = op, literals
		}
	}
	return best
}

// response returns the documented response of op for status, resolved.
func (d *openAPI) response(op *operation, status int) (map[string]any, error) {
	resps, _ := op.raw["responses"].(map[string]any)
	r, ok := resps[strconv.Itoa(status)]
	if !ok {
		return nil, fmt.Errorf("%s answered %d, which its responses do not list", op, status)
	}
	v, err := d.resolve(r)
	if err != nil {
		return nil, err
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%s: response %d is not an object", op, status)
	}
	return m, nil
}

// checkResponse reports every way an actual response departs from what the
// document says op answers.
func (d *openAPI) checkResponse(op *operation, status int, h http.Header, body []byte) []string {
	spec, err := d.response(op, status)
	if err != nil {
		return []string{err.Error()}
	}
	var errs []string
	hdrs, _ := spec["headers"].(map[string]any)
	for _, name := range keys(hdrs) {
		hv, err := d.resolve(hdrs[name])
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		if hm, _ := hv.(map[string]any); hm["required"] == true && h.Get(name) == "" {
			errs = append(errs, fmt.Sprintf("%s %d: the required header %s is missing", op, status, name))
		}
	}
	content, _ := spec["content"].(map[string]any)
	if len(content) == 0 {
		return errs
	}
	mediaType, _, _ := strings.Cut(h.Get("Content-Type"), ";")
	media, ok := content[strings.TrimSpace(mediaType)].(map[string]any)
	if !ok {
		return append(errs, fmt.Sprintf("%s %d: Content-Type %q is not documented (want one of %v)", op, status, mediaType, keys(content)))
	}
	if mediaType == "text/event-stream" {
		// Server-Sent Events: every data line is a JSON document.
		for line := range strings.SplitSeq(string(body), "\n") {
			if data, ok := strings.CutPrefix(line, "data: "); ok && !json.Valid([]byte(data)) {
				errs = append(errs, fmt.Sprintf("%s %d: an event's data is not JSON: %s", op, status, data))
			}
		}
		return errs
	}
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		return append(errs, fmt.Sprintf("%s %d: the body is not JSON: %v", op, status, err))
	}
	for _, e := range d.validate(media["schema"], v, "body") {
		errs = append(errs, fmt.Sprintf("%s %d: %s", op, status, e))
	}
	return errs
}

func keys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// The JSON Schema keywords validate understands, and the annotations it may
// ignore. TestOpenAPIDocumentIsWellFormed refuses any other keyword, so no
// constraint of the document is silently skipped.
var (
	schemaKeywords = []string{
		"$ref", "type", "properties", "required", "additionalProperties", "items", "enum", "const",
		"oneOf", "anyOf", "allOf", "if", "then", "else", "minimum", "maximum", "minLength", "maxLength",
		"pattern", "minItems", "maxItems", "minProperties", "maxProperties",
	}
	schemaAnnotations = []string{
		"description", "title", "default", "format", "example", "examples", "readOnly", "writeOnly",
		"deprecated", "discriminator", "$comment",
	}
)

// validate checks v (decoded by encoding/json into any) against schema, a
// subset of JSON Schema 2020-12, and returns the violations found.
func (d *openAPI) validate(schema, v any, at string) []string {
	schema, err := d.resolve(schema)
	if err != nil {
		return []string{at + ": " + err.Error()}
	}
	s, ok := schema.(map[string]any)
	if !ok {
		if b, isBool := schema.(bool); isBool {
			if !b {
				return []string{at + ": is not allowed"}
			}
			return nil
		}
		return []string{fmt.Sprintf("%s: schema is a %T", at, schema)}
	}
	var errs []string
	fail := func(format string, args ...any) { errs = append(errs, at+": "+fmt.Sprintf(format, args...)) }

	if t, ok := s["type"]; ok {
		var types []string
		switch t := t.(type) {
		case string:
			types = []string{t}
		case []any:
			for _, x := range t {
				s, _ := x.(string)
				types = append(types, s)
			}
		}
		if !slices.ContainsFunc(types, func(t string) bool { return hasType(v, t) }) {
			fail("is %s, want %s", jsonType(v), strings.Join(types, " or "))
			return errs
		}
	}
	if c, ok := s["const"]; ok && !jsonEqual(c, v) {
		fail("is %v, want %v", v, c)
	}
	if e, ok := s["enum"].([]any); ok && !slices.ContainsFunc(e, func(x any) bool { return jsonEqual(x, v) }) {
		fail("is %v, not one of %v", v, e)
	}
	if n, ok := v.(float64); ok {
		if m, ok := s["minimum"].(float64); ok && n < m {
			fail("is %v, below the minimum %v", n, m)
		}
		if m, ok := s["maximum"].(float64); ok && n > m {
			fail("is %v, above the maximum %v", n, m)
		}
	}
	if str, ok := v.(string); ok {
		n := float64(utf8.RuneCountInString(str))
		if m, ok := s["minLength"].(float64); ok && n < m {
			fail("is %v characters long, want at least %v", n, m)
		}
		if m, ok := s["maxLength"].(float64); ok && n > m {
			fail("is %v characters long, want at most %v", n, m)
		}
		if p, ok := s["pattern"].(string); ok {
			re, err := regexp.Compile(p)
			if err != nil {
				fail("pattern %q: %v", p, err)
			} else if !re.MatchString(str) {
				fail("%q does not match %q", str, p)
			}
		}
	}
	if arr, ok := v.([]any); ok {
		if m, ok := s["minItems"].(float64); ok && float64(len(arr)) < m {
			fail("has %d items, want at least %v", len(arr), m)
		}
		if m, ok := s["maxItems"].(float64); ok && float64(len(arr)) > m {
			fail("has %d items, want at most %v", len(arr), m)
		}
		if items, ok := s["items"]; ok {
			for i, x := range arr {
				errs = append(errs, d.validate(items, x, fmt.Sprintf("%s[%d]", at, i))...)
			}
		}
	}
	if obj, ok := v.(map[string]any); ok {
		if m, ok := s["minProperties"].(float64); ok && float64(len(obj)) < m {
			fail("has %d properties, want at least %v", len(obj), m)
		}
		if m, ok := s["maxProperties"].(float64); ok && float64(len(obj)) > m {
			fail("has %d properties, want at most %v", len(obj), m)
		}
		if req, ok := s["required"].([]any); ok {
			for _, r := range req {
				if _, has := obj[r.(string)]; !has {
					fail("lacks the required property %q", r)
				}
			}
		}
		props, _ := s["properties"].(map[string]any)
		for _, k := range keys(obj) {
			if ps, ok := props[k]; ok {
				errs = append(errs, d.validate(ps, obj[k], at+"."+k)...)
				continue
			}
			if ap, ok := s["additionalProperties"]; ok {
				if b, isBool := ap.(bool); isBool && !b {
					fail("has the property %q, which the schema does not allow", k)
				} else if !isBool {
					errs = append(errs, d.validate(ap, obj[k], at+"."+k)...)
				}
			}
		}
	}
	if all, ok := s["allOf"].([]any); ok {
		for _, sub := range all {
			errs = append(errs, d.validate(sub, v, at)...)
		}
	}
	if anyOf, ok := s["anyOf"].([]any); ok {
		if !slices.ContainsFunc(anyOf, func(sub any) bool { return len(d.validate(sub, v, at)) == 0 }) {
			fail("matches none of anyOf")
		}
	}
	if oneOf, ok := s["oneOf"].([]any); ok {
		var matched int
		var why []string
		for i, sub := range oneOf {
			if e := d.validate(sub, v, at); len(e) == 0 {
				matched++
			} else {
				why = append(why, fmt.Sprintf("[%d] %s", i, e[0]))
			}
		}
		if matched != 1 {
			fail("matches %d of oneOf, want exactly 1 (%s)", matched, strings.Join(why, "; "))
		}
	}
	if cond, ok := s["if"]; ok {
		branch := "else"
		if len(d.validate(cond, v, at)) == 0 {
			branch = "then"
		}
		if sub, ok := s[branch]; ok {
			errs = append(errs, d.validate(sub, v, at)...)
		}
	}
	return errs
}

func hasType(v any, t string) bool {
	switch t {
	case "object":
		_, ok := v.(map[string]any)
		return ok
	case "array":
		_, ok := v.([]any)
		return ok
	case "string":
		_, ok := v.(string)
		return ok
	case "boolean":
		_, ok := v.(bool)
		return ok
	case "number":
		_, ok := v.(float64)
		return ok
	case "integer":
		n, ok := v.(float64)
		return ok && n == math.Trunc(n)
	case "null":
		return v == nil
	}
	return false
}

func jsonType(v any) string {
	for _, t := range []string{"null", "boolean", "integer", "number", "string", "array", "object"} {
		if hasType(v, t) {
			return t
		}
	}
	return fmt.Sprintf("%T", v)
}

func jsonEqual(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

// loadOpenAPIFile reads gateway/openapi.json, the document the handler embeds.
func loadOpenAPIFile(t *testing.T) []byte {
	t.Helper()
	data, err := os.ReadFile("openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// loadOpenAPI parses gateway/openapi.json.
func loadOpenAPI(t *testing.T) *openAPI {
	t.Helper()
	doc, err := parseOpenAPI(loadOpenAPIFile(t))
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

// exampleBody returns the request example of op, nil when it takes no body.
func (o *operation) exampleBody() json.RawMessage {
	rb, ok := o.raw["requestBody"].(map[string]any)
	if !ok {
		return nil
	}
	content, _ := rb["content"].(map[string]any)
	media, _ := content["application/json"].(map[string]any)
	ex, ok := media["example"]
	if !ok {
		return nil
	}
	b, _ := json.Marshal(ex)
	return b
}

// TestOpenAPIDocumentsEveryRoute checks, both ways, that the document served
// at /v1/openapi.json describes exactly gateway.Routes(): the same methods,
// paths and roles.
func TestOpenAPIDocumentsEveryRoute(t *testing.T) {
	e := newEnv(t)
	r := e.call(t, "GET", "/v1/openapi.json", e.viewer, nil, nil)
	if r.Status != 200 || r.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /v1/openapi.json = %d %s", r.Status, r.Header.Get("Content-Type"))
	}
	doc, err := parseOpenAPI(r.Raw)
	if err != nil {
		t.Fatal(err)
	}
	if file := loadOpenAPIFile(t); !bytes.Equal(file, r.Raw) {
		t.Error("GET /v1/openapi.json does not serve gateway/openapi.json")
	}

	documented := map[string]*operation{}
	for _, op := range doc.ops {
		documented[op.String()] = op
	}
	routes := map[string]gateway.Route{}
	for _, rt := range gateway.Routes() {
		key := rt.Method + " " + rt.Path
		if _, dup := routes[key]; dup {
			t.Errorf("Routes() lists %s twice", key)
		}
		routes[key] = rt
		op, ok := documented[key]
		if !ok {
			t.Errorf("route %s (role %s) is not in the OpenAPI document", key, rt.Role)
			continue
		}
		if op.Role() != rt.Role {
			t.Errorf("%s: x-orchestra-role is %q, Routes() says %q", key, op.Role(), rt.Role)
		}
	}
	for key := range documented {
		if _, ok := routes[key]; !ok {
			t.Errorf("the OpenAPI document has %s, which Routes() does not serve", key)
		}
	}
	if len(doc.ops) != len(routes) {
		t.Errorf("the document has %d operations, Routes() %d", len(doc.ops), len(routes))
	}
}

// TestOpenAPIDocumentIsWellFormed checks what a client generator and the
// other tests rely on: every operation has an id, a summary, a role, the
// problem responses it can give, its path parameters, an example path, and
// (when it takes a body) an example that fits its schema; every $ref
// resolves; every schema uses only keywords the validator enforces.
func TestOpenAPIDocumentIsWellFormed(t *testing.T) {
	doc := loadOpenAPI(t)
	raw := doc.raw

	if v, _ := raw["openapi"].(string); !strings.HasPrefix(v, "3.1.") {
		t.Errorf("openapi = %q, want 3.1.x", v)
	}
	info, _ := raw["info"].(map[string]any)
	if info["title"] == nil || info["version"] == nil {
		t.Errorf("info lacks title or version: %v", info)
	}
	if !jsonEqual(raw["security"], []any{map[string]any{"bearerAuth": []any{}}}) {
		t.Errorf("security = %v, want bearerAuth applied globally", raw["security"])
	}
	if s, err := doc.pointer("#/components/securitySchemes/bearerAuth"); err != nil {
		t.Error(err)
	} else if m := s.(map[string]any); m["type"] != "http" || m["scheme"] != "bearer" {
		t.Errorf("bearerAuth = %v, want an http bearer scheme", m)
	}
	for _, name := range []string{"Server", "Backend", "Route", "Resource", "ApplyRequest", "TokenRequest",
		"WriteResult", "ApplyResult", "Page", "Problem", "TokenView", "TokenCreated"} {
		if _, err := doc.pointer("#/components/schemas/" + name); err != nil {
			t.Errorf("components.schemas.%s: %v", name, err)
		}
	}

	// Every $ref resolves; every schema keyword is one validate enforces
	// or an annotation.
	walkJSON(raw, "", func(path string, m map[string]any) {
		if ref, ok := m["$ref"].(string); ok {
			if _, err := doc.pointer(ref); err != nil {
				t.Errorf("%s: %v", path, err)
			}
		}
	})
	walkSchemas(t, doc, func(path string, s map[string]any) {
		for k := range s {
			if !slices.Contains(schemaKeywords, k) && !slices.Contains(schemaAnnotations, k) {
				t.Errorf("%s: schema keyword %q is not enforced by the tests' validator; add it there or drop it", path, k)
			}
		}
	})

	ids := map[string]string{}
	placeholder := regexp.MustCompile(`\{([^}]+)\}`)
	for _, op := range doc.ops {
		t.Run(op.String(), func(t *testing.T) {
			if !strings.HasPrefix(op.Path, "/v1/") {
				t.Errorf("path %s is not under /v1", op.Path)
			}
			id := op.str("operationId")
			if id == "" {
				t.Error("no operationId")
			} else if other, dup := ids[id]; dup {
				t.Errorf("operationId %q is also %s's", id, other)
			}
			ids[id] = op.String()
			if op.str("summary") == "" {
				t.Error("no summary")
			}
			role := op.Role()
			if !slices.Contains([]string{services.RoleViewer, services.RoleOperator, services.RoleAdmin}, role) {
				t.Errorf("x-orchestra-role = %q, want viewer, operator or admin", role)
			}

			// Responses: a success, and the problems it can give.
			resps, _ := op.raw["responses"].(map[string]any)
			want := []string{"401", "500", "503"}
			if role != services.RoleViewer {
				want = append(want, "403")
			}
			// A body, or an id in the path, can be invalid (422); a query
			// parameter or Orchestra-Min-Sequence malformed (400).
			if op.Method != "GET" || hasParam(doc, op, func(p map[string]any) bool { return p["in"] == "path" && schemaFormat(p) == "uuid" }) {
				want = append(want, "422")
			}
			if hasParam(doc, op, func(p map[string]any) bool { return p["in"] == "query" || p["name"] == "Orchestra-Min-Sequence" }) {
				want = append(want, "400")
			}
			if op.Method != "GET" {
				want = append(want, "409", "413")
			}
			if strings.Contains(op.Path, "{name}") {
				want = append(want, "404")
			}
			for _, code := range want {
				if _, ok := resps[code]; !ok {
					t.Errorf("responses lack %s", code)
				}
			}
			successes := 0
			for code := range resps {
				n, err := strconv.Atoi(code)
				if err != nil {
					t.Errorf("response %q: use explicit status codes", code)
					continue
				}
				r, err := doc.response(op, n)
				if err != nil {
					t.Error(err)
					continue
				}
				if r["description"] == nil {
					t.Errorf("response %s has no description", code)
				}
				content, _ := r["content"].(map[string]any)
				switch {
				case n >= 200 && n < 300:
					successes++
					_, isJSON := content["application/json"]
					_, isSSE := content["text/event-stream"]
					if !isJSON && !isSSE {
						t.Errorf("response %s is neither application/json nor text/event-stream", code)
					}
				case n >= 400:
					media, _ := content["application/problem+json"].(map[string]any)
					if media == nil || !jsonEqual(media["schema"], map[string]any{"$ref": "#/components/schemas/Problem"}) {
						t.Errorf("response %s is not an application/problem+json Problem", code)
					}
				}
				if n == 401 {
					hdrs, _ := r["headers"].(map[string]any)
					if _, ok := hdrs["WWW-Authenticate"]; !ok {
						t.Error("response 401 does not document WWW-Authenticate")
					}
				}
			}
			if successes == 0 {
				t.Error("no 2xx response")
			}
			// A POST creates (201) or asks for work that follows (202);
			// apply and plan answer 200.
			_, created := resps["201"]
			_, accepted := resps["202"]
			if op.Method == "POST" && op.Path != "/v1/apply" && op.Path != "/v1/plan" && !created && !accepted {
				t.Error("a POST documents neither 201 nor 202")
			}

			// Path parameters match the placeholders.
			var inPath []string
			for _, m := range placeholder.FindAllStringSubmatch(op.Path, -1) {
				inPath = append(inPath, m[1])
			}
			var declared []string
			params, _ := op.raw["parameters"].([]any)
			for i, p := range params {
				pv, err := doc.resolve(p)
				if err != nil {
					t.Errorf("parameters[%d]: %v", i, err)
					continue
				}
				pm := pv.(map[string]any)
				if pm["schema"] == nil || pm["name"] == nil {
					t.Errorf("parameters[%d] lacks name or schema", i)
				}
				if pm["in"] == "path" {
					if pm["required"] != true {
						t.Errorf("path parameter %v is not required", pm["name"])
					}
					declared = append(declared, pm["name"].(string))
				}
			}
			slices.Sort(inPath)
			slices.Sort(declared)
			if !slices.Equal(inPath, declared) {
				t.Errorf("path parameters %v, but the path has %v", declared, inPath)
			}

			// The example path fills in the placeholders.
			// It may carry a query (GET /v1/stream's says not to follow).
			ex := op.ExamplePath()
			exPath, _, _ := strings.Cut(ex, "?")
			if ex == "" {
				t.Error("no x-orchestra-example-path")
			} else if strings.ContainsAny(exPath, "{}") {
				t.Errorf("x-orchestra-example-path %q is not a concrete path", ex)
			} else if found := doc.find(op.Method, exPath); found != op {
				t.Errorf("x-orchestra-example-path %q is served by %v, not by this operation", ex, found)
			} else if _, err := url.ParseRequestURI(ex); err != nil {
				t.Errorf("x-orchestra-example-path %q: %v", ex, err)
			}

			// A body comes with a schema and an example that fits it.
			rb, hasBody := op.raw["requestBody"].(map[string]any)
			switch op.Method {
			case "POST", "PUT":
				if !hasBody {
					t.Fatal("no requestBody")
				}
				content, _ := rb["content"].(map[string]any)
				media, _ := content["application/json"].(map[string]any)
				if media == nil || media["schema"] == nil {
					t.Fatal("requestBody has no application/json schema")
				}
				if rb["required"] != true && !accepted {
					t.Error("requestBody is not required; only a request (202) may take an optional body")
				}
				if _, ok := media["example"]; !ok {
					t.Fatal("requestBody has no example")
				}
				for _, err := range doc.validate(media["schema"], media["example"], "example") {
					t.Error(err)
				}
			default:
				if hasBody {
					t.Errorf("a %s documents a requestBody", op.Method)
				}
			}
		})
	}
}

// walkJSON calls fn for every object in v, with its JSON path.
func walkJSON(v any, path string, fn func(path string, m map[string]any)) {
	switch v := v.(type) {
	case map[string]any:
		fn(path, v)
		for _, k := range keys(v) {
			walkJSON(v[k], path+"/"+k, fn)
		}
	case []any:
		for i, x := range v {
			walkJSON(x, path+"/"+strconv.Itoa(i), fn)
		}
	}
}

// walkSchemas calls fn for every schema of the document: the components'
// and every inline one, with their subschemas.
func walkSchemas(t *testing.T, doc *openAPI, fn func(path string, s map[string]any)) {
	var visit func(path string, s any)
	visit = func(path string, s any) {
		m, ok := s.(map[string]any)
		if !ok {
			if _, isBool := s.(bool); !isBool {
				t.Errorf("%s: a schema must be an object or a boolean", path)
			}
			return
		}
		fn(path, m)
		for _, k := range []string{"items", "additionalProperties", "if", "then", "else"} {
			if sub, ok := m[k]; ok {
				visit(path+"/"+k, sub)
			}
		}
		for _, k := range []string{"allOf", "anyOf", "oneOf"} {
			subs, _ := m[k].([]any)
			for i, sub := range subs {
				visit(fmt.Sprintf("%s/%s/%d", path, k, i), sub)
			}
		}
		props, _ := m["properties"].(map[string]any)
		for _, k := range keys(props) {
			visit(path+"/properties/"+k, props[k])
		}
	}
	walkJSON(doc.raw, "", func(path string, m map[string]any) {
		if strings.HasSuffix(path, "/properties") || strings.Contains(path, "/example") {
			return
		}
		if s, ok := m["schema"]; ok {
			visit(path+"/schema", s)
		}
	})
	schemas, _ := doc.raw["components"].(map[string]any)["schemas"].(map[string]any)
	for _, k := range keys(schemas) {
		visit("/components/schemas/"+k, schemas[k])
	}
}

// TestSchemaValidatorRejects proves the validator the other tests lean on
// can fail: each document breaks one rule of the OpenAPI schemas.
func TestSchemaValidatorRejects(t *testing.T) {
	doc := loadOpenAPI(t)
	cases := []struct {
		name, schema, doc string
	}{
		{"wrong type", "Server", `{"name": 1}`},
		{"unknown property", "Server", `{"name": "a", "colour": "red"}`},
		{"missing required", "Route", `{"backend": "vhost"}`},
		{"enum", "Server", `{"name": "a", "method": "telnet"}`},
		{"maximum", "Server", `{"name": "a", "port": 70000}`},
		{"const", "Resource", `{"kind": "Server", "type": "website", "name": "a"}`},
		{"pattern", "Backend", `{"name": "Vhost", "type": "website", "actions": {"save": "x"}}`},
		{"else branch", "Backend", `{"name": "vhost"}`},
		{"oneOf none", "ApplyRequest", `{"objects": [{"kind": "Widget"}]}`},
		{"oneOf item", "ApplyRequest", `{"objects": [{"kind": "Route", "backend": "vhost"}]}`},
		{"minItems", "ApplyRequest", `{"objects": []}`},
		{"nested additionalProperties", "Resource", `{"type": "website", "name": "a", "labels": {"k": 1}}`},
		{"integer", "WriteResult", `{"kind": "Server", "name": "a", "result": "created", "version": 1.5, "sequence": 1}`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var v any
			if err := json.Unmarshal([]byte(c.doc), &v); err != nil {
				t.Fatal(err)
			}
			if errs := doc.validate(map[string]any{"$ref": "#/components/schemas/" + c.schema}, v, "doc"); len(errs) == 0 {
				t.Errorf("%s accepted %s", c.schema, c.doc)
			}
		})
	}
	ok := `{"objects": [{"kind": "Server", "name": "a"}, {"kind": "Backend", "name": "b", "delete": true}]}`
	var v any
	_ = json.Unmarshal([]byte(ok), &v)
	if errs := doc.validate(map[string]any{"$ref": "#/components/schemas/ApplyRequest"}, v, "doc"); len(errs) > 0 {
		t.Errorf("ApplyRequest refused %s: %v", ok, errs)
	}
}
