package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Client settings (DESIGN.md §7).
const (
	envURL     = "ORCHESTRA_URL"
	envToken   = "ORCHESTRA_TOKEN"
	defaultURL = "http://127.0.0.1:7070"
)

// client talks to the HTTP API of `orchestra up`.
type client struct {
	base  string
	token string
	http  *http.Client
}

// newClient reads ORCHESTRA_URL and ORCHESTRA_TOKEN; without a token it
// uses ./.orchestra/admin.token, the file a local `orchestra up` writes.
func newClient() (*client, error) {
	base := strings.TrimRight(os.Getenv(envURL), "/")
	if st, ok := runningUp(); base == "" && inFleet() && ok {
		base = st.HTTP // the folder's own Orchestra
	}
	if base == "" {
		base = defaultURL
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%s=%q is not an http(s) URL", envURL, base)
	}
	tok := strings.TrimSpace(os.Getenv(envToken))
	if tok == "" && !loopback(u.Hostname()) {
		return nil, fmt.Errorf("no token: set %s (the local .orchestra/%s is sent only to an Orchestra on this machine, not to %s)", envToken, adminTokenFile, u.Host)
	}
	if tok == "" {
		b, err := os.ReadFile(filepath.Join(".orchestra", adminTokenFile))
		if err != nil {
			return nil, fmt.Errorf("no token: set %s, or run in the folder whose .orchestra/%s a local `orchestra up` wrote", envToken, adminTokenFile)
		}
		tok = strings.TrimSpace(string(b))
	}
	return &client{base: base, token: tok, http: &http.Client{Timeout: 60 * time.Second}}, nil
}

// loopback reports whether host names this machine.
func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// apiError is a problem document the API answered with.
type apiError struct {
	Status int    `json:"status"`
	Title  string `json:"title"`
	Detail string `json:"detail"`
	Field  string `json:"field"`
}

func (e *apiError) Error() string {
	msg := e.Detail
	if msg == "" {
		msg = e.Title
	}
	if e.Field != "" && !strings.HasPrefix(msg, e.Field+":") {
		msg = e.Field + ": " + msg
	}
	return fmt.Sprintf("%s (HTTP %d)", msg, e.Status)
}

// problemOf is the error of an answer with status, whose body is data:
// the problem document, or the body as text when it is not one.
func problemOf(status int, data []byte) *apiError {
	e := &apiError{Status: status}
	if json.Unmarshal(data, e) != nil || e.Status == 0 {
		e = &apiError{Status: status, Title: http.StatusText(status), Detail: strings.TrimSpace(string(data))}
	}
	return e
}

// do sends body (JSON-encoded unless nil) and decodes a JSON answer into out
// (when out is not nil). A problem answer is an *apiError.
func (c *client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("cannot reach Orchestra at %s (is `orchestra up` running? set %s to point elsewhere): %v", c.base, envURL, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%s %s: reading the answer: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		return problemOf(resp.StatusCode, data)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: the answer is not the JSON expected: %w", method, path, err)
	}
	return nil
}

// listAll follows a listing's pages to the end.
func (c *client) listAll(ctx context.Context, path string) ([]json.RawMessage, error) {
	var all []json.RawMessage
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	next := ""
	for {
		p := path + sep + "limit=1000"
		if next != "" {
			p += "&after=" + url.QueryEscape(next)
		}
		var page struct {
			Items []json.RawMessage `json:"items"`
			Next  string            `json:"next"`
		}
		if err := c.do(ctx, http.MethodGet, p, nil, &page); err != nil {
			return nil, err
		}
		all = append(all, page.Items...)
		if page.Next == "" {
			return all, nil
		}
		next = page.Next
	}
}
