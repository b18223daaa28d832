// Package wmjet connects Watermill routers to JetStream: a Subscriber that
// delivers a durable consumer's messages one at a time and acknowledges
// each once its handler has, and a Publisher. Neither closes the NATS
// connection it was given: the process shares it.
package wmjet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/orchestra-fleet/orchestra/executor"
)

// Metadata keys of a delivered message besides its headers: its subject
// and its stream sequence.
const (
	MetadataSubject   = "subject"
	MetadataStreamSeq = "stream_seq"
)

// Topic is a durable consumer a handler reads: the stream and the
// consumer's configuration (its Durable name and filter).
type Topic struct {
	Stream   string
	Consumer jetstream.ConsumerConfig
}

// Subscriber implements message.Subscriber on JetStream durable consumers;
// a topic is the name of one of its Topics.
type Subscriber struct {
	js     jetstream.JetStream
	topics map[string]Topic
	// Redelivery is how long a message a handler nacked waits before it
	// comes back.
	Redelivery time.Duration
	// Log reports consumers that stop delivering.
	Log *slog.Logger

	mu     sync.Mutex
	closed bool
	stops  []func()
	wg     sync.WaitGroup
}

var _ message.Subscriber = (*Subscriber)(nil)

// NewSubscriber returns a subscriber of topics.
func NewSubscriber(js jetstream.JetStream, topics map[string]Topic) *Subscriber {
	return &Subscriber{js: js, topics: topics, Redelivery: time.Second, Log: slog.New(slog.DiscardHandler)}
}

// Subscribe creates or updates topic's consumer and delivers its messages
// on the channel, one at a time: the next comes once the handler acked or
// nacked the last. The channel closes when ctx ends or the subscriber
// closes.
func (s *Subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	t, ok := s.topics[topic]
	if !ok {
		return nil, fmt.Errorf("wmjet: no topic %q", topic)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("wmjet: subscriber closed")
	}
	cons, err := s.js.CreateOrUpdateConsumer(ctx, t.Stream, t.Consumer)
	if err != nil {
		return nil, fmt.Errorf("wmjet: consumer %s on %s: %w", t.Consumer.Durable, t.Stream, err)
	}
	executor.AwaitLeader(ctx, cons)
	ctx, cancel := context.WithCancel(ctx)
	out := make(chan *message.Message)
	beat := t.Consumer.AckWait / 3
	if beat <= 0 {
		beat = 10 * time.Second // a third of JetStream's default AckWait
	}
	cc, err := cons.Consume(func(m jetstream.Msg) { s.deliver(ctx, m, out, beat) },
		jetstream.PullMaxMessages(16), jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			s.Log.Warn("wmjet: consumer error", "consumer", t.Consumer.Durable, "err", err)
		}))
	if err != nil {
		cancel()
		return nil, fmt.Errorf("wmjet: consume %s: %w", t.Consumer.Durable, err)
	}
	s.stops = append(s.stops, cancel)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		<-ctx.Done()
		cc.Stop()
		<-cc.Closed()
		close(out)
	}()
	return out, nil
}

// deliver hands one message to the router and settles it as the handler
// did: DoubleAck on ack, a delayed redelivery on nack, nothing when
// stopping (it comes back after AckWait). While the handler works, and
// retries, the server is told every beat that the message is in progress,
// so it is not delivered again meanwhile.
func (s *Subscriber) deliver(ctx context.Context, m jetstream.Msg, out chan<- *message.Message, beat time.Duration) {
	id := m.Headers().Get(jetstream.MsgIDHeader)
	if id == "" {
		id = watermill.NewUUID()
	}
	msg := message.NewMessage(id, m.Data())
	for k, v := range m.Headers() {
		if len(v) > 0 {
			msg.Metadata.Set(k, v[0])
		}
	}
	msg.Metadata.Set(MetadataSubject, m.Subject())
	if meta, err := m.Metadata(); err == nil {
		msg.Metadata.Set(MetadataStreamSeq, strconv.FormatUint(meta.Sequence.Stream, 10))
	}
	msg.SetContext(ctx)
	select {
	case out <- msg:
	case <-ctx.Done():
		return
	}
	t := time.NewTicker(beat)
	defer t.Stop()
	for {
		select {
		case <-msg.Acked():
			// Acknowledged even when stopping: the handler is done with it.
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_ = m.DoubleAck(actx)
			cancel()
			return
		case <-msg.Nacked():
			_ = m.NakWithDelay(s.Redelivery)
			return
		case <-t.C:
			_ = m.InProgress()
		case <-ctx.Done():
			return
		}
	}
}

