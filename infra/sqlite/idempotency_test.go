package sqlite

import (
	"maps"
	"testing"
	"time"

	"github.com/orchestra-fleet/orchestra/gateway"
)

func response(hash string, status int, created time.Time) gateway.StoredResponse {
	return gateway.StoredResponse{
		Hash:    hash,
		Status:  status,
		Header:  map[string]string{"Content-Type": "application/json", "ETag": `"` + hash + `"`, "Orchestra-Sequence": "42"},
		Body:    []byte(`{"hash":"` + hash + `"}`),
		Created: created,
	}
}

func save(t *testing.T, db *DB, scope, key string, r gateway.StoredResponse) {
	t.Helper()
	if err := db.Save(testCtx(t), scope, key, r); err != nil {
		t.Fatalf("save %s/%s: %v", scope, key, err)
	}
}

func lookup(t *testing.T, db *DB, scope, key string) (gateway.StoredResponse, bool) {
	t.Helper()
	r, ok, err := db.Lookup(testCtx(t), scope, key)
	if err != nil {
		t.Fatalf("lookup %s/%s: %v", scope, key, err)
	}
	return r, ok
}

func sameResponse(t *testing.T, got, want gateway.StoredResponse) {
	t.Helper()
	if got.Hash != want.Hash || got.Status != want.Status || !maps.Equal(got.Header, want.Header) ||
		string(got.Body) != string(want.Body) || !got.Created.Equal(want.Created) {
		t.Fatalf("response:\n got %+v\nwant %+v", got, want)
	}
}

func storedKeys(t *testing.T, db *DB) int {
	t.Helper()
	var n int
	if err := db.sql.QueryRow(`SELECT count(*) FROM idempotency`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestIdempotencyRoundTrip(t *testing.T) {
	now := time.Now()
	for _, c := range []struct {
		name string
		r    gateway.StoredResponse
	}{
		{"full", response("h1", 201, now)},
		{"no header or body", gateway.StoredResponse{Hash: "h2", Status: 204, Created: now}},
		{"empty header", gateway.StoredResponse{Hash: "h3", Status: 200, Header: map[string]string{}, Body: []byte("x"), Created: now}},
		{"binary body", gateway.StoredResponse{Hash: "h4", Status: 200, Body: []byte{0, 1, 0xff, '\n'}, Created: now}},
	} {
		t.Run(c.name, func(t *testing.T) {
			db := openTemp(t)
			if _, ok := lookup(t, db, "admin", "key-1"); ok {
				t.Fatal("lookup in an empty store found a response")
			}
			save(t, db, "admin", "key-1", c.r)
			got, ok := lookup(t, db, "admin", "key-1")
			if !ok {
				t.Fatal("saved response not found")
			}
			sameResponse(t, got, c.r)
		})
	}
}

func TestIdempotencyFirstSaveWins(t *testing.T) {
	db := openTemp(t)
	now := time.Now()
	first, second := response("first", 201, now), response("second", 409, now.Add(time.Second))
	save(t, db, "admin", "k", first)
	save(t, db, "admin", "k", second)
	got, ok := lookup(t, db, "admin", "k")
	if !ok {
		t.Fatal("not found")
	}
	sameResponse(t, got, first)

	// Scopes are separate: the same key under another token is its own.
	save(t, db, "ci", "k", second)
	if got, ok := lookup(t, db, "ci", "k"); !ok || got.Hash != "second" {
		t.Fatalf("scope ci: %+v, %t; want the second response", got, ok)
	}
	if got, _ := lookup(t, db, "admin", "k"); got.Hash != "first" {
		t.Fatalf("scope admin after a save in ci: %q, want first", got.Hash)
	}
	if _, ok := lookup(t, db, "admin", "K"); ok {
		t.Fatal("keys are case-sensitive, but K found k's response")
	}
}

func TestIdempotencyTTL(t *testing.T) {
	db := openTemp(t)
	now := time.Now()
	expired := now.Add(-gateway.IdempotencyTTL - time.Minute)
	young := now.Add(-gateway.IdempotencyTTL + time.Minute)

	save(t, db, "admin", "old", response("old", 200, expired))
	if _, ok := lookup(t, db, "admin", "old"); ok {
		t.Fatal("a response older than the TTL was found")
	}
	save(t, db, "admin", "young", response("young", 200, young))
	if got, ok := lookup(t, db, "admin", "young"); !ok || got.Hash != "young" {
		t.Fatalf("a response inside the TTL: %+v, %t", got, ok)
	}

	// The next save drops the expired response and keeps the young one.
	save(t, db, "admin", "new", response("new", 200, now))
	if n := storedKeys(t, db); n != 2 {
		t.Fatalf("%d responses stored after expiry, want 2 (young, new)", n)
	}

	// A key whose response expired takes a new first response.
	save(t, db, "admin", "again", response("stale", 200, expired))
	save(t, db, "admin", "again", response("fresh", 201, now))
	if got, ok := lookup(t, db, "admin", "again"); !ok || got.Hash != "fresh" {
		t.Fatalf("after expiry: %+v, %t; want the fresh response", got, ok)
	}
}

func TestIdempotencyZeroCreatedIsNow(t *testing.T) {
	db := openTemp(t)
	before := time.Now()
	r := response("h", 200, time.Time{})
	save(t, db, "admin", "k", r)
	got, ok := lookup(t, db, "admin", "k")
	if !ok {
		t.Fatal("response saved without a time was not found")
	}
	if got.Created.Before(before) || got.Created.After(time.Now()) {
		t.Fatalf("created %v, want the time of the save (after %v)", got.Created, before)
	}
}
