package events

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// Stream names and the subjects they hold (DESIGN.md §6).
const (
	StreamEvents  = "EVENTS"
	StreamExec    = "EXEC"
	StreamResults = "RESULTS"
	StreamLogs    = "LOGS"
	StreamNotify  = "NOTIFY"

	SubjectEvents  = "orchestra.evt.>"
	SubjectExec    = "orchestra.exec.>"
	SubjectResults = "orchestra.res.>"
	SubjectLogs    = "orchestra.log.>"
	SubjectNotify  = "orchestra.notify.>"
	// SubjectNotifySend holds one message per notification to deliver,
	// SubjectNotifyPoison those given up on.
	SubjectNotifySend   = "orchestra.notify.send"
	SubjectNotifyPoison = "orchestra.notify.poison"

	eventPrefix = "orchestra.evt."

	// OutputBucket is the object store bucket that keeps the whole output
	// of scripts whose output outgrew the chunks published on RESULTS.
	OutputBucket = "orchestra-output"
)

// MaxNameLen bounds every name that ends up in a subject token: aggregate ids,
// server names, service names. 255 bytes fits a fully qualified host name.
const MaxNameLen = 255

// Token encodes name as one NATS subject token that is also valid in stream
// and consumer names. Letters, digits, '-' and '_' pass through unchanged so
// plain names stay readable in the NATS CLI; every other byte becomes '='
// followed by two upper-case hex digits ("web1.example.com" becomes
// "web1=2Eexample=2Ecom"). '=' is legal in subjects, stream and consumer names
// and KV keys alike. The encoding is reversible by ParseToken.
func Token(name string) (string, error) {
	if err := ValidateName("name", name); err != nil {
		return "", err
	}
	if plain(name) {
		return name, nil
	}
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(name) * 2)
	for i := 0; i < len(name); i++ {
		c := name[i]
		if plainByte(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('=')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&0x0f])
	}
	return b.String(), nil
}

// ParseToken reverses Token. It accepts only tokens Token can produce, so
// every name has exactly one token.
func ParseToken(token string) (string, error) {
	if plain(token) {
		if err := ValidateName("token", token); err != nil {
			return "", err
		}
		return token, nil
	}
	var b strings.Builder
	b.Grow(len(token))
	for i := 0; i < len(token); i++ {
		c := token[i]
		switch {
		case plainByte(c):
			b.WriteByte(c)
		case c == '=' && i+2 < len(token) && isUpperHex(token[i+1]) && isUpperHex(token[i+2]):
			v := unhex(token[i+1])<<4 | unhex(token[i+2])
			if plainByte(v) {
				return "", &FieldError{Field: "token", Reason: fmt.Sprintf("escape at byte %d encodes %q, which is never escaped", i, v)}
			}
			b.WriteByte(v)
			i += 2
		default:
			return "", &FieldError{Field: "token", Reason: fmt.Sprintf("byte %d (%q) is not a valid token character", i, c)}
		}
	}
	name := b.String()
	if err := ValidateName("token", name); err != nil {
		return "", err
	}
	return name, nil
}

// ValidateName checks a name that will be encoded into a subject token:
// non-empty, at most MaxNameLen bytes, valid UTF-8, no control characters.
// field names the input in the error.
func ValidateName(field, name string) error {
	switch {
	case name == "":
		return &FieldError{Field: field, Reason: "must not be empty"}
	case len(name) > MaxNameLen:
		return &FieldError{Field: field, Reason: fmt.Sprintf("is %d bytes long; the limit is %d", len(name), MaxNameLen)}
	case !utf8.ValidString(name):
		return &FieldError{Field: field, Reason: "is not valid UTF-8"}
	}
	for i, r := range name {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return &FieldError{Field: field, Reason: fmt.Sprintf("contains control character %U at byte %d", r, i)}
		}
	}
	return nil
}

