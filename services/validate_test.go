package services_test

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/services"
)

// invalidCase is a spec that must be refused with code on field, the message
// holding words.
type invalidCase struct {
	name  string
	spec  map[string]any
	code  string
	field string
	words []string
}

// applySpec decodes spec as a single-object write of kind and applies it.
func (h *harness) applySpec(kind string, spec map[string]any) (services.ApplyResult, error) {
	data, err := json.Marshal(spec)
	if err != nil {
		return services.ApplyResult{}, err
	}
	o, err := services.DecodeSpec(kind, data)
	if err != nil {
		return services.ApplyResult{}, err
	}
	return h.svc.Apply(context.Background(), admin, services.ApplyRequest{Objects: []services.Object{o}, Single: true})
}

// runInvalid checks every case is refused and that none of them wrote.
func runInvalid(t *testing.T, h *harness, kind string, cases []invalidCase) {
	t.Helper()
	before := h.lastSeq(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.applySpec(kind, tc.spec)
			code := tc.code
			if code == "" {
				code = services.EINVALID
			}
			wantError(t, err, code, tc.field, tc.words...)
		})
	}
	if after := h.lastSeq(t); after != before {
		t.Fatalf("refused %s specs wrote events: stream at %d, was %d", kind, after, before)
	}
}

// hostKey builds an authorized_keys line whose blob names blobType.
func hostKey(keyType, blobType string) string {
	var blob []byte
	blob = binary.BigEndian.AppendUint32(blob, uint32(len(blobType)))
	blob = append(blob, blobType...)
	blob = binary.BigEndian.AppendUint32(blob, 32)
	blob = append(blob, make([]byte, 32)...)
	return keyType + " " + base64.StdEncoding.EncodeToString(blob) + " root@web1"
}

func manyLabels(n int) map[string]any {
	m := make(map[string]any, n)
	for i := range n {
		m[fmt.Sprintf("k%d", i)] = "v"
	}
	return m
}

