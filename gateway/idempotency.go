package gateway

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/orchestra-fleet/orchestra/services"
)

// IdempotencyTTL is how long a response is kept for its Idempotency-Key.
const IdempotencyTTL = 24 * time.Hour

// StoredResponse is the response first given to a request with an
// Idempotency-Key, replayed to every repeat of it.
type StoredResponse struct {
	Hash    string // SHA-256 of method, path and body of the first request
	Status  int
	Header  map[string]string // the headers that matter: Content-Type, ETag, Location, Orchestra-Sequence
	Body    []byte
	Created time.Time
}

// IdempotencyStore keeps responses by (scope, key); the scope is the token
// name, so two callers never share keys. infra/sqlite implements it.
type IdempotencyStore interface {
	// Lookup returns the response stored for key, if any younger than
	// IdempotencyTTL.
	Lookup(ctx context.Context, scope, key string) (StoredResponse, bool, error)
	// Save stores r for key, replacing nothing: the first save wins. It also
	// drops responses older than IdempotencyTTL.
	Save(ctx context.Context, scope, key string, r StoredResponse) error
}

// idempotent runs handle once per (token, Idempotency-Key): a repeat with the
// same method, path and body gets the first response again, marked with
// Idempotent-Replayed: true, and changes nothing; a repeat with another
// request is refused. Responses of 5xx are not kept, so a retry runs again.
func (a *api) idempotent(w http.ResponseWriter, r *http.Request, p services.Principal, handle func(http.ResponseWriter) error) error {
	key := r.Header.Get(HeaderIdempotent)
	if len(key) > 255 || strings.ContainsFunc(key, func(c rune) bool { return c < ' ' || c > '~' }) {
		return services.FieldErrorf(services.EINVALID, HeaderIdempotent, "must be at most 255 printable ASCII characters")
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return err
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	sum := sha256.New()
	fmt.Fprintf(sum, "%s %s\n", r.Method, r.URL.RequestURI())
	sum.Write(body)
	hash := hex.EncodeToString(sum.Sum(nil))

	if r.Method == http.MethodPost && r.URL.Path == "/v1/tokens" {
		return services.FieldErrorf(services.EINVALID, HeaderIdempotent, "is not supported when creating a token: a token is shown once and never kept")
	}
	// Keys belong to one token: its name and the sequence that issued it,
	// so a token issued later under a revoked one's name shares nothing.
	scope := fmt.Sprintf("%s#%d", p.Name, p.Version)
	// The bookkeeping outlives a client that hung up: its retry is what the
	// key is for.
	ctx := context.WithoutCancel(r.Context())
	busyKey := scope + "\x00" + key
	if _, running := a.busy.LoadOrStore(busyKey, struct{}{}); running {
		return services.FieldErrorf(services.ECONFLICT, HeaderIdempotent, "a request with this key is still running; retry when it has finished")
	}
	defer a.busy.Delete(busyKey)

	stored, ok, err := a.idem.Lookup(ctx, scope, key)
	if err != nil {
		return fmt.Errorf("idempotency lookup: %w", err)
	}
	if ok {
		if stored.Hash != hash {
			return services.FieldErrorf(services.EINVALID, HeaderIdempotent, "was used for a different request; use a new key for a new request")
		}
		for k, v := range stored.Header {
			w.Header().Set(k, v)
		}
		w.Header().Set("Idempotent-Replayed", "true")
		w.WriteHeader(stored.Status)
		_, err := w.Write(stored.Body)
		return err
	}

	rec := &recorder{header: http.Header{}, status: http.StatusOK}
	if err := handle(rec); err != nil {
		a.writeError(rec, r, err)
	}
	if rec.status < 500 {
		kept := StoredResponse{Hash: hash, Status: rec.status, Header: map[string]string{}, Body: rec.body.Bytes(), Created: a.now()}
		for _, h := range []string{"Content-Type", "ETag", "Location", HeaderSequence} {
			if v := rec.header.Get(h); v != "" {
				kept.Header[h] = v
			}
		}
		if err := a.idem.Save(ctx, scope, key, kept); err != nil {
			a.log.Error("keep idempotent response", "err", err)
		}
	}
	for k, v := range rec.header {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.status)
	_, err = w.Write(rec.body.Bytes())
	return err
}

// recorder captures a response so it can be kept and then sent.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) Write(b []byte) (int, error) { return r.body.Write(b) }
func (r *recorder) WriteHeader(status int)      { r.status = status }
