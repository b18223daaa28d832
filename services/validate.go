package services

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"unicode"

	"github.com/orchestra-fleet/orchestra/events"
)

// MaxObjectName bounds the name of a server, a resource or a token: with a
// 64-byte identifier and a separator in front it still fits a subject token.
const MaxObjectName = events.MaxNameLen - 65

// Limits on what a model object may hold.
const (
	maxLabels     = 64
	maxLabelKey   = 63
	maxLabelValue = 255
	maxFragment   = 64 << 10  // one script fragment
	maxAttrs      = 256 << 10 // a resource's attributes, as JSON
	maxSecrets    = 64
	maxSecret     = 4 << 10
	maxListLen    = 64 // ignore_fields, related
)

// field joins the path of a field inside a document.
func field(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}

// invalid wraps a catalog validation error as an invalid-input error.
func invalid(err error) error {
	var fe *events.FieldError
	if errors.As(err, &fe) {
		return FieldErrorf(EINVALID, fe.Field, "%s", fe.Reason)
	}
	return err
}

// validateName checks the name of a model object: what events.ValidateName
// accepts, without '/', '@' or white space, so it reads well in URLs, route
// names and shell output.
func validateName(field, s string) error {
	if err := events.ValidateName(field, s); err != nil {
		return invalid(err)
	}
	if len(s) > MaxObjectName {
		return FieldErrorf(EINVALID, field, "is %d bytes long; the limit is %d, so that route and resource names (backend@server, type/name) stay within %d", len(s), MaxObjectName, events.MaxNameLen)
	}
	switch {
	case s == "." || s == "..":
		return FieldErrorf(EINVALID, field, "%q is not a name: it means a directory in paths", s)
	case s[0] == '-':
		return FieldErrorf(EINVALID, field, "%q starts with '-', which commands would take for an option", s)
	}
	for i, r := range s {
		switch {
		case r == '/' || r == '@':
			return FieldErrorf(EINVALID, field, "%q contains %q at byte %d, which names may not hold", s, r, i)
		case unicode.IsSpace(r):
			return FieldErrorf(EINVALID, field, "%q contains white space at byte %d", s, i)
		}
	}
	return nil
}

// validateIdent checks a schema identifier: a resource type, an action, a
// backend name.
func validateIdent(field, s string) error {
	return invalid(events.ValidateIdent(field, s))
}

// validateLabels checks label keys (letters, digits, '.', '_', '-', '/',
// starting with a letter or digit, at most 63 bytes) and values (at most 255
// bytes, no control characters).
func validateLabels(prefix string, labels map[string]string) error {
	if len(labels) > maxLabels {
		return FieldErrorf(EINVALID, prefix, "has %d labels; the limit is %d", len(labels), maxLabels)
	}
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		if err := validateLabelKey(field(prefix, k), k); err != nil {
			return err
		}
		v := labels[k]
		if len(v) > maxLabelValue {
			return FieldErrorf(EINVALID, field(prefix, k), "is %d bytes long; the limit is %d", len(v), maxLabelValue)
		}
		if err := noControl(field(prefix, k), v); err != nil {
			return err
		}
	}
	return nil
}

func validateLabelKey(field, k string) error {
	if k == "" || len(k) > maxLabelKey {
		return FieldErrorf(EINVALID, field, "a label key must be 1 to %d bytes long", maxLabelKey)
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || !strings.ContainsRune("._-/", rune(c))) {
			return FieldErrorf(EINVALID, field, "label key %q: use letters, digits, '.', '_', '-' and '/', starting with a letter or digit", k)
		}
	}
	return nil
}

// noControl refuses invalid UTF-8 and control characters other than tab and
// newline.
func noControl(field, s string) error {
	for i, r := range s {
		if r == unicode.ReplacementChar && !strings.HasPrefix(s[i:], "\uFFFD") {
			return FieldErrorf(EINVALID, field, "is not valid UTF-8 (byte %d)", i)
		}
		if r != '\t' && r != '\n' && (r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0)) {
			return FieldErrorf(EINVALID, field, "contains control character %U at byte %d", r, i)
		}
	}
	return nil
}

// validHost reports whether s is an IP address or a DNS host name (RFC 1123
// labels of letters, digits and '-', at most 253 bytes).
func validHost(s string) bool {
	if _, err := netip.ParseAddr(s); err == nil {
		return true
	}
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(strings.TrimSuffix(s, "."), ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// oneOf refuses v unless it is one of allowed.
func oneOf(field, v string, allowed ...string) error {
	if slices.Contains(allowed, v) {
		return nil
	}
	return FieldErrorf(EINVALID, field, "%q is not one of %s", v, strings.Join(allowed, ", "))
}

// changedKeys lists prefix.k for every key whose value differs between a and b.
func changedKeys[V comparable](prefix string, a, b map[string]V) []string {
	var out []string
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			out = append(out, prefix+"."+k)
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			out = append(out, prefix+"."+k)
		}
	}
	slices.Sort(out)
	return out
}

// quoteList renders names for a message.
func quoteList(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = fmt.Sprintf("%q", n)
	}
	return strings.Join(q, ", ")
}