func TestServerValidation(t *testing.T) {
	h := newHarness(t)
	overlong := hostKey("ssh-ed25519", "ssh-ed25519")
	{ // a blob whose length prefix claims more bytes than it has
		blob := binary.BigEndian.AppendUint32(nil, 1000)
		blob = append(blob, "ssh-ed25519"...)
		overlong = "ssh-ed25519 " + base64.StdEncoding.EncodeToString(blob)
	}
	runInvalid(t, h, services.KindServer, []invalidCase{
		{name: "name empty", spec: map[string]any{"name": ""}, field: "name", words: []string{"must not be empty"}},
		{name: "name missing", spec: map[string]any{"address": "10.0.0.1"}, field: "name", words: []string{"must not be empty"}},
		{name: "name too long", spec: map[string]any{"name": strings.Repeat("a", 256), "address": "10.0.0.1"}, field: "name", words: []string{"256 bytes", "255"}},
		{name: "name too long for a route name", spec: map[string]any{"name": strings.Repeat("a", 191), "address": "10.0.0.1"}, field: "name", words: []string{"191 bytes", "190", "backend@server"}},
		{name: "name control char", spec: map[string]any{"name": "web\x01", "address": "10.0.0.1"}, field: "name", words: []string{"control character"}},
		{name: "name tab", spec: map[string]any{"name": "web\t1", "address": "10.0.0.1"}, field: "name", words: []string{"control character"}},
		{name: "name DEL", spec: map[string]any{"name": "web\x7f", "address": "10.0.0.1"}, field: "name", words: []string{"control character"}},
		{name: "name slash", spec: map[string]any{"name": "web/1", "address": "10.0.0.1"}, field: "name", words: []string{"'/'"}},
		{name: "name at", spec: map[string]any{"name": "web@1", "address": "10.0.0.1"}, field: "name", words: []string{"'@'"}},
		{name: "name space", spec: map[string]any{"name": "web 1", "address": "10.0.0.1"}, field: "name", words: []string{"white space"}},
		{name: "name no-break space", spec: map[string]any{"name": "web\u00a01", "address": "10.0.0.1"}, field: "name", words: []string{"white space"}},
		{name: "name not a host and no address", spec: map[string]any{"name": "web_1"}, field: "address", words: []string{"web_1", "set address"}},
		{name: "name with colon not an IP", spec: map[string]any{"name": "web:1"}, field: "address", words: []string{"not a host name"}},
		{name: "address not a host", spec: map[string]any{"name": "web1", "address": "bad host!"}, field: "address", words: []string{"bad host!", "not a host name"}},
		{name: "address label starts with dash", spec: map[string]any{"name": "web1", "address": "-web.example.com"}, field: "address", words: []string{"not a host name"}},
		{name: "address empty label", spec: map[string]any{"name": "web1", "address": "web..example.com"}, field: "address", words: []string{"not a host name"}},
		{name: "address label too long", spec: map[string]any{"name": "web1", "address": strings.Repeat("a", 64) + ".com"}, field: "address", words: []string{"not a host name"}},
		{name: "address too long", spec: map[string]any{"name": "web1", "address": strings.Repeat("abcdefghi.", 26)}, field: "address", words: []string{"not a host name"}},
		{name: "port negative", spec: map[string]any{"name": "web1", "port": -1}, field: "port", words: []string{"-1", "1-65535"}},
		{name: "port too big", spec: map[string]any{"name": "web1", "port": 65536}, field: "port", words: []string{"65536"}},
		{name: "port a string", spec: map[string]any{"name": "web1", "port": "22"}, field: "port", words: []string{"number"}},
		{name: "user starts with dash", spec: map[string]any{"name": "web1", "user": "-root"}, field: "user", words: []string{"-root"}},
		{name: "user with space", spec: map[string]any{"name": "web1", "user": "ro ot"}, field: "user", words: []string{"not a user name"}},
		{name: "user with shell chars", spec: map[string]any{"name": "web1", "user": "root;id"}, field: "user", words: []string{`"root;id"`}},
		{name: "user too long", spec: map[string]any{"name": "web1", "user": strings.Repeat("u", 33)}, field: "user", words: []string{"32 bytes"}},
		{name: "method unknown", spec: map[string]any{"name": "web1", "method": "telnet"}, field: "method", words: []string{"telnet", "ssh, local, agent"}},
		{name: "method upper case", spec: map[string]any{"name": "web1", "method": "SSH"}, field: "method", words: []string{`"SSH"`}},
		{name: "label key empty", spec: map[string]any{"name": "web1", "labels": map[string]any{"": "x"}}, field: "labels.", words: []string{"label key"}},
		{name: "label key starts with dash", spec: map[string]any{"name": "web1", "labels": map[string]any{"-env": "x"}}, field: "labels.-env", words: []string{"-env"}},
		{name: "label key with space", spec: map[string]any{"name": "web1", "labels": map[string]any{"my env": "x"}}, field: "labels.my env", words: []string{"label key"}},
		{name: "label key too long", spec: map[string]any{"name": "web1", "labels": map[string]any{strings.Repeat("k", 64): "x"}}, field: "labels." + strings.Repeat("k", 64), words: []string{"63"}},
		{name: "label value too long", spec: map[string]any{"name": "web1", "labels": map[string]any{"env": strings.Repeat("v", 256)}}, field: "labels.env", words: []string{"256 bytes", "255"}},
		{name: "label value control char", spec: map[string]any{"name": "web1", "labels": map[string]any{"env": "pro\x1bd"}}, field: "labels.env", words: []string{"control character"}},
		{name: "label value not a string", spec: map[string]any{"name": "web1", "labels": map[string]any{"env": 1}}, field: "labels", words: []string{"string"}},
		{name: "too many labels", spec: map[string]any{"name": "web1", "labels": manyLabels(65)}, field: "labels", words: []string{"65 labels", "64"}},
		{name: "host key one word", spec: map[string]any{"name": "web1", "host_key": "ssh-ed25519"}, field: "host_key", words: []string{"<type> <base64 key>"}},
		{name: "host key unknown type", spec: map[string]any{"name": "web1", "host_key": hostKey("ssh-dss", "ssh-dss")}, field: "host_key", words: []string{"ssh-dss"}},
		{name: "host key bad base64", spec: map[string]any{"name": "web1", "host_key": "ssh-ed25519 !!!notbase64"}, field: "host_key", words: []string{"base64"}},
		{name: "host key too short", spec: map[string]any{"name": "web1", "host_key": "ssh-ed25519 AAA="}, field: "host_key", words: []string{"too short"}},
		{name: "host key blob of another type", spec: map[string]any{"name": "web1", "host_key": hostKey("ssh-ed25519", "ssh-rsa")}, field: "host_key", words: []string{"does not hold a ssh-ed25519 key"}},
		{name: "host key blob length beyond data", spec: map[string]any{"name": "web1", "host_key": overlong}, field: "host_key", words: []string{"does not hold"}},
		{name: "active not a bool", spec: map[string]any{"name": "web1", "active": "yes"}, field: "active", words: []string{"true or false"}},
	})

	valid := []struct {
		name string
		spec map[string]any
		want events.Server
	}{
		{"defaults from a host name", map[string]any{"name": "web1.example.com"},
			events.Server{Name: "web1.example.com", Address: "web1.example.com", Port: 22, Method: "ssh", Active: true}},
		{"defaults from an IPv4 name", map[string]any{"name": "10.1.2.3"},
			events.Server{Name: "10.1.2.3", Address: "10.1.2.3", Port: 22, Method: "ssh", Active: true}},
		{"defaults from an IPv6 name", map[string]any{"name": "fd00::1"},
			events.Server{Name: "fd00::1", Address: "fd00::1", Port: 22, Method: "ssh", Active: true}},
		{"name of 190 bytes with an address", map[string]any{"name": strings.Repeat("n", 190), "address": "10.0.0.9"},
			events.Server{Name: strings.Repeat("n", 190), Address: "10.0.0.9", Port: 22, Method: "ssh", Active: true}},
		{"name that is no host, with an address", map[string]any{"name": "db_primary", "address": "db1.internal."},
			events.Server{Name: "db_primary", Address: "db1.internal.", Port: 22, Method: "ssh", Active: true}},
		{"everything set", map[string]any{
			"name": "web2", "address": "192.168.1.2", "port": 2222, "user": "deploy_user-1.x", "method": "local",
			"labels": map[string]any{"env": "prod", "team/owner": "web"}, "host_key": "  " + hostKey("ssh-ed25519", "ssh-ed25519") + "\n", "active": false,
		}, events.Server{
			Name: "web2", Address: "192.168.1.2", Port: 2222, User: "deploy_user-1.x", Method: "local",
			Labels: map[string]string{"env": "prod", "team/owner": "web"}, HostKey: hostKey("ssh-ed25519", "ssh-ed25519"), Active: false,
		}},
		{"agent method, bounds of the port, empty labels", map[string]any{"name": "web3", "port": 65535, "method": "agent", "labels": map[string]any{}, "active": true},
			events.Server{Name: "web3", Address: "web3", Port: 65535, Method: "agent", Active: true}},
		{"port 1", map[string]any{"name": "web4", "port": 1},
			events.Server{Name: "web4", Address: "web4", Port: 1, Method: "ssh", Active: true}},
		{"ecdsa host key", map[string]any{"name": "web5", "host_key": hostKey("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256")},
			events.Server{Name: "web5", Address: "web5", Port: 22, Method: "ssh", Active: true, HostKey: hostKey("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256")}},
	}
	for _, tc := range valid {
		t.Run(tc.name, func(t *testing.T) {
			res, err := h.applySpec(services.KindServer, tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Objects) != 1 || res.Objects[0].Result != services.Created || res.Objects[0].Version != res.Sequence {
				t.Fatalf("result = %+v", res)
			}
			got := lastPayload[*events.ServerSaved](t, h).Server
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("saved\n %+v\nwant\n %+v", got, tc.want)
			}
		})
	}
}

