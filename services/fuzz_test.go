package services_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"text/template/parse"
	"unicode"

	"github.com/orchestra-fleet/orchestra/services"
)

// decodeSeeds are documents of every kind, valid and not.
var decodeSeeds = []string{
	serverWeb1, backendWeb, routeWeb, resourceWeb,
	`{"kind":"Server","name":"web1","address":"10.0.0.1","port":2222,"user":"deploy","method":"agent","labels":{"env":"prod"},"host_key":"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA==","active":false,"version":3}`,
	`{"kind":"Backend","name":"web","type":"vhost","executable":"/bin/sh","timeout":"90s","ignore_fields":["serial","labels"],"related":[{"type":"cert","field":"vhost"}],"default_match":"resource.labels.env == \"prod\"","prepare":"set -e","commit":"{{raw .name}}","actions":{"save":"echo {{.attrs.port}}","delete":"{{if .name}}rm{{end}}"}}`,
	`{"kind":"Route","backend":"web","server":"web1","match":"resource.attrs.port > 1024 &&\n server.labels.env in [\"a\"]","async":true,"active":false}`,
	`{"kind":"Resource","type":"db","name":"orders","attrs":{"a":[1,{"b":null}],"c":"\u003c"},"labels":{"team":"x"},"secrets":{"pw":"****"}}`,
	`{"kind":"Route","backend":"web","server":"web1","delete":true}`,
	`{"kind":"Server","name":5}`, `{"kind":"Host"}`, `{}`, `[]`, `null`, `{"kind":"Server","name":"a"} x`,
	`{"kind":"Resource","type":"t","name":"n","attrs":[1]}`, `{"kind":"Backend","name":"b","related":[{"type":1}]}`,
	threeTiers,
	`{"kind":"Site","name":"s","notify":[{"webhook":"https://h/x","secret":"k"},{"email":"a@b.c"}],"services":[{"name":"a","servers":["web1"],"scale":2,"env":{"K":"v"},"start":"x","timeout":"1s","commands":{"m":"y"}}]}`,
	`{"kind":"Site","name":"s","services":[{"name":"a","selector":{"role":"x"},"run":"./a"}],"update":{"strategy":"rolling","batch":3}}`,
	`{"kind":"Site","name":"s","services":[{"name":"a","rank":-1,"scale":-2}]}`, `{"kind":"Site","name":"s","delete":true}`,
}

// checkCode fails unless err is an application error a user can act on.
func checkCode(t *testing.T, err error, allowed ...string) {
	t.Helper()
	code := services.ErrorCode(err)
	for _, c := range allowed {
		if code == c {
			var e *services.Error
			var ce *services.ConflictError
			if !errors.As(err, &e) && !errors.As(err, &ce) {
				t.Fatalf("%T is not an application error: %v", err, err)
			}
			if strings.TrimSpace(err.Error()) == "" {
				t.Fatal("empty error message")
			}
			return
		}
	}
	t.Fatalf("ErrorCode = %q, want one of %v (err: %v)", code, allowed, err)
}

func FuzzDecodeApply(f *testing.F) {
	f.Add([]byte(`{"objects":[` + strings.Join(decodeSeeds[:9], ",") + `]}`))
	f.Add([]byte(`{"objects":[` + serverWeb1 + `,` + serverWeb1 + `]}`))
	f.Add([]byte(`{"objects":[]}`))
	f.Add([]byte(`{"objects":null}`))
	f.Add([]byte(`{"objects":[1,"a",null]}`))
	f.Add([]byte(`{"objects":{}}`))
	f.Add([]byte(`{"object":[]}`))
	f.Add([]byte(`{"objects":[{"kind":"Route","backend":"web","server":"web1","match":"resource.type =="}]}`))
	f.Add([]byte(`{"objects":[]} trailing`))
	h := newHarness(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := services.DecodeApply(data)
		if err != nil {
			checkCode(t, err, services.EINVALID, services.ETOOLARGE)
			return
		}
		if len(req.Objects) > services.MaxObjects {
			t.Fatalf("decoded %d objects", len(req.Objects))
		}
		for _, o := range req.Objects {
			checkObject(t, o)
		}
		// A viewer's apply validates every object, then is refused before
		// it reads or writes the log.
		before := h.svc.Seq()
		_, err = h.svc.Apply(context.Background(), viewer, req)
		checkCode(t, err, services.EINVALID, services.EFORBIDDEN)
		if h.svc.Seq() != before {
			t.Fatal("a viewer's apply changed the state")
		}
	})
}

