package services_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/orchestra-fleet/orchestra/services"
)

// sampleData is template data as a script sees it: attributes decoded from
// JSON.
func sampleData(attrs map[string]any) map[string]any {
	return map[string]any{
		"name": "example.com", "type": "vhost", "action": "save",
		"attrs":   attrs,
		"labels":  map[string]string{"env": "prod"},
		"secrets": map[string]string{"db_password": "pa$$ 'word'"},
		"server":  map[string]any{"name": "web1", "address": "10.0.0.1", "labels": map[string]string{"env": "prod"}},
	}
}

func render(t *testing.T, src string, data any) string {
	t.Helper()
	tmpl, err := services.ParseFragment("actions.save", src)
	if err != nil {
		t.Fatalf("parse %q: %v", src, err)
	}
	var out bytes.Buffer
	if err := tmpl.Execute(&out, data); err != nil {
		t.Fatalf("execute %q: %v", src, err)
	}
	return out.String()
}

// runBash runs script with bash in an empty directory and returns what it
// printed; it fails the test if the script left a file behind.
func runBash(t *testing.T, script string) string {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/bash", "--norc", "--noprofile", "-c", script)
	cmd.Dir = dir
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + dir}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("bash -c %q: %v\n%s", script, err, stderr.String())
	}
	if stderr.Len() > 0 {
		t.Fatalf("bash -c %q wrote to stderr: %s", script, stderr.String())
	}
	if left, _ := os.ReadDir(dir); len(left) > 0 {
		t.Fatalf("bash -c %q created %s: a value ran a command", script, left[0].Name())
	}
	return stdout.String()
}

// TestFragmentQuotesValues proves a resource value cannot run a command: a
// fragment prints it through bash exactly as it is.
func TestFragmentQuotesValues(t *testing.T) {
	if _, err := os.Stat("/bin/bash"); err != nil {
		t.Skip("no /bin/bash")
	}
	values := map[string]string{
		"plain":             "example.com",
		"empty":             "",
		"single quote":      "it's",
		"only quotes":       "'''",
		"double quotes":     `say "hi"`,
		"command subst":     "$(touch pwned)",
		"backticks":         "`touch pwned`",
		"newline":           "line1\nline2\n",
		"semicolon":         "a; touch pwned",
		"and and":           "x && touch pwned",
		"pipe":              "x | tee pwned",
		"redirect":          "x > pwned",
		"variable":          "$HOME ${PATH} $0 $$",
		"backslashes":       `a\b\\c\`,
		"quote breakout":    `'; touch pwned; echo '`,
		"escaped breakout":  `\'; touch pwned; #`,
		"glob":              "* ? [a-z]",
		"tilde and bang":    "~root !! !$",
		"dash":              "-n",
		"percent":           "%s %d %%",
		"tab":               "a\tb",
		"unicode":           "héllo wörld ☃",
		"brace expansion":   "{a,b}",
		"process subst":     "<(touch pwned)",
		"arithmetic":        "$((1+1))",
		"ansi-c quoting":    "$'\\x41'",
		"heredoc":           "<<EOF\ntouch pwned\nEOF",
		"comment":           "# not a comment",
		"multiline command": "x\n$(touch pwned)\n`touch pwned`",
	}
	for name, v := range values {
		t.Run(name, func(t *testing.T) {
			for _, src := range []string{
				`printf %s {{.attrs.v}}`,
				`printf %s {{ .attrs.v }}`,
				`printf %s {{index .attrs "v"}}`,
				`{{with .attrs.v}}printf %s {{.}}{{end}}`,
				`{{if .attrs.v}}printf %s {{.attrs.v}}{{else}}printf %s {{.attrs.v}}{{end}}`,
				`{{$v := .attrs.v}}printf %s {{$v}}`,
				`{{range .attrs.list}}printf %s {{.}}{{end}}`,
				`{{range $i, $e := .attrs.list}}printf %s {{$e}}{{end}}`,
				`printf %s {{printf "%s" .attrs.v}}`,
			} {
				script := render(t, src, sampleData(map[string]any{"v": v, "list": []any{v}}))
				if got := runBash(t, script); got != v {
					t.Fatalf("template %q rendered %q; bash printed %q, want %q", src, script, got, v)
				}
			}
		})
	}
}

