package projections_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/infra/eventstore"
	"github.com/orchestra-fleet/orchestra/infra/natstest"
	"github.com/orchestra-fleet/orchestra/infra/sqlite"
	"github.com/orchestra-fleet/orchestra/projections"
	"github.com/orchestra-fleet/orchestra/services"
)

func registry(t testing.TB) *events.Registry {
	t.Helper()
	reg, err := events.NewRegistry(events.Catalog()...)
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

func envelope(t *testing.T, seq uint64, agg events.Aggregate, p events.Payload) events.Envelope {
	t.Helper()
	e, err := events.New(agg, p, events.Meta{Actor: "tester"}, time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	e.Sequence = seq
	return e
}

// The model fold turns each event into the row the API shows: an apply
// document with kind and version, secrets masked, deletions as deletions.
func TestModelRows(t *testing.T) {
	m := projections.NewModel(registry(t))
	res := events.Resource{Type: "mailbox", Name: "alice", Attrs: json.RawMessage(`{"quota_mb":1024}`),
		Secrets: map[string]string{"password": "sealed:v1:abc"}}
	for _, tc := range []struct {
		name    string
		e       events.Envelope
		table   string
		key     string
		group   string
		deleted bool
		doc     string
	}{
		{"server", envelope(t, 3, events.Aggregate{Type: events.AggServer, ID: "web1"},
			&events.ServerSaved{Server: events.Server{Name: "web1", Address: "10.0.0.1", Port: 22, Method: "ssh", Active: true}}),
			projections.TableServers, "web1", "", false,
			`{"kind":"Server","name":"web1","address":"10.0.0.1","port":22,"method":"ssh","active":true,"version":3}`},
		{"route", envelope(t, 4, events.Aggregate{Type: events.AggRoute, ID: "vhost@web1"},
			&events.RouteSaved{Route: events.Route{Backend: "vhost", Server: "web1", Match: "true", Active: true}}),
			projections.TableRoutes, "vhost@web1", "", false,
			`{"kind":"Route","backend":"vhost","server":"web1","match":"true","async":false,"active":true,"version":4}`},
		{"resource with a secret", envelope(t, 5, events.Aggregate{Type: events.AggResource, ID: "mailbox/alice"},
			&events.ResourceSaved{Resource: res}),
			projections.TableResources, "mailbox/alice", "mailbox", false,
			`{"kind":"Resource","type":"mailbox","name":"alice","attrs":{"quota_mb":1024},"secrets":{"password":"****"},"version":5}`},
		{"token", envelope(t, 6, events.Aggregate{Type: events.AggToken, ID: "ci"},
			&events.TokenCreated{Name: "ci", Role: "viewer", Hash: "ab12"}),
			projections.TableTokens, "ci", "", false,
			`{"name":"ci","role":"viewer","created_by":"tester","created":"2026-11-23T10:00:00Z","version":6}`},
		{"resource deleted", envelope(t, 7, events.Aggregate{Type: events.AggResource, ID: "mailbox/alice"},
			&events.ResourceDeleted{Type: "mailbox", Name: "alice"}),
			projections.TableResources, "mailbox/alice", "", true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rows, err := m.Apply(tc.e)
			if err != nil {
				t.Fatal(err)
			}
			if len(rows) != 1 {
				t.Fatalf("rows = %+v", rows)
			}
			r := rows[0]
			if r.Table != tc.table || r.Key != tc.key || r.Group != tc.group || r.Deleted != tc.deleted || string(r.Doc) != tc.doc {
				t.Fatalf("row = %+v %s\nwant %s %s %s deleted=%v %s", r, r.Doc, tc.table, tc.key, tc.group, tc.deleted, tc.doc)
			}
			if strings.Contains(string(r.Doc), "sealed:") || strings.Contains(string(r.Doc), "ab12") {
				t.Fatalf("a sealed secret or token hash reached the read model: %s", r.Doc)
			}
		})
	}
}

// The runner follows the log live, commits rows with the checkpoint, and
// after a restart resumes from the checkpoint without applying anything
// twice (the store refuses a sequence at or below its checkpoint).
func TestRunnerFollowsAndResumes(t *testing.T) {
	env := natstest.Start(t)
	reg := registry(t)
	ctx := context.Background()
	store, err := eventstore.New(ctx, eventstore.Config{JetStream: env.JS, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	db, err := sqlite.Open(filepath.Join(t.TempDir(), "model.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	appendServer := func(name string) uint64 {
		u, _ := services.NewUnit(events.Meta{Actor: "tester"}, time.Now())
		agg := events.Aggregate{Type: events.AggServer, ID: name}
		u.Expect(agg, 0)
		if err := u.Add(agg, &events.ServerSaved{Server: events.Server{Name: name, Address: name, Port: 22, Method: "ssh", Active: true}}); err != nil {
			t.Fatal(err)
		}
		a, err := store.Append(ctx, u)
		if err != nil {
			t.Fatal(err)
		}
		return a.Last
	}
	start := func() (*projections.Runner, func()) {
		r := projections.NewRunner(projections.NewModel(reg), db, store, slog.New(slog.DiscardHandler))
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- r.Run(rctx) }()
		return r, func() {
			cancel()
			if err := <-done; !errors.Is(err, context.Canceled) {
				t.Errorf("runner ended with %v", err)
			}
		}
	}
	wait := func(r *projections.Runner, seq uint64) {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := r.WaitFor(wctx, seq); err != nil {
			t.Fatalf("read model did not reach %d: at %d", seq, r.Seq())
		}
	}

	first := appendServer("web1")
	r, stop := start()
	wait(r, first)
	live := appendServer("web2") // appended while the runner follows
	wait(r, live)
	stop()

	later := appendServer("web3")
	r, stop = start()
	defer stop()
	wait(r, later)
	for _, name := range []string{"web1", "web2", "web3"} {
		if _, err := db.Get(ctx, projections.TableServers, name); err != nil {
			t.Errorf("server %s: %v", name, err)
		}
	}
	if cp, err := db.Checkpoint(ctx, "model"); err != nil || cp != later {
		t.Fatalf("checkpoint = %d, %v; want %d", cp, err, later)
	}
	// WaitFor gives up with the context, never blocks for ever.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := r.WaitFor(short, later+100); err == nil {
		t.Fatal("WaitFor of a sequence the log does not have returned nil")
	}
}
