package services_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/orchestra-fleet/orchestra/services"
)

func TestTokens(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()

	// A keep that fails (the token file cannot be written) commits nothing:
	// the log never holds an admin token nobody has.
	if _, err := h.svc.Bootstrap(ctx, func(services.TokenResult) error { return errors.New("disk full") }); err == nil || h.lastSeq(t) != 0 {
		t.Fatalf("bootstrap with a failing keep = %v, log at %d", err, h.lastSeq(t))
	}
	var kept string
	boot, err := h.svc.Bootstrap(ctx, func(r services.TokenResult) error { kept = r.Token; return nil })
	if kept != boot.Token {
		t.Fatalf("keep was given %q, the result holds %q", kept, boot.Token)
	}
	if err != nil {
		t.Fatal(err)
	}
	if boot.Name != "admin" || boot.Role != services.RoleAdmin || !strings.HasPrefix(boot.Token, "orc_") || boot.Sequence != h.lastSeq(t) {
		t.Fatalf("bootstrap: %+v", boot)
	}
	p, err := h.svc.Authenticate(boot.Token)
	if err != nil || p.Name != "admin" || p.Role != services.RoleAdmin || p.Version != boot.Sequence {
		t.Fatalf("authenticate the bootstrap token: %+v, %v", p, err)
	}
	seq := h.lastSeq(t)
	// A keep that fails commits nothing.
	if _, err := h.newService(t).Bootstrap(ctx, func(services.TokenResult) error { return errors.New("disk full") }); err != nil {
		t.Fatalf("bootstrap with an admin token present must not call keep: %v", err)
	}
	again, err := h.svc.Bootstrap(ctx, nil)
	if err != nil || again != (services.TokenResult{}) || h.lastSeq(t) != seq {
		t.Fatalf("second bootstrap: %+v, %v", again, err)
	}
	if again, err := h.newService(t).Bootstrap(ctx, nil); err != nil || again != (services.TokenResult{}) {
		t.Fatalf("bootstrap in another process: %+v, %v", again, err)
	}
	// The token is stored as a hash only.
	for _, m := range rawMessages(t, h) {
		if strings.Contains(string(m.Data), boot.Token) || strings.Contains(string(m.Data), strings.TrimPrefix(boot.Token, "orc_")) {
			t.Fatalf("the log holds the token in clear: %s", m.Data)
		}
	}

	t.Run("create", func(t *testing.T) {
		tok, err := h.svc.CreateToken(ctx, p, "ci", services.RoleOperator)
		if err != nil || tok.Name != "ci" || tok.Role != services.RoleOperator || !strings.HasPrefix(tok.Token, "orc_") || tok.Token == boot.Token {
			t.Fatalf("%+v, %v", tok, err)
		}
		got, err := h.svc.Authenticate(tok.Token)
		if err != nil || got.Name != "ci" || got.Role != services.RoleOperator {
			t.Fatalf("authenticate: %+v, %v", got, err)
		}
		if got, err := h.newService(t).Authenticate(tok.Token); err != nil || got.Name != "ci" {
			t.Fatalf("authenticate in another process: %+v, %v", got, err)
		}
	})

	t.Run("refused", func(t *testing.T) {
		before := h.lastSeq(t)
		for _, tc := range []struct {
			name        string
			p           services.Principal
			token, role string
			code, field string
			words       []string
		}{
			{"by an operator", operator, "x", services.RoleViewer, services.EFORBIDDEN, "", []string{"admin role", "oscar"}},
			{"by a viewer", viewer, "x", services.RoleViewer, services.EFORBIDDEN, "", []string{"admin role"}},
			{"by nobody", services.Principal{}, "x", services.RoleViewer, services.EFORBIDDEN, "", nil},
			{"duplicate name", p, "ci", services.RoleViewer, services.ECONFLICT, "name", []string{`"ci"`, "exists"}},
			{"bootstrap name taken", p, "admin", services.RoleAdmin, services.ECONFLICT, "name", []string{`"admin"`}},
			{"bad role", p, "x", "root", services.EINVALID, "role", []string{`"root"`, "admin, operator, viewer"}},
			{"empty role", p, "x", "", services.EINVALID, "role", nil},
			{"empty name", p, "", services.RoleViewer, services.EINVALID, "name", []string{"must not be empty"}},
			{"name with space", p, "c i", services.RoleViewer, services.EINVALID, "name", []string{"white space"}},
			{"name with slash", p, "c/i", services.RoleViewer, services.EINVALID, "name", nil},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := h.svc.CreateToken(ctx, tc.p, tc.token, tc.role)
				wantError(t, err, tc.code, tc.field, tc.words...)
			})
		}
		if h.lastSeq(t) != before {
			t.Fatal("refused token creations wrote")
		}
	})

	t.Run("authenticate refuses", func(t *testing.T) {
		for _, tok := range []string{"", "nope", "Bearer " + boot.Token, "orc_", "orc_unknown", boot.Token + "x", strings.ToUpper(boot.Token)} {
			_, err := h.svc.Authenticate(tok)
			wantError(t, err, services.EUNAUTHORIZED, "")
			if tok != "" && len(tok) > 8 && strings.Contains(err.Error(), tok) {
				t.Fatalf("the error repeats the token: %v", err)
			}
		}
	})

	t.Run("revoke", func(t *testing.T) {
		tok, err := h.svc.CreateToken(ctx, p, "laptop", services.RoleViewer)
		if err != nil {
			t.Fatal(err)
		}
		other := h.newService(t)
		if _, err := h.svc.RevokeToken(ctx, operator, "laptop"); services.ErrorCode(err) != services.EFORBIDDEN {
			t.Fatalf("revoke by operator: %v", err)
		}
		seq, err := h.svc.RevokeToken(ctx, p, "laptop")
		if err != nil || seq != h.lastSeq(t) {
			t.Fatalf("revoke: %d, %v", seq, err)
		}
		_, err = h.svc.Authenticate(tok.Token)
		wantError(t, err, services.EUNAUTHORIZED, "", "revoked")
		if err := other.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := other.Authenticate(tok.Token); services.ErrorCode(err) != services.EUNAUTHORIZED {
			t.Fatalf("another process still accepts the revoked token: %v", err)
		}
		_, err = h.svc.RevokeToken(ctx, p, "laptop")
		wantError(t, err, services.ENOTFOUND, "", `"laptop"`)

		// The name is free again, and the new token works; the old does not.
		tok2, err := h.svc.CreateToken(ctx, p, "laptop", services.RoleViewer)
		if err != nil {
			t.Fatalf("create a token under a revoked token's name: %v", err)
		}
		if got, err := h.svc.Authenticate(tok2.Token); err != nil || got.Name != "laptop" {
			t.Fatalf("%+v, %v", got, err)
		}
		if _, err := h.svc.Authenticate(tok.Token); err == nil {
			t.Fatal("the revoked token works again")
		}
	})

	t.Run("last admin", func(t *testing.T) {
		before := h.lastSeq(t)
		_, err := h.svc.RevokeToken(ctx, p, "admin")
		wantError(t, err, services.ECONFLICT, "", `"admin"`, "last admin token")
		if h.lastSeq(t) != before {
			t.Fatal("refused revoke wrote")
		}
		second, err := h.svc.CreateToken(ctx, p, "admin2", services.RoleAdmin)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.svc.RevokeToken(ctx, p, "admin"); err != nil {
			t.Fatalf("revoke one of two admin tokens: %v", err)
		}
		if _, err := h.svc.Authenticate(boot.Token); err == nil {
			t.Fatal("the revoked bootstrap token still works")
		}
		p2, err := h.svc.Authenticate(second.Token)
		if err != nil {
			t.Fatal(err)
		}
		_, err = h.svc.RevokeToken(ctx, p2, "admin2")
		wantError(t, err, services.ECONFLICT, "", "last admin token")
		// An admin token exists, so bootstrap does nothing.
		if res, err := h.svc.Bootstrap(ctx, nil); err != nil || res != (services.TokenResult{}) {
			t.Fatalf("bootstrap with admin2 in place: %+v, %v", res, err)
		}
	})
}
