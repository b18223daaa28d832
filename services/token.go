package services

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/google/uuid"

	"github.com/orchestra-fleet/orchestra/events"
)

// Roles, weakest first. Viewers read; operators also change resources (and
// run site commands); admins do everything.
const (
	RoleViewer   = "viewer"
	RoleOperator = "operator"
	RoleAdmin    = "admin"
)

var roleRank = map[string]int{RoleViewer: 1, RoleOperator: 2, RoleAdmin: 3}

// Principal is who a request acts as: the token's name and role.
type Principal struct {
	Name string
	Role string
	// Version is the sequence that issued the token: two tokens issued
	// under one name (after a revocation) have different versions.
	Version uint64
}

// Can reports whether p holds role or a stronger one. Nobody holds a role
// that does not exist.
func (p Principal) Can(role string) bool {
	need, known := roleRank[role]
	return known && roleRank[p.Role] >= need
}

// System is the principal of changes Orchestra makes by itself, such as the
// first admin token.
var System = Principal{Name: "orchestra", Role: RoleAdmin}

// tokenPrefix marks Orchestra tokens so secret scanners and people can tell
// them apart.
const tokenPrefix = "orc_"

// hashToken is how a token is stored. A token is 256 random bits, so a fast
// hash is enough: there is nothing to guess.
func hashToken(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:])
}

// Authenticate returns the principal tok belongs to.
func (s *Service) Authenticate(tok string) (Principal, error) {
	if !strings.HasPrefix(tok, tokenPrefix) {
		return Principal{}, Errorf(EUNAUTHORIZED, "the token is not an Orchestra token (they start with %q)", tokenPrefix)
	}
	h := hashToken(tok)
	s.mu.RLock()
	defer s.mu.RUnlock()
	name, ok := s.state.byHash[h]
	if !ok {
		return Principal{}, Errorf(EUNAUTHORIZED, "the token is unknown or revoked")
	}
	t := s.state.tokens[name]
	return Principal{Name: name, Role: t.role, Version: t.version}, nil
}

// TokenResult is a newly issued token. Token is shown this once.
type TokenResult struct {
	Name     string `json:"name"`
	Role     string `json:"role"`
	Token    string `json:"token"`
	Sequence uint64 `json:"sequence"`
}

// CreateToken issues a token called name with role. Only admins may.
func (s *Service) CreateToken(ctx context.Context, p Principal, name, role string) (TokenResult, error) {
	if !p.Can(RoleAdmin) {
		return TokenResult{}, Errorf(EFORBIDDEN, "creating tokens needs the admin role; this token (%s) is %s", p.Name, p.Role)
	}
	if err := validateName("name", name); err != nil {
		return TokenResult{}, err
	}
	if err := oneOf("role", role, RoleAdmin, RoleOperator, RoleViewer); err != nil {
		return TokenResult{}, err
	}
	return serialized(ctx, s, func() (TokenResult, error) { return s.createToken(ctx, p, name, role, nil) })
}

// createToken issues the token; keep, when set, is given it before it is
// committed, and a keep that fails commits nothing.
func (s *Service) createToken(ctx context.Context, p Principal, name, role string, keep func(TokenResult) error) (TokenResult, error) {
	agg := events.Aggregate{Type: events.AggToken, ID: name}
	s.mu.RLock()
	_, exists := s.state.tokens[name]
	last := s.state.position(agg) // a revoked token's events remain
	s.mu.RUnlock()
	if exists {
		return TokenResult{}, FieldErrorf(ECONFLICT, "name", "a token called %q exists; revoke it first or choose another name", name)
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return TokenResult{}, fmt.Errorf("new token: %w", err)
	}
	tok := tokenPrefix + base64.RawURLEncoding.EncodeToString(raw[:])
	if keep != nil {
		if err := keep(TokenResult{Name: name, Role: role, Token: tok}); err != nil {
			return TokenResult{}, err
		}
	}
	ev := &events.TokenCreated{Name: name, Role: role, Hash: hashToken(tok)}
	_, at, err := s.commitOne(ctx, p, agg, last, ev)
	if err != nil {
		return TokenResult{}, err
	}
	return TokenResult{Name: name, Role: role, Token: tok, Sequence: at.Last}, nil
}

// RevokeToken stops accepting the token called name. The last admin token
// cannot be revoked: nobody could manage tokens after it.
func (s *Service) RevokeToken(ctx context.Context, p Principal, name string) (uint64, error) {
	if !p.Can(RoleAdmin) {
		return 0, Errorf(EFORBIDDEN, "revoking tokens needs the admin role; this token (%s) is %s", p.Name, p.Role)
	}
	return serialized(ctx, s, func() (uint64, error) { return s.revokeToken(ctx, p, name) })
}

func (s *Service) revokeToken(ctx context.Context, p Principal, name string) (uint64, error) {
	s.mu.RLock()
	t, ok := s.state.tokens[name]
	admins := 0
	for _, o := range s.state.tokens {
		if o.role == RoleAdmin {
			admins++
		}
	}
	s.mu.RUnlock()
	switch {
	case !ok:
		return 0, Errorf(ENOTFOUND, "token %q does not exist", name)
	case t.role == RoleAdmin && admins == 1:
		return 0, Errorf(ECONFLICT, "token %q is the last admin token; create another admin token before revoking it", name)
	}
	_, at, err := s.commitOne(ctx, p, events.Aggregate{Type: events.AggToken, ID: name}, t.version, &events.TokenRevoked{Name: name})
	return at.Last, err
}

// Bootstrap issues the first admin token when the log has no admin token,
// naming it "admin" (or "admin-N" when that name is taken). keep (may be
// nil) is given the token before it is committed, to store it where its
// operator finds it; if keep fails, nothing is committed, so the log never
// holds an admin token nobody has. Bootstrap returns an empty result when an
// admin token exists already, also when another process issued one a
// moment ago.
func (s *Service) Bootstrap(ctx context.Context, keep func(TokenResult) error) (TokenResult, error) {
	res, err := s.bootstrap(ctx, keep)
	if ErrorCode(err) != ECONFLICT {
		return res, err
	}
	if err := s.Sync(ctx); err != nil {
		return TokenResult{}, err
	}
	return s.bootstrap(ctx, keep)
}

func (s *Service) bootstrap(ctx context.Context, keep func(TokenResult) error) (TokenResult, error) {
	s.mu.RLock()
	name := ""
	hasAdmin := false
	for n := 1; name == ""; n++ {
		candidate := "admin"
		if n > 1 {
			candidate = fmt.Sprintf("admin-%d", n)
		}
		if _, taken := s.state.tokens[candidate]; !taken {
			name = candidate
		}
	}
	for _, t := range s.state.tokens {
		hasAdmin = hasAdmin || t.role == RoleAdmin
	}
	s.mu.RUnlock()
	if hasAdmin {
		return TokenResult{}, nil
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	return s.createToken(ctx, System, name, RoleAdmin, keep)
}

// commitOne appends a one-event unit for agg, expected at version, and
// returns the unit's id and where it landed.
func (s *Service) commitOne(ctx context.Context, p Principal, agg events.Aggregate, version uint64, ev events.Payload) (uuid.UUID, Appended, error) {
	u, err := NewUnit(events.Meta{Actor: p.Name}, s.cfg.Now())
	if err != nil {
		return uuid.UUID{}, Appended{}, err
	}
	u.Expect(agg, version)
	if err := u.Add(agg, ev); err != nil {
		return uuid.UUID{}, Appended{}, err
	}
	at, err := s.commit(ctx, u, []events.Payload{ev})
	return u.ID, at, err
}
