package services_test

import (
	"context"
	"testing"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/services"
)

const (
	keyA = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHbW3AyV1eBvXl2nU0h6D0uTwz9a2RzZ8zj4QyJkD0pE"
	keyB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF0i1l1m9mJ6w4o0H8j1a6o2r8e1mB9a4W7cJm0t0x1Q"
)

// A key seen on the first connection to a server that trusts on first use
// is pinned by a ServerSaved of actor "executor"; nothing else is.
func TestTrustHostKey(t *testing.T) {
	h := newHarness(t)
	h.apply(t,
		`{"kind":"Server","name":"tofu","address":"127.0.0.1","trust_on_first_use":true}`,
		`{"kind":"Server","name":"strict","address":"127.0.0.1"}`)
	ctx := context.Background()

	refused := []struct {
		name, server, key, code, field string
	}{
		{"not a key", "tofu", "ssh-ed25519 !!!", services.EINVALID, "host_key"},
		{"unknown server", "nowhere", keyA, services.ENOTFOUND, ""},
		{"does not trust on first use", "strict", keyA, services.EINVALID, "trust_on_first_use"},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			before := h.lastSeq(t)
			wantError(t, h.svc.TrustHostKey(ctx, tc.server, tc.key), tc.code, tc.field)
			if after := h.lastSeq(t); after != before {
				t.Fatalf("the refused key was written: stream at %d, was %d", after, before)
			}
		})
	}

	if err := h.svc.TrustHostKey(ctx, "tofu", keyA); err != nil {
		t.Fatal(err)
	}
	saved := lastPayload[*events.ServerSaved](t, h)
	if saved.Server.HostKey != keyA || !saved.Server.TrustOnFirstUse || len(saved.Changed) != 1 || saved.Changed[0] != "host_key" {
		t.Fatalf("recorded %+v", saved)
	}
	seq := h.lastSeq(t)
	// The same key again changes nothing; a different one is a conflict.
	if err := h.svc.TrustHostKey(ctx, "tofu", keyA); err != nil || h.lastSeq(t) != seq {
		t.Fatalf("the same key again: %v, stream at %d, was %d", err, h.lastSeq(t), seq)
	}
	wantError(t, h.svc.TrustHostKey(ctx, "tofu", keyB), services.ECONFLICT, "")
	if h.lastSeq(t) != seq {
		t.Fatal("a changed key was written")
	}
}
