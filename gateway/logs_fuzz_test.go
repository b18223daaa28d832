package gateway_test

import (
	"net/http"
	"net/url"
	"testing"
)

// FuzzLogQueries: whatever query a client sends to the read side's
// listings and stream, the answer is a page, a 404 or a 400 naming a
// parameter; never a 500.
func FuzzLogQueries(f *testing.F) {
	e := newEnv(f)
	for _, seed := range []string{
		"", "server=web1&state=failure", "after=czEyLi0x", "after=%25", "since=90m&until=2026-01-02T15:04:05Z",
		"resource=website/shop", "unit=0192f1e0-6b1a-7c3e-9d2f-5a4b3c2d1e0f", "limit=1000", "sever=x", "kind=ScriptOutput,ScriptStarted",
		"last_event_id=18446744073709551615", "state=DROPPED&backend=%00",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, query string) {
		values, err := url.ParseQuery(query)
		if err != nil {
			return
		}
		query = values.Encode() // as a client sends it, escaped
		for _, path := range []string{"/v1/scripts?", "/v1/resources/website/shop/history?", "/v1/stream?follow=false&"} {
			r := e.call(t, "GET", path+query, e.viewer, nil, nil)
			switch r.Status {
			case http.StatusOK, http.StatusNotFound:
			case http.StatusBadRequest:
				if f, _ := r.Body["field"].(string); f == "" {
					t.Errorf("GET %s%s: a 400 naming no parameter: %s", path, query, r.Raw)
				}
			default:
				t.Errorf("GET %s%s = %d: %s", path, query, r.Status, r.Raw)
			}
		}
	})
}