func TestFragmentRendersValues(t *testing.T) {
	data := sampleData(map[string]any{"port": float64(80), "tls": true, "list": []any{1.0, "a"}, "obj": map[string]any{"k": "v"}, "none": nil})
	for _, tc := range []struct{ src, want string }{
		{`{{.name}}`, `'example.com'`},
		{`{{.attrs.port}}`, `'80'`},
		{`{{.attrs.tls}}`, `'true'`},
		{`{{.attrs.list}}`, `'[1,"a"]'`},
		{`{{.attrs.obj}}`, `'{"k":"v"}'`},
		{`{{.attrs.none}}`, `''`},
		{`{{.attrs.missing}}`, `''`},
		{`{{.labels}}`, `'{"env":"prod"}'`},
		{`{{.secrets.db_password}}`, `'pa$$ '\''word'\'''`},
		{`{{.server.address}}:{{.labels.env}}`, `'10.0.0.1':'prod'`},
		{`{{shq .name}}`, `''\''example.com'\'''`}, // quoted twice: still one word
		{`echo {{/* a comment */}}done`, `echo done`},
		{`{{$x := "a b"}}{{$x = "c d"}}{{$x}}`, `'c d'`},
		{`{{raw .attrs.port}} {{.name | raw}}`, `80 example.com`},
		{`{{raw "echo $(id)"}}`, `echo $(id)`},
		{`{{range .attrs.list}} {{.}}{{end}}`, ` '1' 'a'`},
		{`{{len .attrs.list}}`, `'2'`},
		{`{{printf "%s-%3s" .name .type}}`, `'example.com-vhost'`},
	} {
		// Each value stands as an argument, the one place it may.
		if got := render(t, "echo "+tc.src, data); got != "echo "+tc.want {
			t.Errorf("%s rendered %q, want %q", tc.src, got, "echo "+tc.want)
		}
	}
}

// printf may not be asked for output out of all proportion to the fragment.
func TestFragmentPrintfIsBounded(t *testing.T) {
	for _, src := range []string{`{{printf "%0999999999d" 1}}`, `{{printf "%.1000f" 1.5}}`, `{{printf "%*d" 100000000 1}}`, `{{printf "%[1]*d" 100000000}}`} {
		tmpl, err := services.ParseFragment("actions.save", "echo "+src)
		if err != nil {
			t.Fatalf("parse %s: %v", src, err)
		}
		err = tmpl.Execute(io.Discard, sampleData(nil))
		if err == nil || !strings.Contains(err.Error(), "widths and precisions above 999") {
			t.Errorf("%s executed with %v", src, err)
		}
	}
}

func TestFragmentRawIsUnquoted(t *testing.T) {
	if _, err := os.Stat("/bin/bash"); err != nil {
		t.Skip("no /bin/bash")
	}
	script := render(t, `{{raw .attrs.cmd}}`, sampleData(map[string]any{"cmd": "printf '%s|%s' a b"}))
	if got := runBash(t, script); got != "a|b" {
		t.Fatalf("raw rendered %q; bash printed %q", script, got)
	}
}

