package gateway_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/orchestra-fleet/orchestra/gateway"
)

func TestReadinessFollowsTheReadyChannel(t *testing.T) {
	ready := make(chan struct{})
	h, err := gateway.NewHandler(gateway.Config{Ready: ready})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()

	check := func(path string, wantStatus int, wantType string) map[string]any {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Fatalf("%s: body is not JSON: %v", path, err)
		}
		if resp.StatusCode != wantStatus || resp.Header.Get("Content-Type") != wantType {
			t.Fatalf("%s = %d %s, want %d %s", path, resp.StatusCode, resp.Header.Get("Content-Type"), wantStatus, wantType)
		}
		return body
	}

	check("/healthz", 200, "application/json")
	check("/v1/servers", 503, "application/problem+json") // starting
	p := check("/readyz", 503, "application/problem+json")
	if p["status"] != float64(503) || p["detail"] == "" {
		t.Fatalf("not-ready problem = %v", p)
	}
	close(ready)
	check("/readyz", 200, "application/json")
	check("/v1/unknown", 404, "application/problem+json")
}
