// Package gateway is Orchestra's HTTP surface: it decodes requests, calls
// the services and projections, encodes answers, and maps errors to
// statuses in one place. Errors are application/problem+json (RFC 9457).
package gateway

import (
	"encoding/json"
	"net/http"
)

// Config of the HTTP handler.
type Config struct {
	// Ready is closed once the process can serve: the streams exist.
	Ready <-chan struct{}
	// Metrics serves /metrics (Prometheus exposition format).
	Metrics http.Handler
}

// NewHandler returns the HTTP handler of `orchestra up`.
func NewHandler(cfg Config) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-cfg.Ready:
			writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
		default:
			writeProblem(w, http.StatusServiceUnavailable, "Not ready", "the JetStream streams are not provisioned yet")
		}
	})
	if cfg.Metrics != nil {
		mux.Handle("GET /metrics", cfg.Metrics)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, http.StatusNotFound, "Not found", r.Method+" "+r.URL.Path+" is not part of the API")
	})
	return mux
}

// problem is an RFC 9457 problem document.
type problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
}

func writeProblem(w http.ResponseWriter, status int, title, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(problem{Type: "about:blank", Title: title, Status: status, Detail: detail})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
