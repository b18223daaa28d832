package services

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/orchestra-fleet/orchestra/events"
)

// Masked is how every view shows a secret value. Writing Masked back as a
// secret's value keeps the value it has.
const Masked = "****"

// ResourceSpec is a resource as an operator writes it. Secrets hold plain
// values here; they are sealed before they reach an event.
type ResourceSpec struct {
	Type    string            `json:"type"`
	Name    string            `json:"name"`
	Attrs   json.RawMessage   `json:"attrs,omitempty"`
	Labels  map[string]string `json:"labels,omitempty"`
	Secrets map[string]string `json:"secrets,omitempty"`
}

// Sealer encrypts secret values for the event log and decrypts them for
// scripts. The key lives outside the log (infra/secrets keeps it in a 0600
// file in the data dir). context binds a sealed value to where it belongs, so
// it cannot be moved to another resource or key.
type Sealer interface {
	Seal(plain, context string) (string, error)
	Open(sealed, context string) (string, error)
}

// secretContext is what a resource's secret is bound to.
func secretContext(ref, key string) string { return ref + "#" + key }

// resourceDraft is a validated resource spec before its secrets are sealed.
type resourceDraft struct {
	res     events.Resource   // Secrets still empty
	attrs   map[string]string // key → compact JSON value
	secrets map[string]string // plain, or Masked
}

// normalize validates s and returns the resource it describes, with
// attributes in canonical JSON (keys sorted, no insignificant space).
func (s *ResourceSpec) normalize() (resourceDraft, error) {
	if err := validateIdent("type", s.Type); err != nil {
		return resourceDraft{}, err
	}
	if err := validateName("name", s.Name); err != nil {
		return resourceDraft{}, err
	}
	if len(s.Attrs) > maxAttrs {
		return resourceDraft{}, FieldErrorf(EINVALID, "attrs", "is %d bytes of JSON; the limit is %d", len(s.Attrs), maxAttrs)
	}
	raw := map[string]json.RawMessage{}
	if len(s.Attrs) > 0 && !bytes.Equal(bytes.TrimSpace(s.Attrs), []byte("null")) {
		if t := bytes.TrimSpace(s.Attrs); len(t) == 0 || t[0] != '{' {
			return resourceDraft{}, FieldErrorf(EINVALID, "attrs", "must be a JSON object")
		}
		if err := json.Unmarshal(s.Attrs, &raw); err != nil {
			return resourceDraft{}, FieldErrorf(EINVALID, "attrs", "must be a JSON object: %s", err)
		}
	}
	attrs := make(map[string]string, len(raw))
	for _, k := range slices.Sorted(maps.Keys(raw)) {
		if err := validateAttrKey("attrs."+k, k); err != nil {
			return resourceDraft{}, err
		}
		var buf bytes.Buffer
		if err := json.Compact(&buf, raw[k]); err != nil {
			return resourceDraft{}, FieldErrorf(EINVALID, "attrs."+k, "%s", err)
		}
		if err := checkValue("attrs."+k, raw[k]); err != nil {
			return resourceDraft{}, err
		}
		// Compare values in the form json.Marshal gives them, <, > and &
		// escaped, as they come back from the log.
		var esc bytes.Buffer
		json.HTMLEscape(&esc, buf.Bytes())
		raw[k] = esc.Bytes()
		attrs[k] = esc.String()
	}
	canon, err := json.Marshal(raw) // map keys are sorted
	if err != nil {
		return resourceDraft{}, FieldErrorf(EINVALID, "attrs", "%s", err)
	}
	if err := validateLabels("labels", s.Labels); err != nil {
		return resourceDraft{}, err
	}
	if len(s.Secrets) > maxSecrets {
		return resourceDraft{}, FieldErrorf(EINVALID, "secrets", "has %d entries; the limit is %d", len(s.Secrets), maxSecrets)
	}
	for _, k := range slices.Sorted(maps.Keys(s.Secrets)) {
		f := "secrets." + k
		if err := validateAttrKey(f, k); err != nil {
			return resourceDraft{}, err
		}
		if _, clash := attrs[k]; clash {
			return resourceDraft{}, FieldErrorf(EINVALID, f, "is also an attribute; a key is either an attribute or a secret")
		}
		if v := s.Secrets[k]; len(v) > maxSecret {
			return resourceDraft{}, FieldErrorf(EINVALID, f, "is %d bytes long; the limit is %d", len(v), maxSecret)
		}
		if err := noControl(f, s.Secrets[k]); err != nil {
			// The error names the key and the byte, never the value.
			return resourceDraft{}, err
		}
	}
	labels := s.Labels
	if len(labels) == 0 {
		labels = nil
	}
	return resourceDraft{
		res:     events.Resource{Type: s.Type, Name: s.Name, Attrs: canon, Labels: labels},
		attrs:   attrs,
		secrets: s.Secrets,
	}, nil
}

