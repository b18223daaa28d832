package streams_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
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

// TestLastMsgSeesWhatWasJustStored: on a three-node cluster with R3
// streams, a read right after a publish was acknowledged finds the
// message every time, whichever nodes the publisher and the reader are
// connected to (a direct get misses some of them); a subject without
// messages is ErrMsgNotFound.
func TestLastMsgSeesWhatWasJustStored(t *testing.T) {
	_, urls, _ := natstest.ClusterJS(t, 3)
	ctx := context.Background()
	var clients []jetstream.JetStream
	var results []jetstream.Stream
	for _, u := range strings.Split(urls, ",") { // a client on each node
		nc, err := nats.Connect(u)
		if err != nil {
			t.Fatal(err)
		}
		js := natstest.JetStream(t, nc)
		st, err := js.Stream(ctx, events.StreamResults)
		if err != nil {
			t.Fatal(err)
		}
		clients, results = append(clients, js), append(results, st)
	}
	missed := 0
	for i := range 900 { // each publisher node with each reader node, 100 times in a row
		pub, read := i/300, i/100%3
		subject := fmt.Sprintf("orchestra.unit.u%d.UnitPlanned", i)
		if _, err := clients[pub].PublishMsg(ctx, &nats.Msg{Subject: subject, Data: fmt.Appendf(nil, "%d", i), Header: nats.Header{"X-Test": {"h"}}}); err != nil {
			t.Fatal(err)
		}
		msg, err := streams.LastMsg(ctx, clients[read], results[read], subject)
		if err != nil || msg.Subject != subject || string(msg.Data) != fmt.Sprint(i) || msg.Header.Get("X-Test") != "h" || msg.Sequence == 0 {
			if missed++; missed <= 3 {
				t.Errorf("published through node %d, read through node %d: %+v, %v", pub+1, read+1, msg, err)
			}
		}
	}
	if missed > 0 {
		t.Errorf("%d of 900 reads right after the publish did not see it", missed)
	}
	last, err := streams.LastMsg(ctx, clients[0], results[0], "orchestra.unit.*.UnitPlanned")
	if err != nil || last.Subject != "orchestra.unit.u899.UnitPlanned" {
		t.Errorf("the last of a wildcard: %+v, %v", last, err)
	}
	if _, err := streams.LastMsg(ctx, clients[0], results[0], "orchestra.unit.none.UnitPlanned"); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Errorf("a subject without messages: %v, want ErrMsgNotFound", err)
	}
}

// TestDirectGetsOnACluster: on a cluster EVENTS allows no direct get, so
// the event store reads from its leader; RESULTS still does, for the
// agents, whose credentials allow a direct get of their own results.
func TestDirectGetsOnACluster(t *testing.T) {
	for _, replicas := range []int{1, 3} {
		cfgs, err := streams.Configs(streams.Config{Replicas: replicas})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cfgs {
			if want := c.Name != events.StreamEvents || replicas == 1; c.AllowDirect != want {
				t.Errorf("%d replicas: %s allows direct gets: %v, want %v", replicas, c.Name, c.AllowDirect, want)
			}
		}
	}
}