// Close stops every consumer's delivery and waits for it.
func (s *Subscriber) Close() error {
	s.mu.Lock()
	s.closed = true
	stops := s.stops
	s.stops = nil
	s.mu.Unlock()
	for _, stop := range stops {
		stop()
	}
	s.wg.Wait()
	return nil
}

// Publisher implements message.Publisher: a topic is a subject, a
// message's UUID its Nats-Msg-Id, its metadata its headers.
type Publisher struct {
	js jetstream.JetStream
}

var _ message.Publisher = Publisher{}

// NewPublisher returns a publisher on js.
func NewPublisher(js jetstream.JetStream) Publisher { return Publisher{js: js} }

// Publish stores each message and waits for its acknowledgement.
func (p Publisher) Publish(topic string, msgs ...*message.Message) error {
	for _, m := range msgs {
		h := nats.Header{}
		for k, v := range m.Metadata {
			// JetStream's own headers (expectations, the message id) are
			// about the message as it was stored, not a copy published
			// elsewhere: a poisoned event would be refused for them.
			if k != MetadataSubject && k != MetadataStreamSeq && !strings.HasPrefix(k, "Nats-") {
				h.Set(k, v)
			}
		}
		h.Set(jetstream.MsgIDHeader, m.UUID)
		ctx, cancel := context.WithTimeout(m.Context(), 30*time.Second)
		_, err := p.js.PublishMsg(ctx, &nats.Msg{Subject: topic, Header: h, Data: m.Payload})
		cancel()
		if err != nil {
			return fmt.Errorf("wmjet: publish to %s: %w", topic, err)
		}
	}
	return nil
}

// Close implements message.Publisher; the connection stays open.
func (Publisher) Close() error { return nil }

// poisoned publishes the copies of messages the poison queue keeps under
// ids of their own: under the original's id a stream whose subjects hold
// both would drop the copy as a duplicate.
type poisoned struct{ message.Publisher }

func (p poisoned) Publish(topic string, msgs ...*message.Message) error {
	out := make([]*message.Message, len(msgs))
	for i, m := range msgs {
		c := m.Copy()
		c.UUID = m.UUID + "/poisoned"
		c.SetContext(m.Context())
		out[i] = c
	}
	return p.Publisher.Publish(topic, out...)
}

// RouterConfig sizes a router's retries: a handler's error is retried
// MaxRetries times with backoff from InitialInterval, then the message
// goes to the poison topic. The retries must end within the consumers'
// AckWait.
type RouterConfig struct {
	MaxRetries      int
	InitialInterval time.Duration
	MaxInterval     time.Duration
	PoisonTopic     string
}

// NewRouter returns a router with Orchestra's middleware, outermost
// first: a correlation id, the poison queue, retries with backoff, and
// recovery from a handler's panic (which then counts as its error).
func NewRouter(log *slog.Logger, pub message.Publisher, cfg RouterConfig) (*message.Router, error) {
	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, watermill.NewSlogLoggerWithLevelMapping(log, map[slog.Level]slog.Level{
		slog.LevelInfo: slog.LevelDebug, // Watermill's start-up chatter
	}))
	if err != nil {
		return nil, err
	}
	poison, err := middleware.PoisonQueue(poisoned{pub}, cfg.PoisonTopic)
	if err != nil {
		return nil, err
	}
	r.AddMiddleware(
		middleware.CorrelationID,
		poison,
		middleware.Retry{MaxRetries: cfg.MaxRetries, InitialInterval: cfg.InitialInterval, MaxInterval: cfg.MaxInterval,
			Multiplier: 2, Logger: watermill.NewSlogLogger(log)}.Middleware,
		middleware.Recoverer,
	)
	return r, nil
}
