package projections_test

import (
	"context"
	"encoding/json"
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/projections"
	"github.com/orchestra-fleet/orchestra/services"
)

// quotedAction is the fixed action the fuzzed values are checked through.
const quotedAction = "echo {{ .attrs.v }} {{ .labels.l }}"

// FuzzRender plans a save of a resource whose attribute v and label l are
// fuzzed, for two backends on one server: "fuzzed", whose save action is a
// fuzzed template the save-time check accepts, and "quoted", whose save
// action is quotedAction. Planning never panics and is deterministic; the
// fuzzed backend's script is well-framed or an ERROR with a reason; the
// quoted backend's script is exactly its frame with each value as one
// single-quoted word, which bash -n accepts.
func FuzzRender(f *testing.F) {
	for _, seed := range []struct{ src, value, label string }{
		{quotedAction, "'; touch $MARK #", "x"},
		{"echo {{ .attrs.v }}", "$(touch x)", "$(touch y)"},
		{"{{if .attrs.v}}echo {{ .attrs.v }}{{else}}echo none{{end}}", "`touch x`", "`id`"},
		{"echo {{ .labels.l }} {{ .name }}", "line1\nline2\ntouch x", "a\nb"},
		{"echo {{ raw .attrs.v }}", "\x00", "\x00"},
		{"{{range $k, $v := .attrs}}echo {{ $k }} {{ $v }}\n{{end}}", "\xff\xfe not utf-8", "\xc3\x28"},
		{"x={{ .attrs.v }}\necho \"$x\"", `'\''`, "$IFS${HOME}"},
		{"echo {{ .attrs.v | printf \"%q\" }} {{ .server.name }}", "\\'\"", "\u00ff\u0080"},
		{"echo {{ .secrets.none }}{{ .attrs.missing }}", "", ""},
		{"", "plain", "plain"},
		{"{{range 3}}echo {{ $.attrs.v }}\n{{end}}", "\t", " "},
	} {
		f.Add(seed.src, seed.value, seed.label)
	}
	r := renderer(f)
	r.MaxScript = 1 << 16
	bash, _ := exec.LookPath("bash")
	f.Fuzz(func(t *testing.T, src, value, label string) {
		if len(src) > 1<<10 || len(value) > 1<<12 || len(label) > 1<<12 {
			return
		}
		_, err := services.ParseFragment("actions.save", src)
		if err != nil {
			return // refused when the backend is saved
		}
		attrs, err := json.Marshal(map[string]string{"v": value})
		if err != nil {
			t.Fatal(err)
		}
		var stored struct{ V string }
		if err := json.Unmarshal(attrs, &stored); err != nil {
			t.Fatal(err)
		}
		v := stored.V // the value as the log holds it: invalid UTF-8 becomes U+FFFD
		if utf8.ValidString(value) && v != value {
			t.Fatalf("attribute %q came back as %q", value, v)
		}

		m := projections.NewPlanModel()
		m.Collect([]events.Payload{
			server("web1"),
			backend("fuzzed", "website", func(b *events.Backend) { b.Actions = map[string]string{"save": src} }),
			backend("quoted", "website", func(b *events.Backend) { b.Actions = map[string]string{"save": quotedAction} }),
			route("fuzzed", "web1", "", true), route("quoted", "web1", "", true),
		})
		ops := m.Collect([]events.Payload{&events.ResourceSaved{Resource: events.Resource{
			Type: "website", Name: "r", Attrs: attrs, Labels: map[string]string{"l": label}}}})
		plan := r.Plan(m, ops)
		if again := r.Plan(m, ops); !reflect.DeepEqual(plan, again) {
			t.Fatalf("two plans of the same operations differ:\n%+v\n%+v", plan, again)
		}
		if len(plan.Dropped) != 0 || len(plan.Servers) != 1 || len(plan.Servers[0].Scripts) != 2 {
			t.Fatalf("plan %+v", plan)
		}
		fuzzed, quoted := plan.Servers[0].Scripts[0], plan.Servers[0].Scripts[1]

		// The fuzzed template: a framed script holding the quoted
		// variables, or an ERROR that says why.
		vars := "ORC_NAME='r' ORC_TYPE='website' ORC_ACTION='save'\nORC_ATTR_v=" + services.ShellQuote(v) + "\n"
		switch fuzzed.State {
		case events.StateReceived:
			if !strings.HasPrefix(fuzzed.Text, projections.DefaultPrepare+"\n# save 'website/r'\n"+vars) ||
				!strings.HasSuffix(fuzzed.Text, "\n"+projections.DefaultCommit) || len(fuzzed.Text) > r.MaxScript {
				t.Fatalf("fuzzed script is not framed:\n%s", fuzzed.Text)
			}
		case events.StateError:
			if fuzzed.Text != "" || fuzzed.Reason == "" {
				t.Fatalf("fuzzed script: ERROR with text %q, reason %q", fuzzed.Text, fuzzed.Reason)
			}
		default:
			t.Fatalf("fuzzed script: state %s (%s)", fuzzed.State, fuzzed.Reason)
		}

		// The fixed template: every value is exactly one quoted word.
		want := projections.DefaultPrepare + "\n# save 'website/r'\n" + vars +
			"echo " + services.ShellQuote(v) + " " + services.ShellQuote(label) + "\n" + projections.DefaultCommit
		if quoted.State != events.StateReceived || quoted.Text != want {
			t.Fatalf("quoted script (%s %s)\n%q\nwant\n%q", quoted.State, quoted.Reason, quoted.Text, want)
		}
		if bash == "" || !printable(v) || !printable(label) {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, bash, "-n")
		cmd.Stdin = strings.NewReader(quoted.Text)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("bash -n: %v %s\n%s", err, out, quoted.Text)
		}
	})
}

// printable: valid UTF-8, every rune printable, no single quote.
func printable(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsRune(s, '\'') &&
		strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) < 0
}