// checkObject checks a decoded object has exactly the spec of its kind.
func checkObject(t *testing.T, o services.Object) {
	t.Helper()
	specs := map[string]bool{
		services.KindServer: o.Server != nil, services.KindBackend: o.Backend != nil,
		services.KindRoute: o.Route != nil, services.KindResource: o.Resource != nil, services.KindSite: o.Site != nil,
	}
	n := 0
	for _, set := range specs {
		if set {
			n++
		}
	}
	if !specs[o.Kind] || n != 1 {
		t.Fatalf("object of kind %q has specs %v", o.Kind, specs)
	}
	if r := o.Ref(); r.Kind != o.Kind {
		t.Fatalf("ref %v of a %s", r, o.Kind)
	}
}

func FuzzDecodeObject(f *testing.F) {
	for _, s := range decodeSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		o, err := services.DecodeObject(data)
		if err != nil {
			checkCode(t, err, services.EINVALID)
		} else {
			checkObject(t, o)
		}
		for _, kind := range []string{services.KindServer, services.KindBackend, services.KindRoute, services.KindResource, services.KindSite} {
			o, err := services.DecodeSpec(kind, data)
			if err != nil {
				checkCode(t, err, services.EINVALID)
				continue
			}
			checkObject(t, o)
			if o.Kind != kind || o.Delete {
				t.Fatalf("DecodeSpec(%s) = %+v", kind, o)
			}
		}
	})
}

func FuzzParseFragment(f *testing.F) {
	for _, s := range []string{
		``, `echo {{.name}}`, `printf %s {{.attrs.v}}`, `{{raw .attrs.cmd}}`, `{{.name | raw}}`,
		`{{if .attrs.tls}}listen 443{{else if .attrs.port}}listen {{.attrs.port}}{{else}}listen 80{{end}}`,
		`{{range $k, $v := .labels}}{{$k}}={{$v}}{{end}}`, `{{with .server}}{{.address}}{{end}}`,
		`{{$x := .attrs.v}}{{$x = "y"}}{{$x}}`, `{{printf "%s-%s" .type .name}}`, `{{index .attrs "v"}}`,
		`{{len .attrs.list}}`, `{{range .attrs.list}}{{if .}}{{break}}{{end}}{{continue}}{{end}}`,
		`{{define "x"}}y{{end}}`, `{{template "x"}}`, `{{block "b" .}}{{end}}`, `{{.name`, `{{/* c */}}`,
		`{{- .name -}}`, `{{shq .name}}`, `{{and .name .type}}{{or 0 1}}{{not true}}{{eq 1 1}}`,
		`{{html .name}}{{js .name}}{{urlquery .name}}{{print nil}}{{slice "abc" 1 2}}`,
		`{{.attrs.v.deep.deeper}}`, `{{call .name}}`,
	} {
		f.Add(s)
	}
	data := sampleData(map[string]any{"v": "a'b $(id)", "port": 80.0, "tls": true, "list": []any{"x", 1.0, nil}, "obj": map[string]any{"k": "v"}})
	f.Fuzz(func(t *testing.T, src string) {
		// Quoting is exact for any text.
		if got, ok := shellUnquote(services.ShellQuote(src)); !ok || got != src {
			t.Fatalf("ShellQuote(%q) reads back as %q (%v)", src, got, ok)
		}
		tmpl, err := services.ParseFragment("actions.save", src)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		if tmpl.Tree != nil && !bounded(tmpl.Root) {
			return
		}
		var out limitedBuffer
		_ = tmpl.Execute(&out, data) // errors are fine; panics are not
	})
}

// shellUnquote reads one word of single-quoted strings and \' escapes, as
// ShellQuote writes them; ok is false for anything else.
func shellUnquote(s string) (string, bool) {
	var b strings.Builder
	for len(s) > 0 {
		switch {
		case s[0] == '\'':
			end := strings.IndexByte(s[1:], '\'')
			if end < 0 {
				return "", false
			}
			b.WriteString(s[1 : 1+end])
			s = s[2+end:]
		case strings.HasPrefix(s, `\'`):
			b.WriteByte('\'')
			s = s[2:]
		default:
			return "", false
		}
	}
	return b.String(), true
}

