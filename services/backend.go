package services

import (
	"maps"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/orchestra-fleet/orchestra/events"
)

// Backend defaults and limits.
const (
	DefaultExecutable = "/bin/bash"
	DefaultTimeout    = 5 * time.Minute
	maxTimeout        = 24 * time.Hour
)

// BackendSpec is a backend as an operator writes it.
type BackendSpec struct {
	Name         string            `json:"name"`
	Type         string            `json:"type"`
	Executable   string            `json:"executable,omitempty"`
	Timeout      string            `json:"timeout,omitempty"`
	IgnoreFields []string          `json:"ignore_fields,omitempty"`
	Related      []events.Related  `json:"related,omitempty"`
	DefaultMatch string            `json:"default_match,omitempty"`
	Prepare      string            `json:"prepare,omitempty"`
	Commit       string            `json:"commit,omitempty"`
	Actions      map[string]string `json:"actions"`
}

// normalize validates s, compiling its default match with c, and returns the
// backend it describes, defaults filled in.
func (s *BackendSpec) normalize(c MatchCompiler) (events.Backend, error) {
	if err := validateIdent("name", s.Name); err != nil {
		return events.Backend{}, err
	}
	if err := validateIdent("type", s.Type); err != nil {
		return events.Backend{}, err
	}
	out := events.Backend{
		Name: s.Name, Type: s.Type, Executable: s.Executable, DefaultMatch: strings.TrimRightFunc(s.DefaultMatch, unicode.IsSpace),
		Prepare: s.Prepare, Commit: s.Commit, Actions: s.Actions,
	}
	if out.Executable == "" {
		out.Executable = DefaultExecutable
	}
	if !path.IsAbs(out.Executable) || strings.ContainsFunc(out.Executable, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return events.Backend{}, FieldErrorf(EINVALID, "executable", "%q must be an absolute path without spaces or control characters", out.Executable)
	}
	timeout := DefaultTimeout
	if s.Timeout != "" {
		d, err := time.ParseDuration(s.Timeout)
		if err != nil {
			return events.Backend{}, FieldErrorf(EINVALID, "timeout", "%q is not a duration such as 90s or 5m", s.Timeout)
		}
		if d < time.Second || d > maxTimeout {
			return events.Backend{}, FieldErrorf(EINVALID, "timeout", "%s is outside 1s…24h", d)
		}
		timeout = d
	}
	out.Timeout = timeout.String()
	if len(out.Actions) == 0 {
		return events.Backend{}, FieldErrorf(EINVALID, "actions", "must define at least one action (save, delete or a custom one)")
	}
	for _, name := range slices.Sorted(maps.Keys(out.Actions)) {
		if err := validateIdent("actions."+name, name); err != nil {
			return events.Backend{}, err
		}
		if strings.TrimSpace(out.Actions[name]) == "" {
			return events.Backend{}, FieldErrorf(EINVALID, "actions."+name, "is empty; remove the action or give it a script")
		}
		if err := checkFragment("actions."+name, out.Actions[name]); err != nil {
			return events.Backend{}, err
		}
	}
	for _, f := range []struct{ name, src string }{{"prepare", out.Prepare}, {"commit", out.Commit}} {
		if err := checkFragment(f.name, f.src); err != nil {
			return events.Backend{}, err
		}
	}
	var err error
	if out.IgnoreFields, err = normalizeIgnore(s.IgnoreFields); err != nil {
		return events.Backend{}, err
	}
	if out.Related, err = normalizeRelated(s.Related); err != nil {
		return events.Backend{}, err
	}
	if out.DefaultMatch != "" {
		if _, err := c.Compile(out.DefaultMatch); err != nil {
			return events.Backend{}, matchError("default_match", err)
		}
	}
	return out, nil
}

// checkFragment refuses a fragment that is too long, holds control
// characters, or is not a valid template.
func checkFragment(field, src string) error {
	if len(src) > maxFragment {
		return FieldErrorf(EINVALID, field, "is %d bytes long; the limit is %d", len(src), maxFragment)
	}
	if err := noControl(field, src); err != nil {
		return err
	}
	if _, err := ParseFragment(field, src); err != nil {
		return FieldErrorf(EINVALID, field, "%s", err)
	}
	return nil
}

// normalizeIgnore checks ignore_fields: each is attrs.<key>, labels,
// labels.<key>, secrets.<key>, or a bare attribute key (short for
// attrs.<key>). It returns them in the long form, sorted and unique.
func normalizeIgnore(in []string) ([]string, error) {
	if len(in) > maxListLen {
		return nil, FieldErrorf(EINVALID, "ignore_fields", "has %d entries; the limit is %d", len(in), maxListLen)
	}
	var out []string
	for i, f := range in {
		name := "ignore_fields[" + strconv.Itoa(i) + "]"
		long := f
		if f != "labels" && !strings.HasPrefix(f, "attrs.") && !strings.HasPrefix(f, "labels.") && !strings.HasPrefix(f, "secrets.") {
			long = "attrs." + f
		}
		_, key, _ := strings.Cut(long, ".")
		if long != "labels" && (key == "" || len(key) > 255 || strings.ContainsFunc(key, func(r rune) bool { return r < ' ' || r == 0x7f })) {
			return nil, FieldErrorf(EINVALID, name, "%q does not name a field (attrs.KEY, labels, labels.KEY or secrets.KEY)", f)
		}
		out = append(out, long)
	}
	slices.Sort(out)
	out = slices.Compact(out)
	return out, nil
}

// normalizeRelated checks related: each entry names a resource type and the
// attribute of it that holds the name of this backend's resource.
func normalizeRelated(in []events.Related) ([]events.Related, error) {
	if len(in) > maxListLen {
		return nil, FieldErrorf(EINVALID, "related", "has %d entries; the limit is %d", len(in), maxListLen)
	}
	seen := make(map[events.Related]bool, len(in))
	for i, r := range in {
		name := "related[" + strconv.Itoa(i) + "]"
		if err := validateIdent(name+".type", r.Type); err != nil {
			return nil, err
		}
		if r.Field == "" || len(r.Field) > 255 || strings.ContainsFunc(r.Field, func(c rune) bool { return c < ' ' || c == 0x7f }) {
			return nil, FieldErrorf(EINVALID, name+".field", "must name the attribute of a %s that holds the main resource's name", r.Type)
		}
		if seen[r] {
			return nil, FieldErrorf(EINVALID, name, "repeats type %q with field %q", r.Type, r.Field)
		}
		seen[r] = true
	}
	if len(in) == 0 {
		return nil, nil
	}
	return in, nil
}

// backendChanges lists the fields that differ between two backends.
func backendChanges(a, b events.Backend) []string {
	var out []string
	add := func(name string, differ bool) {
		if differ {
			out = append(out, name)
		}
	}
	add("type", a.Type != b.Type)
	add("executable", a.Executable != b.Executable)
	add("timeout", a.Timeout != b.Timeout)
	add("ignore_fields", !slices.Equal(a.IgnoreFields, b.IgnoreFields))
	add("related", !slices.Equal(a.Related, b.Related))
	add("default_match", a.DefaultMatch != b.DefaultMatch)
	add("prepare", a.Prepare != b.Prepare)
	add("commit", a.Commit != b.Commit)
	return append(out, changedKeys("actions", a.Actions, b.Actions)...)
}