func TestFragmentRefused(t *testing.T) {
	for _, tc := range []struct{ name, src, words string }{
		{"define", `{{define "x"}}rm -rf /{{end}}echo`, "define and block are not allowed"},
		{"block", `{{block "x" .}}echo{{end}}`, "define and block are not allowed"},
		{"template", `echo {{template "x" .}}`, "calling other templates"},
		{"template in range", `{{range .attrs.list}}{{template "x"}}{{end}}`, "calling other templates"},
		{"template in else", `{{if .name}}a{{else}}{{template "x"}}{{end}}`, "calling other templates"},
		{"template in with-else", `{{with .name}}a{{else with .type}}{{template "x"}}{{end}}`, "calling other templates"},
		{"unclosed action", `echo {{.name`, "actions.save:1: unclosed action"},
		{"unclosed if", "echo\n{{if .name}}x", "actions.save:2: unexpected EOF"},
		{"unknown function", `{{exec "id"}}`, `function "exec" not defined`},
		{"bad syntax", `{{.name | | raw}}`, "actions.save:1:"},
		{"stray end", `{{end}}`, "unexpected {{end}}"},
		{"range over a number", "echo\n{{range 1000000000000}}{{end}}", "actions.save:2: range may go only over a value of the data"},
		{"range over a call", `{{range slice .attrs.list 0}}{{end}}`, "range may go only over a value"},
		{"range in a range", `{{range .attrs.list}}{{range $.attrs.list}}x{{end}}{{end}}`, "a range inside a range"},
		{"range in an if in a range", `{{range .attrs.list}}{{if .}}{{range $.attrs.list}}{{end}}{{end}}{{end}}`, "a range inside a range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := services.ParseFragment("actions.save", tc.src)
			if err == nil || !strings.Contains(err.Error(), tc.words) {
				t.Fatalf("ParseFragment(%q) = %v, want an error saying %q", tc.src, err, tc.words)
			}
			if strings.HasPrefix(err.Error(), "template: ") {
				t.Fatalf("the error shows the package: %v", err)
			}
		})
	}
	if tmpl, err := services.ParseFragment("commit", ""); err != nil || tmpl == nil {
		t.Fatalf("an empty fragment: %v", err)
	}
}

