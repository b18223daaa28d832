// Package gateway is Orchestra's HTTP surface: it decodes requests, calls
// the services and projections, encodes answers, and maps errors to
// statuses in one place. Errors are application/problem+json (RFC 9457).
package gateway

import (
	_ "embed"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/orchestra-fleet/orchestra/services"
)

// Config of the HTTP handler.
type Config struct {
	// Ready is closed once the process can serve: the streams exist and
	// the write model has caught up with the log.
	Ready <-chan struct{}
	// Metrics serves /metrics (Prometheus exposition format) to any token.
	Metrics http.Handler

	// The API; without Service only the health endpoints are served.
	Service *services.Service
	Rows    Reader
	Model   Waiter
	Planner Previewer
	Scripts PlanRecords
	Logs    Logs
	Feed    Feed
	Replays Replays
	// Results lets an apply wait for its scripts; without it an apply
	// answers at once.
	Results     Results
	Idempotency IdempotencyStore
	Logger      *slog.Logger
	// ReadWait bounds how long a read waits for the read model to catch up
	// (default DefaultReadWait).
	ReadWait time.Duration
	// ApplyWait bounds how long an apply waits for its scripts unless the
	// request says (?wait=): 0 means DefaultApplyWait, negative not at all.
	ApplyWait time.Duration
	Now       func() time.Time
}

func (c *Config) setDefaults() {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.ReadWait == 0 {
		c.ReadWait = DefaultReadWait
	}
	if c.ApplyWait == 0 {
		c.ApplyWait = DefaultApplyWait
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Validate reports every missing part of an API configuration at once.
func (c Config) Validate() error {
	if c.Service == nil {
		return nil
	}
	var errs []error
	if c.Rows == nil {
		errs = append(errs, errors.New("gateway: Rows is required with Service"))
	}
	if c.Model == nil {
		errs = append(errs, errors.New("gateway: Model is required with Service"))
	}
	if c.Idempotency == nil {
		errs = append(errs, errors.New("gateway: Idempotency is required with Service"))
	}
	if c.Planner == nil {
		errs = append(errs, errors.New("gateway: Planner is required with Service"))
	}
	if c.Logs == nil {
		errs = append(errs, errors.New("gateway: Logs is required with Service"))
	}
	if c.Feed == nil {
		errs = append(errs, errors.New("gateway: Feed is required with Service"))
	}
	if c.Replays == nil {
		errs = append(errs, errors.New("gateway: Replays is required with Service"))
	}
	if c.Scripts == nil {
		errs = append(errs, errors.New("gateway: Scripts is required with Service"))
	}
	return errors.Join(errs...)
}

//go:embed openapi.json
var openAPIDocument []byte

// NewHandler returns the HTTP handler of `orchestra up`.
func NewHandler(cfg Config) (http.Handler, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-cfg.Ready:
			writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
		default:
			writeProblem(w, http.StatusServiceUnavailable, "Not ready", "the JetStream streams are not provisioned or the write model is still catching up")
		}
	})
	notFound := func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-cfg.Ready:
			writeProblem(w, http.StatusNotFound, "Not found", r.Method+" "+r.URL.Path+" is not part of the API")
		default:
			writeProblem(w, http.StatusServiceUnavailable, "Starting", "Orchestra is starting; retry in a moment")
		}
	}
	if cfg.Service == nil {
		mux.HandleFunc("/", notFound)
		return mux, nil
	}
	a := &api{
		svc: cfg.Service, rows: cfg.Rows, model: cfg.Model, planner: cfg.Planner, records: cfg.Scripts, logs: cfg.Logs, feed: cfg.Feed, replays: cfg.Replays, idem: cfg.Idempotency,
		log: cfg.Logger, readWait: cfg.ReadWait, now: cfg.Now, results: cfg.Results, wait: cfg.ApplyWait,
	}
	for _, rt := range Routes() {
		mux.Handle(rt.Method+" "+rt.Path, a.ready(cfg.Ready, a.serve(rt)))
	}
	if cfg.Metrics != nil {
		metrics := cfg.Metrics
		mux.Handle("GET /metrics", a.serve(Route{"GET", "/metrics", services.RoleViewer,
			func(_ *api, w http.ResponseWriter, r *http.Request, _ services.Principal) error {
				metrics.ServeHTTP(w, r)
				return nil
			}}))
	}
	mux.HandleFunc("/", notFound)
	return mux, nil
}

// ready answers 503 until the process is ready.
func (a *api) ready(ready <-chan struct{}, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-ready:
			h.ServeHTTP(w, r)
		default:
			a.writeError(w, r, services.Errorf(services.EUNAVAILABLE, "Orchestra is starting: the write model is catching up with the log"))
		}
	})
}

// problem is an RFC 9457 problem document; Field names the input at fault.
type problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
	Field  string `json:"field,omitempty"`
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
