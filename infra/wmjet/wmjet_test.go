package wmjet_test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/infra/natstest"
	"github.com/orchestra-fleet/orchestra/infra/wmjet"
)

// TestHandlersAckRetryAndPoison: messages reach their handler in order and
// are acknowledged once handled; a message the handler keeps failing on is
// retried, then kept on the poison topic with the reason, even when it was
// stored with JetStream expectations (as events are), and the consumer
// goes on with the next.
func TestHandlersAckRetryAndPoison(t *testing.T) {
	env := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: "SRC", Subjects: []string{"src.>"}}); err != nil {
		t.Fatal(err)
	}
	topics := map[string]wmjet.Topic{"h": {Stream: "SRC", Consumer: jetstream.ConsumerConfig{
		Durable: "h", FilterSubject: "src.>", AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 1, AckWait: 3 * time.Second,
	}}}
	sub := wmjet.NewSubscriber(env.JS, topics)
	defer sub.Close()
	pub := wmjet.NewPublisher(env.JS)
	const poison = "orchestra.notify.poison.test"
	r, err := wmjet.NewRouter(slog.New(slog.DiscardHandler), pub, wmjet.RouterConfig{MaxRetries: 2, InitialInterval: time.Millisecond, MaxInterval: 5 * time.Millisecond, PoisonTopic: poison})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	var badTries atomic.Int32
	handled := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}
	r.AddConsumerHandler("h", "h", sub, func(m *message.Message) error {
		if m.Metadata.Get(wmjet.MetadataSubject) == "src.bad" {
			badTries.Add(1)
			return errors.New("cannot handle this one")
		}
		if m.Metadata.Get(wmjet.MetadataStreamSeq) == "" {
			return errors.New("no stream sequence")
		}
		mu.Lock()
		seen = append(seen, string(m.Payload))
		mu.Unlock()
		return nil
	})
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	<-r.Running()
	for i, subj := range []string{"src.a", "src.bad", "src.c", "src.d"} {
		msg := &nats.Msg{Subject: subj, Data: []byte{byte('a' + i)}, Header: nats.Header{}}
		// An expectation, as the event store sets: it must not follow the
		// message to the poison topic.
		msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "0")
		msg.Header.Set(jetstream.ExpectedStreamHeader, "SRC")
		if _, err := env.JS.PublishMsg(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	notify, err := env.JS.Stream(ctx, events.StreamNotify)
	if err != nil {
		t.Fatal(err)
	}
	var kept *jetstream.RawStreamMsg
	for ctx.Err() == nil && (len(handled()) < 3 || kept == nil) {
		kept, _ = notify.GetLastMsgForSubject(ctx, poison)
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	seen = handled()
	if len(seen) < 3 || kept == nil {
		t.Fatalf("in 30 s: handled %v, poison topic holds %v", seen, kept)
	}
	if seen[0]+seen[1]+seen[2] != "acd" {
		t.Errorf("handled %v, want a, c, d in order", seen)
	}
	if kept == nil || string(kept.Data) != "b" || kept.Header.Get(middleware.ReasonForPoisonedKey) != "cannot handle this one" {
		t.Fatalf("the poison topic holds %+v", kept)
	}
	if n := badTries.Load(); n != 3 {
		t.Errorf("the failing message was tried %d times, want 3 (2 retries)", n)
	}
	info, err := env.JS.Consumer(context.Background(), "SRC", "h")
	if err != nil {
		t.Fatal(err)
	}
	ci, err := info.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if ci.NumAckPending != 0 || ci.AckFloor.Stream != 4 {
		t.Errorf("consumer: %d pending, ack floor %d; want 0 and 4", ci.NumAckPending, ci.AckFloor.Stream)
	}
}
