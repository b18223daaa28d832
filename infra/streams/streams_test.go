package streams_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/infra/natstest"
	"github.com/orchestra-fleet/orchestra/infra/streams"
)

func TestProvisionIsIdempotentAndAppliesChanges(t *testing.T) {
	env := natstest.Start(t) // provisions once with the defaults
	ctx := context.Background()
	if err := streams.Provision(ctx, env.JS, streams.Config{}); err != nil {
		t.Fatalf("second provision: %v", err)
	}
	ev, err := env.JS.Stream(ctx, events.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	c := ev.CachedInfo().Config
	if !c.AllowAtomicPublish || !c.DenyDelete || !c.DenyPurge || !c.AllowDirect || c.MaxAge != 0 || c.Duplicates != streams.EventDuplicates {
		t.Fatalf("EVENTS config = %+v", c)
	}
	if err := streams.Provision(ctx, env.JS, streams.Config{LogRetention: 48 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{events.StreamExec, events.StreamResults, events.StreamLogs} {
		st, err := env.JS.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if got := st.CachedInfo().Config.MaxAge; got != 48*time.Hour {
			t.Errorf("%s MaxAge = %s after changing the retention, want 48h", name, got)
		}
	}
	logs, _ := env.JS.Stream(ctx, events.StreamLogs)
	if c := logs.CachedInfo().Config; c.MaxBytes != streams.DefaultLogMaxBytes || c.Discard != jetstream.DiscardOld {
		t.Errorf("LOGS is not bounded: %+v", c)
	}
}

func TestConfigNamesEveryProblem(t *testing.T) {
	_, err := streams.Configs(streams.Config{Replicas: 2, LogRetention: time.Second, LogMaxBytes: 10})
	for _, want := range []string{"replicas", "log retention", "log max bytes"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not name %q", err, want)
		}
	}
}