func TestBackendValidation(t *testing.T) {
	h := newHarness(t)
	backend := func(kv ...any) map[string]any {
		m := map[string]any{"name": "web", "type": "vhost", "actions": map[string]any{"save": "echo {{.name}}"}}
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == nil {
				delete(m, kv[i].(string))
				continue
			}
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	}
	actions := func(name, script string) map[string]any { return map[string]any{name: script} }
	many := func(n int, f func(i int) any) []any {
		out := make([]any, n)
		for i := range out {
			out[i] = f(i)
		}
		return out
	}
	runInvalid(t, h, services.KindBackend, []invalidCase{
		{name: "name empty", spec: backend("name", ""), field: "name", words: []string{"must not be empty"}},
		{name: "name upper case", spec: backend("name", "Web"), field: "name", words: []string{"lower-case"}},
		{name: "name starts with a digit", spec: backend("name", "1web"), field: "name", words: []string{"starting with a letter"}},
		{name: "name with underscore", spec: backend("name", "my_web"), field: "name", words: []string{`"my_web"`}},
		{name: "name too long", spec: backend("name", strings.Repeat("w", 65)), field: "name", words: []string{"64 bytes"}},
		{name: "type missing", spec: backend("type", nil), field: "type", words: []string{"must not be empty"}},
		{name: "type with dot", spec: backend("type", "v.host"), field: "type", words: []string{`"v.host"`}},
		{name: "executable relative", spec: backend("executable", "bash"), field: "executable", words: []string{"absolute path"}},
		{name: "executable with space", spec: backend("executable", "/bin/my bash"), field: "executable", words: []string{"without spaces"}},
		{name: "executable with newline", spec: backend("executable", "/bin/bash\n"), field: "executable", words: []string{"absolute path"}},
		{name: "timeout not a duration", spec: backend("timeout", "5 minutes"), field: "timeout", words: []string{"5 minutes", "not a duration"}},
		{name: "timeout bare number", spec: backend("timeout", "30"), field: "timeout", words: []string{`"30"`, "not a duration"}},
		{name: "timeout below 1s", spec: backend("timeout", "999ms"), field: "timeout", words: []string{"outside 1s"}},
		{name: "timeout above 24h", spec: backend("timeout", "24h0m1s"), field: "timeout", words: []string{"24h"}},
		{name: "timeout negative", spec: backend("timeout", "-5m"), field: "timeout", words: []string{"outside 1s"}},
		{name: "actions missing", spec: backend("actions", nil), field: "actions", words: []string{"at least one action"}},
		{name: "actions empty", spec: backend("actions", map[string]any{}), field: "actions", words: []string{"at least one action"}},
		{name: "actions a list", spec: backend("actions", []any{"save"}), field: "actions", words: []string{"an object"}},
		{name: "action key upper case", spec: backend("actions", actions("Save", "echo")), field: "actions.Save", words: []string{"lower-case"}},
		{name: "action key with space", spec: backend("actions", actions("do it", "echo")), field: "actions.do it", words: []string{`"do it"`}},
		{name: "action empty", spec: backend("actions", actions("save", " \n\t")), field: "actions.save", words: []string{"is empty"}},
		{name: "action unclosed", spec: backend("actions", actions("save", "echo {{.name")), field: "actions.save", words: []string{"unclosed action"}},
		{name: "action unknown function", spec: backend("actions", actions("save", "echo {{nope .name}}")), field: "actions.save", words: []string{`"nope" not defined`}},
		{name: "action define", spec: backend("actions", actions("save", `{{define "x"}}rm -rf /{{end}}echo`)), field: "actions.save", words: []string{"define and block"}},
		{name: "action block", spec: backend("actions", actions("save", `{{block "x" .}}echo{{end}}`)), field: "actions.save", words: []string{"define and block"}},
		{name: "action template call", spec: backend("actions", actions("save", `echo {{template "x"}}`)), field: "actions.save", words: []string{"calling other templates"}},
		{name: "action template call in if", spec: backend("actions", actions("save", `{{if .name}}{{template "x"}}{{end}}`)), field: "actions.save", words: []string{"calling other templates"}},
		{name: "action control char", spec: backend("actions", actions("save", "echo \x00")), field: "actions.save", words: []string{"control character"}},
		{name: "action too long", spec: backend("actions", actions("save", strings.Repeat("#", 64<<10+1))), field: "actions.save", words: []string{"65537 bytes"}},
		{name: "action not a string", spec: backend("actions", map[string]any{"save": 1}), field: "actions", words: []string{"string"}},
		{name: "prepare parse error", spec: backend("prepare", "{{if}}x{{end}}"), field: "prepare", words: []string{"missing value for if"}},
		{name: "commit parse error", spec: backend("commit", "{{end}}"), field: "commit", words: []string{"unexpected {{end}}"}},
		{name: "commit too long", spec: backend("commit", strings.Repeat("#", 64<<10+1)), field: "commit", words: []string{"limit"}},
		{name: "ignore_fields empty attribute", spec: backend("ignore_fields", []any{"attrs."}), field: "ignore_fields[0]", words: []string{"does not name a field"}},
		{name: "ignore_fields empty string", spec: backend("ignore_fields", []any{"serial", ""}), field: "ignore_fields[1]", words: []string{"does not name a field"}},
		{name: "ignore_fields empty secret", spec: backend("ignore_fields", []any{"secrets."}), field: "ignore_fields[0]", words: []string{"secrets.KEY"}},
		{name: "ignore_fields control char", spec: backend("ignore_fields", []any{"attrs.a\x01"}), field: "ignore_fields[0]", words: []string{"does not name a field"}},
		{name: "ignore_fields too many", spec: backend("ignore_fields", many(65, func(i int) any { return fmt.Sprint("f", i) })), field: "ignore_fields", words: []string{"65 entries"}},
		{name: "related type empty", spec: backend("related", []any{map[string]any{"type": "", "field": "vhost"}}), field: "related[0].type", words: []string{"must not be empty"}},
		{name: "related type upper case", spec: backend("related", []any{map[string]any{"type": "Cert", "field": "vhost"}}), field: "related[0].type", words: []string{`"Cert"`}},
		{name: "related field empty", spec: backend("related", []any{map[string]any{"type": "cert"}}), field: "related[0].field", words: []string{"cert"}},
		{name: "related field control char", spec: backend("related", []any{map[string]any{"type": "cert", "field": "a\nb"}}), field: "related[0].field", words: []string{"must name the attribute of a cert"}},
		{name: "related duplicate", spec: backend("related", []any{map[string]any{"type": "cert", "field": "vhost"}, map[string]any{"type": "cert", "field": "vhost"}}), field: "related[1]", words: []string{"repeats", "cert"}},
		{name: "related too many", spec: backend("related", many(65, func(i int) any { return map[string]any{"type": "t", "field": fmt.Sprint("f", i)} })), field: "related", words: []string{"65 entries"}},
		{name: "related unknown field", spec: backend("related", []any{map[string]any{"type": "cert", "field": "vhost", "kind": "x"}}), field: "kind", words: []string{"not a known field"}},
		{name: "default_match syntax error", spec: backend("default_match", "resource.type =="), field: "default_match", words: []string{"line 1, column"}},
		{name: "default_match not bool", spec: backend("default_match", `resource.name`), field: "default_match", words: []string{"bool"}},
		{name: "default_match unknown field", spec: backend("default_match", `server.colour == "red"`), field: "default_match", words: []string{"colour"}},
	})

	valid := []struct {
		name string
		spec map[string]any
		want func(*events.Backend) // fills in what differs from the defaults
	}{
		{"defaults", backend("name", "d1"), func(b *events.Backend) {}},
		{"timeout normalised", backend("name", "d2", "timeout", "90s"), func(b *events.Backend) { b.Timeout = "1m30s" }},
		{"timeout lower bound", backend("name", "d3", "timeout", "1s"), func(b *events.Backend) { b.Timeout = "1s" }},
		{"timeout upper bound", backend("name", "d4", "timeout", "24h"), func(b *events.Backend) { b.Timeout = "24h0m0s" }},
		{"executable", backend("name", "d5", "executable", "/usr/bin/env"), func(b *events.Backend) { b.Executable = "/usr/bin/env" }},
		{"ignore_fields normalised", backend("name", "d6", "ignore_fields", []any{"serial", "attrs.serial", "labels", "labels.env", "secrets.pw", "mtime"}),
			func(b *events.Backend) {
				b.IgnoreFields = []string{"attrs.mtime", "attrs.serial", "labels", "labels.env", "secrets.pw"}
			}},
		{"related and default match", backend("name", "d7", "related", []any{map[string]any{"type": "cert", "field": "vhost"}, map[string]any{"type": "cert", "field": "alias"}},
			"default_match", "  resource.labels.env == \"prod\"\n"),
			func(b *events.Backend) {
				b.Related = []events.Related{{Type: "cert", Field: "vhost"}, {Type: "cert", Field: "alias"}}
				b.DefaultMatch = `  resource.labels.env == "prod"` // leading space kept: error positions match the text
			}},
		{"prepare, commit and several actions", backend("name", "d8", "prepare", "set -e", "commit", "systemctl reload nginx",
			"actions", map[string]any{"save": "echo {{.name}}", "delete": "rm {{.attrs.path}}", "renew-cert": "{{raw .attrs.cmd}}"}),
			func(b *events.Backend) {
				b.Prepare, b.Commit = "set -e", "systemctl reload nginx"
				b.Actions = map[string]string{"save": "echo {{.name}}", "delete": "rm {{.attrs.path}}", "renew-cert": "{{raw .attrs.cmd}}"}
			}},
	}
	for _, tc := range valid {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := h.applySpec(services.KindBackend, tc.spec); err != nil {
				t.Fatal(err)
			}
			want := events.Backend{Name: tc.spec["name"].(string), Type: "vhost", Executable: "/bin/bash", Timeout: "5m0s",
				Actions: map[string]string{"save": "echo {{.name}}"}}
			tc.want(&want)
			got := lastPayload[*events.BackendSaved](t, h).Backend
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("saved\n %+v\nwant\n %+v", got, want)
			}
		})
	}
}

