package gateway_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/orchestra-fleet/orchestra/services"
)

var roleRank = map[string]int{services.RoleViewer: 1, services.RoleOperator: 2, services.RoleAdmin: 3}

// TestAuthorizationMatrix walks every operation of the OpenAPI document, so
// a new endpoint is covered as soon as it is documented (and
// TestOpenAPIDocumentsEveryRoute makes sure it is). For each: without a
// valid token it is a 401 with WWW-Authenticate; with a token of a role
// weaker than its x-orchestra-role a 403; neither writes anything; and with
// a token of its role, or of any stronger one, its documented example (path
// and body) succeeds on the fixture set.
func TestAuthorizationMatrix(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	revoked, err := e.Svc.CreateToken(ctx, services.System, "revoked", services.RoleAdmin)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Svc.RevokeToken(ctx, services.System, "revoked"); err != nil {
		t.Fatal(err)
	}
	unauthenticated := []struct {
		name          string
		authorization string
	}{
		{"no token", ""},
		{"unknown token", "Bearer orc_" + strings.Repeat("A", 43)},
		{"revoked token", "Bearer " + revoked.Token},
		{"not an Orchestra token", "Bearer " + strings.TrimPrefix(e.admin, "orc_")},
		{"not a bearer token", "Basic " + e.admin},
		{"empty bearer", "Bearer "},
	}

	if len(e.doc.ops) == 0 {
		t.Fatal("the OpenAPI document has no operations")
	}
	for _, op := range e.doc.ops {
		t.Run(op.String(), func(t *testing.T) {
			path, body := op.ExamplePath(), op.exampleBody()
			if (op.Method == "POST" || op.Method == "PUT") && body == nil {
				t.Fatal("the operation has no example body")
			}
			need := roleRank[op.Role()]
			if need == 0 {
				t.Fatalf("x-orchestra-role %q is not a role", op.Role())
			}
			e.resetFixtures(t)
			before := e.lastSeq(t)

			for _, c := range unauthenticated {
				var h map[string]string
				if c.authorization != "" {
					h = map[string]string{"Authorization": c.authorization}
				}
				r := e.call(t, op.Method, path, "", body, h)
				if r.Status != http.StatusUnauthorized {
					t.Errorf("%s: status %d, want 401: %s", c.name, r.Status, r.Raw)
					continue
				}
				if got := r.Header.Get("WWW-Authenticate"); !strings.HasPrefix(got, "Bearer") {
					t.Errorf("%s: WWW-Authenticate = %q, want a Bearer challenge", c.name, got)
				}
				if r.Body["type"] != "urn:orchestra:problem:"+services.EUNAUTHORIZED {
					t.Errorf("%s: problem type %v", c.name, r.Body["type"])
				}
			}
			for _, role := range []string{services.RoleViewer, services.RoleOperator} {
				if roleRank[role] >= need {
					continue
				}
				r := e.call(t, op.Method, path, e.token(role), body, nil)
				if r.Status != http.StatusForbidden {
					t.Errorf("%s token: status %d, want 403: %s", role, r.Status, r.Raw)
				} else if detail, _ := r.Body["detail"].(string); !strings.Contains(detail, op.Role()) {
					t.Errorf("%s token: the problem does not name the role needed: %q", role, detail)
				}
			}
			if after := e.lastSeq(t); after != before {
				t.Fatalf("refused calls wrote %d events", after-before)
			}

			for _, role := range []string{services.RoleViewer, services.RoleOperator, services.RoleAdmin} {
				if roleRank[role] < need {
					continue
				}
				if roleRank[role] > need {
					e.resetFixtures(t)
				}
				r := e.call(t, op.Method, path, e.token(role), body, nil)
				if r.Status < 200 || r.Status > 299 {
					t.Errorf("%s token: status %d, want 2xx: %s", role, r.Status, r.Raw)
				}
			}
		})
	}
}

// TestMetricsNeedAToken: /metrics is outside /v1 and the OpenAPI document,
// but still needs a token, of any role.
func TestMetricsNeedAToken(t *testing.T) {
	e := newEnv(t)
	r := e.call(t, "GET", "/metrics", "", nil, nil)
	if r.Status != http.StatusUnauthorized || r.Header.Get("WWW-Authenticate") == "" {
		t.Errorf("without a token: %d %v", r.Status, r.Header)
	}
	r = e.call(t, "GET", "/metrics", e.viewer, nil, nil)
	if r.Status != http.StatusOK || !strings.Contains(string(r.Raw), "orchestra_up 1") {
		t.Errorf("with a viewer token: %d %s", r.Status, r.Raw)
	}
}

// TestHealthNeedsNoToken: the health endpoints are the only ones open.
func TestHealthNeedsNoToken(t *testing.T) {
	e := newEnv(t)
	for _, p := range []string{"/healthz", "/readyz"} {
		if r := e.call(t, "GET", p, "", nil, nil); r.Status != http.StatusOK {
			t.Errorf("GET %s = %d %s", p, r.Status, r.Raw)
		}
	}
}