// ValidateIdent checks a fixed identifier of the schema (aggregate types):
// lower-case letters, digits and '-', starting with a letter.
func ValidateIdent(field, s string) error {
	if s == "" {
		return &FieldError{Field: field, Reason: "must not be empty"}
	}
	if len(s) > 64 {
		return &FieldError{Field: field, Reason: "is longer than 64 bytes"}
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'a' && c <= 'z' || i > 0 && (c >= '0' && c <= '9' || c == '-')
		if !ok {
			return &FieldError{Field: field, Reason: fmt.Sprintf("%q: use lower-case letters, digits and '-', starting with a letter", s)}
		}
	}
	return nil
}

// EventSubject is the subject an event of aggregate agg is stored under:
// orchestra.evt.<aggregate type>.<token(id)>.<event type>.
func EventSubject(agg Aggregate, eventType string) (string, error) {
	filter, err := AggregateFilter(agg)
	if err != nil {
		return "", err
	}
	return filter[:len(filter)-1] + eventType, nil
}

// AggregateFilter is the subject filter matching every event of agg; the
// event store guards an aggregate with the last sequence under this filter.
func AggregateFilter(agg Aggregate) (string, error) {
	if err := agg.Validate(); err != nil {
		return "", err
	}
	tok, err := Token(agg.ID)
	if err != nil {
		return "", err
	}
	return eventPrefix + agg.Type + "." + tok + ".>", nil
}

// ParseEventSubject splits an event subject into its aggregate and type.
func ParseEventSubject(subject string) (Aggregate, string, error) {
	rest, ok := strings.CutPrefix(subject, eventPrefix)
	if !ok {
		return Aggregate{}, "", &FieldError{Field: "subject", Reason: fmt.Sprintf("%q is not under %s", subject, eventPrefix)}
	}
	parts := strings.Split(rest, ".")
	if len(parts) != 3 {
		return Aggregate{}, "", &FieldError{Field: "subject", Reason: fmt.Sprintf("%q does not have the form %s<aggregate>.<id>.<type>", subject, eventPrefix)}
	}
	id, err := ParseToken(parts[1])
	if err != nil {
		return Aggregate{}, "", err
	}
	agg := Aggregate{Type: parts[0], ID: id}
	if err := agg.Validate(); err != nil {
		return Aggregate{}, "", err
	}
	return agg, parts[2], nil
}

func plain(s string) bool {
	for i := 0; i < len(s); i++ {
		if !plainByte(s[i]) {
			return false
		}
	}
	return true
}

func plainByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

func isUpperHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'A' && c <= 'F' }

func unhex(c byte) byte {
	if c <= '9' {
		return c - '0'
	}
	return c - 'A' + 10
}

// Subjects of plans and results (DESIGN.md §6).
const (
	execPrefix   = "orchestra.exec."
	resultPrefix = "orchestra.res."
	unitPrefix   = "orchestra.unit."
	// SubjectUnits holds the records of planned units, on RESULTS.
	SubjectUnits = "orchestra.unit.>"
)

// ExecSubject is server's queue of plans: orchestra.exec.<token(server)>.
func ExecSubject(server string) (string, error) {
	tok, err := Token(server)
	if err != nil {
		return "", err
	}
	return execPrefix + tok, nil
}

// ScriptSubject is where results about one script go:
// orchestra.res.<token(server)>.<script id>.<result type>.
func ScriptSubject(server string, script fmt.Stringer, resultType string) (string, error) {
	tok, err := Token(server)
	if err != nil {
		return "", err
	}
	return resultPrefix + tok + "." + script.String() + "." + resultType, nil
}

// ScriptFilter matches the results of one type (">" for every type) about
// script, whatever its server.
func ScriptFilter(script fmt.Stringer, resultType string) string {
	return resultPrefix + "*." + script.String() + "." + resultType
}

// UnitSubject is where results about a unit of work go:
// orchestra.unit.<unit id>.<result type>.
func UnitSubject(unit fmt.Stringer, resultType string) string {
	return unitPrefix + unit.String() + "." + resultType
}

// LogSubject is where the output of one instance of a supervised service
// goes, a line per message: orchestra.log.<token(server)>.<token(service)>.<index>.
func LogSubject(server, service string, index int) (string, error) {
	srv, err := Token(server)
	if err != nil {
		return "", err
	}
	svc, err := Token(service)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("orchestra.log.%s.%s.%d", srv, svc, index), nil
}