// bounded reports whether executing a template tree takes time and memory
// bounded by its size and the sample data: at most two ranges, no number
// literal beyond 999 (range 99999999999 loops that often) and no long digit
// runs in strings (printf "%999999999d" allocates that much). Other trees
// exhaust resources without a bug to find, so the fuzzer does not run them.
func bounded(n parse.Node) bool {
	ok := true
	ranges := 0
	var walk func(parse.Node)
	walk = func(n parse.Node) {
		if !ok || n == nil {
			return
		}
		switch n := n.(type) {
		case *parse.ListNode:
			if n == nil {
				return
			}
			for _, c := range n.Nodes {
				walk(c)
			}
		case *parse.ActionNode:
			walk(n.Pipe)
		case *parse.PipeNode:
			if n == nil {
				return
			}
			for _, c := range n.Cmds {
				walk(c)
			}
		case *parse.CommandNode:
			for _, a := range n.Args {
				walk(a)
			}
		case *parse.NumberNode:
			ok = len(strings.TrimLeft(n.Text, "+-0")) <= 3
		case *parse.StringNode:
			ok = !hasDigitRun(n.Text, 4)
		case *parse.IfNode:
			walk(n.Pipe)
			walk(n.List)
			walk(n.ElseList)
		case *parse.WithNode:
			walk(n.Pipe)
			walk(n.List)
			walk(n.ElseList)
		case *parse.RangeNode:
			ranges++
			ok = ranges <= 2
			walk(n.Pipe)
			walk(n.List)
			walk(n.ElseList)
		}
	}
	walk(n)
	return ok
}

func hasDigitRun(s string, n int) bool {
	run := 0
	for _, r := range s {
		if unicode.IsDigit(r) {
			run++
			if run >= n {
				return true
			}
		} else {
			run = 0
		}
	}
	return false
}

// limitedBuffer fails writes beyond 1 MiB, which stops the execution.
type limitedBuffer struct{ bytes.Buffer }

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if b.Len()+len(p) > 1<<20 {
		return 0, errors.New("output limit")
	}
	return b.Buffer.Write(p)
}

// FuzzRunRequest: whatever a site command's body holds, it is worked out
// as a dry run or refused with an error a user can act on; every step's
// script sets its instance's variables, quoted, before the command.
func FuzzRunRequest(f *testing.F) {
	for _, s := range []string{
		`{"command":"start"}`, `{"command":"stop","services":["web"],"keepgoing":true}`, `{"command":"update"}`,
		`{"command":"run","custom":"migrate","order":"desc"}`, `{"command":"restart","services":["db","app"]}`,
		`{"command":"status","services":["nope"]}`, `{"command":"run"}`, `{"command":5}`, `{}`, `[]`, `{"command":"start","bogus":1}`,
	} {
		f.Add([]byte(s))
	}
	h := newHarness(f)
	h.apply(f, `{"kind":"Server","name":"s1","method":"local","labels":{"role":"app"}}`, threeTiers)
	f.Fuzz(func(t *testing.T, data []byte) {
		var req services.RunRequest
		if err := services.DecodeJSON(data, &req); err != nil {
			checkCode(t, err, services.EINVALID)
			return
		}
		req.Site, req.DryRun = "shop", true
		before := h.svc.Seq()
		res, err := h.svc.RequestRun(context.Background(), operator, req)
		if h.svc.Seq() != before {
			t.Fatal("a dry run wrote to the log")
		}
		if err != nil {
			checkCode(t, err, services.EINVALID, services.ECONFLICT)
			return
		}
		if len(res.Phases) == 0 {
			t.Fatal("a run with no phase")
		}
		for _, ph := range res.Phases {
			for _, st := range ph.Steps {
				if !strings.HasPrefix(st.Text, "# site shop, service "+st.Service) || !strings.Contains(st.Text, "ORCHESTRA_SERVER='"+st.Server+"'") {
					t.Fatalf("step script:\n%s", st.Text)
				}
			}
		}
	})
}