// checkValue refuses what a JSON value may hold but no script or reader
// can use: bytes that are not UTF-8, a NUL character (a script cannot carry
// one), or a number beyond a 64-bit float (every JSON reader would fail on
// it).
func checkValue(field string, value json.RawMessage) error {
	if !utf8.Valid(value) {
		// A JSON reader would turn the bytes into U+FFFD silently; the
		// value would not arrive as sent.
		return FieldErrorf(EINVALID, field, "is not valid UTF-8; JSON strings carry text (encode binary data, for instance as base64)")
	}
	dec := json.NewDecoder(bytes.NewReader(value))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return FieldErrorf(EINVALID, field, "%s", err)
	}
	var walk func(any) string
	walk = func(v any) string {
		switch v := v.(type) {
		case string:
			if strings.ContainsRune(v, 0) {
				return "holds a NUL character, which no script can carry"
			}
		case json.Number:
			if _, err := strconv.ParseFloat(string(v), 64); err != nil {
				return fmt.Sprintf("holds the number %.40s, beyond what a 64-bit float holds", v)
			}
		case []any:
			for _, e := range v {
				if why := walk(e); why != "" {
					return why
				}
			}
		case map[string]any:
			for k, e := range v {
				if why := walk(k); why != "" {
					return why
				}
				if why := walk(e); why != "" {
					return why
				}
			}
		}
		return ""
	}
	if why := walk(v); why != "" {
		return FieldErrorf(EINVALID, field, "%s", why)
	}
	return nil
}

// validateAttrKey checks an attribute or secret key: letters, digits and
// '_', not starting with a digit, so templates reach it as .attrs.KEY and
// match expressions as resource.attrs.KEY.
func validateAttrKey(field, k string) error {
	if k == "" || len(k) > 128 {
		return FieldErrorf(EINVALID, field, "a key must be 1 to 128 bytes long")
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || i > 0 && c >= '0' && c <= '9') {
			return FieldErrorf(EINVALID, field, "key %q: use letters, digits and '_', not starting with a digit", k)
		}
	}
	return nil
}

// seal turns the draft into the resource to store: each secret sealed, a
// Masked value replaced by the value old has, and the list of changed
// fields. old is nil for a new resource.
func (d resourceDraft) seal(sealer Sealer, old *events.Resource) (events.Resource, []string, error) {
	ref := ResourceName(d.res.Type, d.res.Name)
	res := d.res
	oldAttrs := map[string]string{}
	oldPlain := map[string]string{}
	if old != nil {
		var raw map[string]json.RawMessage
		if err := json.Unmarshal(old.Attrs, &raw); err != nil {
			return events.Resource{}, nil, Errorf(EINTERNAL, "stored attributes of %s: %v", ref, err)
		}
		for k, v := range raw {
			oldAttrs[k] = string(v)
		}
		for k, sealed := range old.Secrets {
			plain, err := sealer.Open(sealed, secretContext(ref, k))
			if err != nil {
				return events.Resource{}, nil, Errorf(EINTERNAL, "open secret %s of %s: %v", k, ref, err)
			}
			oldPlain[k] = plain
		}
	}
	newPlain := make(map[string]string, len(d.secrets))
	for k, v := range d.secrets {
		if v == Masked {
			prev, ok := oldPlain[k]
			if !ok {
				return events.Resource{}, nil, FieldErrorf(EINVALID, "secrets."+k, "is %q, which keeps the stored value, but there is none", Masked)
			}
			v = prev
		}
		newPlain[k] = v
	}
	changed := changedKeys("secrets", oldPlain, newPlain)
	changed = append(changed, changedKeys("labels", labelsOf(old), res.Labels)...)
	changed = append(changed, changedKeys("attrs", oldAttrs, d.attrs)...)
	slices.Sort(changed)
	if old != nil && len(changed) == 0 {
		return *old, nil, nil
	}
	if len(newPlain) > 0 {
		res.Secrets = make(map[string]string, len(newPlain))
		for k, v := range newPlain {
			if old != nil && oldPlain[k] == v {
				res.Secrets[k] = old.Secrets[k] // unchanged: keep the sealed bytes
				continue
			}
			sealed, err := sealer.Seal(v, secretContext(ref, k))
			if err != nil {
				return events.Resource{}, nil, Errorf(EINTERNAL, "seal secret %s of %s: %v", k, ref, err)
			}
			res.Secrets[k] = sealed
		}
	}
	return res, changed, nil
}

func labelsOf(r *events.Resource) map[string]string {
	if r == nil {
		return nil
	}
	return r.Labels
}

// ResourceView is a resource as every API and CLI view shows it: secrets
// masked.
type ResourceView struct {
	Type    string            `json:"type"`
	Name    string            `json:"name"`
	Attrs   json.RawMessage   `json:"attrs"`
	Labels  map[string]string `json:"labels,omitempty"`
	Secrets map[string]string `json:"secrets,omitempty"`
}

// ViewResource masks r's secrets.
func ViewResource(r events.Resource) ResourceView {
	v := ResourceView{Type: r.Type, Name: r.Name, Attrs: r.Attrs, Labels: r.Labels}
	if len(r.Secrets) > 0 {
		v.Secrets = make(map[string]string, len(r.Secrets))
		for k := range r.Secrets {
			v.Secrets[k] = Masked
		}
	}
	return v
}