func TestRouteValidation(t *testing.T) {
	h := newHarness(t)
	h.apply(t, backendWeb, `{"kind":"Server","name":"r1"}`, `{"kind":"Server","name":"r2"}`, `{"kind":"Server","name":"r3"}`)
	route := func(kv ...any) map[string]any {
		m := map[string]any{"backend": "web", "server": "r1"}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	}
	runInvalid(t, h, services.KindRoute, []invalidCase{
		{name: "backend empty", spec: route("backend", ""), field: "backend", words: []string{"must not be empty"}},
		{name: "backend upper case", spec: route("backend", "Web"), field: "backend", words: []string{"lower-case"}},
		{name: "server empty", spec: route("server", ""), field: "server", words: []string{"must not be empty"}},
		{name: "server with slash", spec: route("server", "a/b"), field: "server", words: []string{"'/'"}},
		{name: "server with at", spec: route("server", "a@b"), field: "server", words: []string{"'@'"}},
		{name: "server too long", spec: route("server", strings.Repeat("s", 256)), field: "server", words: []string{"256 bytes"}},
		{name: "match syntax error", spec: route("match", `resource.type == `), field: "match", words: []string{"line 1, column", "EOF"}},
		{name: "match unknown field mid-line", spec: route("match", `resource.type == "x" && resource.nope`), field: "match", words: []string{"line 1, column 34", "nope"}},
		{name: "match error on line 2", spec: route("match", "resource.type == \"vhost\" &&\n  resource.nope"), field: "match", words: []string{"line 2, column 12", "nope"}},
		{name: "match unbalanced paren", spec: route("match", `(resource.type == "x"`), field: "match", words: []string{"line 1"}},
		{name: "match not boolean", spec: route("match", `resource.name`), field: "match", words: []string{"bool"}},
		{name: "match number", spec: route("match", `1 + 2`), field: "match", words: []string{"bool"}},
		{name: "match unknown field", spec: route("match", `resource.color == "red"`), field: "match", words: []string{"color"}},
		{name: "match unknown server field", spec: route("match", `server.os == "linux"`), field: "match", words: []string{"os"}},
		{name: "match unknown name", spec: route("match", `foo == 1`), field: "match", words: []string{"unknown name foo"}},
		{name: "match type mismatch", spec: route("match", `server.port == "22"`), field: "match", words: []string{"mismatched types"}},
		{name: "match too long", spec: route("match", `resource.name == "`+strings.Repeat("x", 4096)+`"`), field: "match", words: []string{"limit"}},
		{name: "match hides Go types", spec: route("match", `resource.nope`), field: "match", words: []string{"resource has no field nope"}},
		{name: "async not a bool", spec: route("async", "yes"), field: "async", words: []string{"true or false"}},
		{name: "unknown field", spec: route("name", "web@r1"), field: "name", words: []string{"not a known field"}},
	})

	valid := []struct {
		name string
		spec map[string]any
		want events.Route
	}{
		{"empty match", route(), events.Route{Backend: "web", Server: "r1", Active: true}},
		{"match trimmed at the end, async, inactive", route("server", "r2", "match", "\n resource.attrs.port > 1024 && server.labels.env == \"prod\" ", "async", true, "active", false),
			events.Route{Backend: "web", Server: "r2", Match: "\n resource.attrs.port > 1024 && server.labels.env == \"prod\"", Async: true, Active: false}},
		{"match on action", route("server", "r3", "match", `action in ["save", "delete"]`),
			events.Route{Backend: "web", Server: "r3", Match: `action in ["save", "delete"]`, Active: true}},
	}
	for _, tc := range valid {
		t.Run(tc.name, func(t *testing.T) {
			res, err := h.applySpec(services.KindRoute, tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			if want := "web@" + tc.want.Server; res.Objects[0].Name != want {
				t.Fatalf("route name %q, want %q", res.Objects[0].Name, want)
			}
			got := lastPayload[*events.RouteSaved](t, h).Route
			if got != tc.want {
				t.Fatalf("saved\n %+v\nwant\n %+v", got, tc.want)
			}
		})
	}
}

func TestResourceValidation(t *testing.T) {
	h := newHarness(t)
	res := func(kv ...any) map[string]any {
		m := map[string]any{"type": "vhost", "name": "example.com"}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = kv[i+1]
		}
		return m
	}
	manySecrets := map[string]any{}
	for i := range 65 {
		manySecrets[fmt.Sprintf("s%d", i)] = "x"
	}
	bigAttrs := map[string]any{"blob": strings.Repeat("x", 256<<10)}
	runInvalid(t, h, services.KindResource, []invalidCase{
		{name: "type empty", spec: res("type", ""), field: "type", words: []string{"must not be empty"}},
		{name: "type upper case", spec: res("type", "VHost"), field: "type", words: []string{"lower-case"}},
		{name: "name empty", spec: res("name", ""), field: "name", words: []string{"must not be empty"}},
		{name: "name with slash", spec: res("name", "a/b"), field: "name", words: []string{"'/'"}},
		{name: "name with space", spec: res("name", "a b"), field: "name", words: []string{"white space"}},
		{name: "name too long", spec: res("name", strings.Repeat("n", 256)), field: "name", words: []string{"256 bytes"}},
		{name: "name too long for type/name", spec: res("name", strings.Repeat("n", 191)), field: "name", words: []string{"191 bytes", "190"}},
		{name: "NUL in an attribute", spec: res("attrs", map[string]any{"motd": map[string]any{"lines": []any{"ok", "a\u0000b"}}}), field: "attrs.motd", words: []string{"NUL"}},
		{name: "attrs a list", spec: res("attrs", []any{1, 2}), field: "attrs", words: []string{"JSON object"}},
		{name: "attrs a string", spec: res("attrs", "port=80"), field: "attrs", words: []string{"JSON object"}},
		{name: "attrs a number", spec: res("attrs", 80), field: "attrs", words: []string{"JSON object"}},
		{name: "attrs a bool", spec: res("attrs", true), field: "attrs", words: []string{"JSON object"}},
		{name: "attr key starts with digit", spec: res("attrs", map[string]any{"1port": 80}), field: "attrs.1port", words: []string{"not starting with a digit"}},
		{name: "attr key with dash", spec: res("attrs", map[string]any{"server-name": "x"}), field: "attrs.server-name", words: []string{"not starting with a digit"}},
		{name: "attr key with dot", spec: res("attrs", map[string]any{"a.b": "x"}), field: "attrs.a.b", words: []string{`"a.b"`}},
		{name: "attr key empty", spec: res("attrs", map[string]any{"": "x"}), field: "attrs.", words: []string{"1 to 128"}},
		{name: "attr key too long", spec: res("attrs", map[string]any{strings.Repeat("k", 129): 1}), field: "attrs." + strings.Repeat("k", 129), words: []string{"1 to 128"}},
		{name: "attrs too large", spec: res("attrs", bigAttrs), field: "attrs", words: []string{"limit"}},
		{name: "label key bad", spec: res("labels", map[string]any{"_env": "x"}), field: "labels._env", words: []string{`"_env"`}},
		{name: "label value too long", spec: res("labels", map[string]any{"env": strings.Repeat("v", 256)}), field: "labels.env", words: []string{"256 bytes"}},
		{name: "too many labels", spec: res("labels", manyLabels(65)), field: "labels", words: []string{"65 labels"}},
		{name: "secret key with dash", spec: res("secrets", map[string]any{"db-password": "x"}), field: "secrets.db-password", words: []string{`"db-password"`}},
		{name: "secret key empty", spec: res("secrets", map[string]any{"": "x"}), field: "secrets.", words: []string{"1 to 128"}},
		{name: "secret also an attribute", spec: res("attrs", map[string]any{"password": "a"}, "secrets", map[string]any{"password": "b"}), field: "secrets.password", words: []string{"also an attribute"}},
		{name: "secret too long", spec: res("secrets", map[string]any{"pw": strings.Repeat("s", 4097)}), field: "secrets.pw", words: []string{"4097 bytes"}},
		{name: "too many secrets", spec: res("secrets", manySecrets), field: "secrets", words: []string{"65 entries", "64"}},
		{name: "secret not a string", spec: res("secrets", map[string]any{"pw": 1234}), field: "secrets", words: []string{"string"}},
		{name: "secret masked but none stored", spec: res("secrets", map[string]any{"pw": services.Masked}), field: "secrets.pw", words: []string{"there is none"}},
		{name: "unknown field", spec: res("secret", map[string]any{"pw": "x"}), field: "secret", words: []string{"not a known field"}},
	})

	t.Run("bytes that are not UTF-8 are refused, not replaced", func(t *testing.T) {
		o, err := services.DecodeSpec(services.KindResource, []byte("{\"type\":\"vhost\",\"name\":\"bin\",\"attrs\":{\"v\":\"a\xffb\"}}"))
		if err == nil {
			_, err = h.svc.Apply(context.Background(), admin, services.ApplyRequest{Objects: []services.Object{o}, Single: true})
		}
		wantError(t, err, services.EINVALID, "attrs.v", "not valid UTF-8")
	})

	t.Run("secret with a control character is refused without its value", func(t *testing.T) {
		_, err := h.applySpec(services.KindResource, res("secrets", map[string]any{"pw": "hunter2\x1b"}))
		wantError(t, err, services.EINVALID, "secrets.pw", "control character")
		if strings.Contains(err.Error(), "hunter2") {
			t.Fatalf("the error shows the secret: %v", err)
		}
	})

	valid := []struct {
		name string
		spec map[string]any
		want events.Resource
	}{
		{"no attrs", res("name", "a.example"), events.Resource{Type: "vhost", Name: "a.example", Attrs: json.RawMessage(`{}`)}},
		{"null attrs", res("name", "b.example", "attrs", nil), events.Resource{Type: "vhost", Name: "b.example", Attrs: json.RawMessage(`{}`)}},
		{"attrs canonical", res("name", "c.example", "attrs", json.RawMessage(`{ "b" : 1 , "a" : {"y": 2, "x": [1, 2]} , "_c": null }`)),
			events.Resource{Type: "vhost", Name: "c.example", Attrs: json.RawMessage(`{"_c":null,"a":{"y":2,"x":[1,2]},"b":1}`)}},
		{"labels, empty labels dropped", res("name", "d.example", "labels", map[string]any{}),
			events.Resource{Type: "vhost", Name: "d.example", Attrs: json.RawMessage(`{}`)}},
		{"labels kept", res("name", "e.example", "labels", map[string]any{"env": "prod"}),
			events.Resource{Type: "vhost", Name: "e.example", Attrs: json.RawMessage(`{}`), Labels: map[string]string{"env": "prod"}}},
		{"max-size keys", res("name", "f.example", "attrs", map[string]any{strings.Repeat("k", 128): 1}),
			events.Resource{Type: "vhost", Name: "f.example", Attrs: json.RawMessage(`{"` + strings.Repeat("k", 128) + `":1}`)}},
	}
	for _, tc := range valid {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := h.applySpec(services.KindResource, tc.spec); err != nil {
				t.Fatal(err)
			}
			got := lastPayload[*events.ResourceSaved](t, h).Resource
			if string(got.Attrs) != string(tc.want.Attrs) {
				t.Fatalf("attrs %s, want %s", got.Attrs, tc.want.Attrs)
			}
			got.Attrs, tc.want.Attrs = nil, nil
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("saved\n %+v\nwant\n %+v", got, tc.want)
			}
		})
	}

	t.Run("secrets sealed", func(t *testing.T) {
		if _, err := h.applySpec(services.KindResource, res("name", "g.example", "secrets", map[string]any{"pw": "x", "token": ""})); err != nil {
			t.Fatal(err)
		}
		got := lastPayload[*events.ResourceSaved](t, h)
		keys := slices.Sorted(func(yield func(string) bool) {
			for k := range got.Resource.Secrets {
				if !yield(k) {
					return
				}
			}
		})
		if !slices.Equal(keys, []string{"pw", "token"}) {
			t.Fatalf("secrets %v", got.Resource.Secrets)
		}
		for k, v := range got.Resource.Secrets {
			if !strings.HasPrefix(v, "sealed:v1:") {
				t.Fatalf("secret %s stored as %q", k, v)
			}
		}
	})
}

// TestFieldsInAList checks that an apply of several objects names the
// object's index in the field and the object in the message.
func TestFieldsInAList(t *testing.T) {
	h := newHarness(t)
	_, err := h.applyAs(admin, serverWeb1, `{"kind":"Server","name":"web2","port":70000}`)
	wantError(t, err, services.EINVALID, "objects[1].port", "Server web2", "70000")
	_, err = h.applyAs(admin, serverWeb1, `{"kind":"Server","name":"web 2"}`)
	wantError(t, err, services.EINVALID, "objects[1].name", "white space")
}
