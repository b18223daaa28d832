package services

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"maps"
	"strings"

	"github.com/orchestra-fleet/orchestra/events"
)

// Server methods.
const (
	MethodSSH   = "ssh"
	MethodLocal = "local"
	MethodAgent = "agent"
)

// ServerSpec is a server as an operator writes it. Zero values take the
// documented defaults: address = name, port 22, method ssh, active true.
type ServerSpec struct {
	Name    string            `json:"name"`
	Address string            `json:"address,omitempty"`
	Port    int               `json:"port,omitempty"`
	User    string            `json:"user,omitempty"`
	Method  string            `json:"method,omitempty"`
	Labels  map[string]string `json:"labels,omitempty"`
	HostKey string            `json:"host_key,omitempty"`
	// TrustOnFirstUse: accept an unknown host key on the first connection
	// and pin it.
	TrustOnFirstUse bool  `json:"trust_on_first_use,omitempty"`
	Active          *bool `json:"active,omitempty"`
}

// normalize validates s and returns the server it describes, defaults
// filled in.
func (s *ServerSpec) normalize() (events.Server, error) {
	if err := validateName("name", s.Name); err != nil {
		return events.Server{}, err
	}
	out := events.Server{
		Name: s.Name, Address: s.Address, Port: s.Port, User: s.User, Method: s.Method,
		Labels: s.Labels, HostKey: strings.TrimSpace(s.HostKey), TrustOnFirstUse: s.TrustOnFirstUse, Active: s.Active == nil || *s.Active,
	}
	if out.Address == "" {
		if !validHost(s.Name) {
			return events.Server{}, FieldErrorf(EINVALID, "address", "is empty, and the name %q is not a host name or IP address to default to; set address", s.Name)
		}
		out.Address = s.Name
	} else if !validHost(out.Address) {
		return events.Server{}, FieldErrorf(EINVALID, "address", "%q is not a host name or IP address", out.Address)
	}
	if out.Port == 0 {
		out.Port = 22
	}
	if out.Port < 1 || out.Port > 65535 {
		return events.Server{}, FieldErrorf(EINVALID, "port", "%d is not a TCP port (1-65535)", out.Port)
	}
	if out.User != "" && !validUser(out.User) {
		return events.Server{}, FieldErrorf(EINVALID, "user", "%q is not a user name (letters, digits, '.', '_', '-', at most 32 bytes, not starting with '-')", out.User)
	}
	if out.Method == "" {
		out.Method = MethodSSH
	}
	if err := oneOf("method", out.Method, MethodSSH, MethodLocal, MethodAgent); err != nil {
		return events.Server{}, err
	}
	if err := validateLabels("labels", out.Labels); err != nil {
		return events.Server{}, err
	}
	if len(out.Labels) == 0 {
		out.Labels = nil
	}
	if out.HostKey != "" {
		if err := validateHostKey(out.HostKey); err != nil {
			return events.Server{}, err
		}
	}
	return out, nil
}

// serverChanges lists the fields that differ between two servers.
func serverChanges(a, b events.Server) []string {
	var out []string
	add := func(name string, differ bool) {
		if differ {
			out = append(out, name)
		}
	}
	add("address", a.Address != b.Address)
	add("port", a.Port != b.Port)
	add("user", a.User != b.User)
	add("method", a.Method != b.Method)
	add("labels", !maps.Equal(a.Labels, b.Labels))
	add("host_key", a.HostKey != b.HostKey)
	add("trust_on_first_use", a.TrustOnFirstUse != b.TrustOnFirstUse)
	add("active", a.Active != b.Active)
	return out
}

func validUser(u string) bool {
	if len(u) > 32 || u[0] == '-' {
		return false
	}
	for i := 0; i < len(u); i++ {
		c := u[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// hostKeyTypes are the SSH public key algorithms a pinned host key may use.
var hostKeyTypes = []string{
	"ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
	"ssh-rsa", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
}

// validateHostKey checks a pinned key in authorized_keys form ("<type>
// <base64> [comment]"): a known type whose base64 blob decodes and names the
// same type.
func validateHostKey(k string) error {
	parts := strings.Fields(k)
	if len(parts) < 2 {
		return FieldErrorf(EINVALID, "host_key", "must be \"<type> <base64 key>\", as in known_hosts or ssh-keyscan output")
	}
	if err := oneOf("host_key", parts[0], hostKeyTypes...); err != nil {
		return err
	}
	blob, err := base64.StdEncoding.DecodeString(parts[1])
	if err != nil {
		return FieldErrorf(EINVALID, "host_key", "the key is not valid base64")
	}
	if len(blob) < 4 {
		return FieldErrorf(EINVALID, "host_key", "the key is too short")
	}
	n := binary.BigEndian.Uint32(blob)
	if uint64(n) > uint64(len(blob)-4) || !bytes.Equal(blob[4:4+n], []byte(parts[0])) {
		return FieldErrorf(EINVALID, "host_key", "the key blob does not hold a %s key", parts[0])
	}
	return nil
}

// TrustHostKey pins key, the host key an executor was shown on its first
// connection to a server that trusts on first use. It is recorded as a
// ServerSaved by the executor, and checked like any other key from then on.
// A server that already has a key pinned keeps it: a different key is a
// conflict.
func (s *Service) TrustHostKey(ctx context.Context, name, key string) error {
	if err := validateHostKey(key); err != nil {
		return err
	}
	ref := Ref{Kind: KindServer, Name: name}
	_, err := serialized(ctx, s, func() (struct{}, error) {
		s.mu.RLock()
		cur, exists := s.state.servers[name]
		s.mu.RUnlock()
		switch {
		case !exists:
			return struct{}{}, Errorf(ENOTFOUND, "server %s does not exist", name)
		case !cur.value.TrustOnFirstUse:
			return struct{}{}, FieldErrorf(EINVALID, "trust_on_first_use", "server %s does not trust a host key on first use", name)
		case cur.value.HostKey == key:
			return struct{}{}, nil
		case cur.value.HostKey != "":
			return struct{}{}, Errorf(ECONFLICT, "server %s has host key %s pinned already", name, cur.value.HostKey)
		}
		next := cur.value
		next.HostKey = key
		_, _, err := s.commitOne(ctx, Principal{Name: "executor"}, ref.Aggregate(), cur.version, &events.ServerSaved{Server: next, Changed: []string{"host_key"}})
		return struct{}{}, err
	})
	return err
}