func TestShellQuote(t *testing.T) {
	for _, tc := range []struct {
		in   any
		want string
	}{
		{"", `''`}, {nil, `''`}, {"a b", `'a b'`}, {"it's", `'it'\''s'`}, {42, `'42'`}, {2.5, `'2.5'`},
		{false, `'false'`}, {[]any{"x", 1.0}, `'["x",1]'`}, {map[string]string{"a": "b"}, `'{"a":"b"}'`},
	} {
		if got := services.ShellQuote(tc.in); got != tc.want {
			t.Errorf("ShellQuote(%#v) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

// A value is quoted as one word of the script; where a quoted word would
// not be one (inside quotes, backticks, a comment or a here-document), the
// fragment is refused when the backend is saved.
func TestParseFragmentRefusesValuesWhereQuotingWouldNotHold(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{"echo \"{{ .name }}\"\n", "line 1: {{.name}} is inside double quotes"},
		{"echo ok\necho '{{ .name }}'\n", "line 2: {{.name}} is inside single quotes"},
		{"echo `cat {{ .name }}`\n", "inside backticks"},
		{"# for {{ .name }}\n", "inside a comment"},
		{"cat <<EOF\n{{ .name }}\nEOF\n", "line 2: {{.name}} is inside a here-document"},
		{"cat <<-'X' >f\n\tx\n\tX\n{{ if .attrs.a }}echo \"{{ .attrs.a }}\"{{ end }}\n", "inside double quotes"},
	} {
		_, err := services.ParseFragment("f", tc.src)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want %q", tc.src, err, tc.want)
		}
	}
	for _, src := range []string{
		"echo {{ .name }} \"it's\" # {{ raw .name }}\n",
		"cat <<'EOF' >f\n$x\nEOF\necho {{ .name }}\n",
		"x=$(basename {{ .name }}); echo a\\'{{ .name }} --to={{ .name }} >{{ .name }}.log\n",
		"echo \"{{ raw .name }}\"\n",
	} {
		if _, err := services.ParseFragment("f", src); err != nil {
			t.Errorf("%q: %v", src, err)
		}
	}
}

// Fragments that would let a value run a command if accepted: each is
// refused when the backend is saved.
func TestParseFragmentRefusesEveryKnownEscape(t *testing.T) {
	for _, src := range []string{
		"echo \\{{.attrs.v}}\n",                                              // a backslash before the value
		"echo \"\\{{.attrs.v}}\"\n",                                          // … inside double quotes
		"cat <<EOF # note\n{{.attrs.v}}\nEOF\n",                              // a here-document opened before a comment
		"cat <<EOF\n\tEOF\n{{.attrs.v}}\nEOF\n",                              // a tab-indented terminator without <<-
		"cat << -EOF\nEOF\n{{.attrs.v}}\n-EOF\n",                             // "-EOF" is the delimiter, not <<-
		"echo a\\ #'\n{{.attrs.v}}\n'\n",                                     // an escaped space does not start a comment
		"echo $'\\' {{.attrs.v}} '\n",                                        // inside $'…'
		"{{if .attrs.tls}}echo 'on:{{else}}echo 'off:{{end}}{{.attrs.v}}'\n", // branches that open quotes
		"echo $(( {{.attrs.v}} ))\n",                                         // arithmetic
		"(( n = {{.attrs.v}} ))\n",
		"[[ 1 -eq {{.attrs.v}} ]]\n",
		"echo ${a[{{.attrs.v}}]}\n",
		"echo ${x:{{.attrs.v}}}\n",
		"let n={{.attrs.v}}\n",
		"a[{{.attrs.v}}]=1\n",
		"declare -i n={{.attrs.v}}\n",
		"eval {{.attrs.v}}\n",
		"printf -v {{.attrs.v}} %s x\n",
		"{{.attrs.v}} --help\n", // the command word
		"x=1 {{.attrs.v}}\n",
		"if {{.attrs.v}}; then :; fi\n",
		"sudo {{.attrs.v}}\n",
		"bash -c {{.attrs.v}}\n",
		"ssh host {{.attrs.v}}\n",
		"echo $(echo \"{{.attrs.v}}\")\n",
		"trap {{.attrs.v}} EXIT\n",
		"echo ${{.attrs.v}}\n",
		"case x in\n  *) {{.attrs.v}} ;;\nesac\n", // the command word of a case branch
	} {
		if _, err := services.ParseFragment("f", src); err == nil {
			t.Errorf("%q was accepted", src)
		}
	}
}

// Fragments a backend author writes every day stay accepted, and bash runs
// them with a hostile value as plain data.
func TestParseFragmentKeepsOrdinaryScripts(t *testing.T) {
	hostile := "a'b\"c$(touch pwned)`touch pwned`;touch pwned|x&y\nz\\ ${IFS} a[$(touch pwned)]"
	dir := t.TempDir()
	for _, src := range []string{
		"printf '%s' {{ .attrs.v }} > out",
		"x={{ .attrs.v }}; printf '%s' \"$x\" > out",
		"mkdir -p sites && printf %s {{ .attrs.v }} >sites/{{ .name }}.conf && cat sites/{{ .name }}.conf > out",
		"f() { printf %s \"$1\" > out; }\nf {{ .attrs.v }}",
		"for w in {{ .attrs.v }}; do printf %s \"$w\" > out; done",
		"case {{ .attrs.v }} in\n  *) printf %s {{ .attrs.v }} > out ;;\nesac",
		"cat <<'EOF' > /dev/null\nliteral $HOME\nEOF\nprintf %s {{ .attrs.v }} > out",
		"if [ -n {{ .attrs.v }} ]; then printf %s {{ .attrs.v }} > out; fi",
		"n=$(printf %s {{ .attrs.v }} | wc -c); printf %s {{ .attrs.v }} > out",
		"{{ if .attrs.v }}printf %s {{ .attrs.v }} > out{{ else }}exit 1{{ end }}",
	} {
		script := render(t, src, sampleData(map[string]any{"v": hostile}))
		cmd := exec.Command("/bin/bash", "-c", script)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%q rendered\n%s\nbash: %v %s", src, script, err, out)
		}
		got, err := os.ReadFile(filepath.Join(dir, "out"))
		if err != nil || string(got) != hostile {
			t.Errorf("%q: bash wrote %q, want the value as it is", src, got)
		}
		if _, err := os.Stat(filepath.Join(dir, "pwned")); err == nil {
			t.Fatalf("%q: the value ran a command", src)
		}
	}
}
