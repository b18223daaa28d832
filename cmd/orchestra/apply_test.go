package main

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestParseApplyFile(t *testing.T) {
	docs, err := parseApplyFile([]byte("kind: Server\nname: web1\nport: 22\nlabels: {role: web}\n---\n---\n# only a comment\n---\nkind: Route\nbackend: vhost\nserver: web1\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(docs) != 2 || docs[0].Line != 1 || docs[1].Line != 9 || docs[1].Name != "vhost@web1" {
		t.Fatalf("docs = %+v", docs)
	}
	var server map[string]any
	if err := json.Unmarshal(docs[0].JSON, &server); err != nil || server["port"] != float64(22) || server["labels"].(map[string]any)["role"] != "web" {
		t.Fatalf("document 1 as JSON = %s (%v)", docs[0].JSON, err)
	}
	for _, tc := range []struct{ name, file, want string }{
		{"empty", "", "no documents"},
		{"not a mapping", "- a\n- b\n", "document 1 (line 1): must be a mapping"},
		{"scalar", "---\nkind: Server\n---\njust text\n", "document 2 (line 4): must be a mapping"},
		{"syntax", "kind: Server\n  name: [\n", "document 1: "},
		{"duplicate key", "kind: Server\nname: a\nname: b\n", `"name" already defined`},
		{"non-string key", "kind: Server\n? [a, b]\n: c\n", "document 1 (line 1)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseApplyFile([]byte(tc.file))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

// FuzzParseApplyFile: whatever the file, parsing ends in documents that are
// JSON objects, or in an error; never a panic.
func FuzzParseApplyFile(f *testing.F) {
	for _, seed := range []string{
		"kind: Server\nname: web1\n",
		"kind: Resource\ntype: website\nname: shop\nattrs: {domain: a.example.com}\nsecrets: {p: x}\n---\nkind: Route\nbackend: b\nserver: s\n",
		"a: &x [1, 2]\nb: *x\n",
		"- 1\n",
		"kind: !!binary aGVsbG8=\n",
		"{\"kind\": \"Server\", \"name\": \"x\"}",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		docs, err := parseApplyFile(data)
		if err != nil {
			return
		}
		for _, d := range docs {
			var obj map[string]any
			if err := json.Unmarshal(d.JSON, &obj); err != nil {
				t.Fatalf("document at line %d is not a JSON object: %s", d.Line, d.JSON)
			}
		}
	})
}
