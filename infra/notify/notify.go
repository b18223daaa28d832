// Package notify is Orchestra's notifier: it reports finished site runs
// and failed model scripts to webhooks and email addresses.
//
// It works in two steps over the NOTIFY stream. A trigger (a RunFinished
// event on EVENTS, a ScriptFinished result on RESULTS) becomes one
// Delivery per target, published on events.SubjectNotifySend with a
// deterministic message id, so a trigger handled twice is stored once.
// Each delivery is then sent on its own; one that keeps failing is
// retried with backoff, then moved to events.SubjectNotifyPoison, where
// it is recorded as a NotificationAbandoned event.
package notify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/mail"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/infra/planbus"
	"github.com/orchestra-fleet/orchestra/infra/wmjet"
	"github.com/orchestra-fleet/orchestra/projections"
	"github.com/orchestra-fleet/orchestra/services"
)

// Target is one destination of notifications: a webhook, signed with
// Secret (a plain HMAC key) when set, or an email address.
type Target struct {
	Webhook string
	Secret  string
	Email   string
}

// SiteTargets gives the notification targets of a site, secrets opened
// (services.OpenNotify); none for a site that does not exist.
type SiteTargets interface {
	SiteTargets(site string) ([]Target, error)
}

// ScriptSource gives a script's log from the read model: its operations,
// script text and output tails.
type ScriptSource interface {
	Script(ctx context.Context, id uuid.UUID) (projections.ScriptLog, error)
}

// Config of a Notifier.
type Config struct {
	JetStream jetstream.JetStream
	// Registry decodes the RunFinished events read from EVENTS.
	Registry *events.Registry
	// Global targets hear of every run and of every failed model script.
	Global []Target
	// SMTP is the host:port of the mail server; "" disables email, and
	// an email delivery is then abandoned at once.
	SMTP string
	// From is the sender of emails; default "orchestra@localhost".
	From    string
	Sites   SiteTargets
	Scripts ScriptSource
	// Record stores a notification given up on.
	Record func(context.Context, events.NotificationAbandoned) error
	// Log defaults to slog.Default().
	Log *slog.Logger
	// HTTPClient posts webhooks; default a client with a 10s timeout.
	// Its Timeout must be set: it bounds every attempt.
	HTTPClient *http.Client
	// MaxRetries is how often a failed delivery is tried again (default
	// 5), with backoff doubling from InitialInterval (default 500ms).
	MaxRetries      int
	InitialInterval time.Duration
}

// Defaults of Config.
const (
	DefaultFrom            = "orchestra@localhost"
	DefaultHTTPTimeout     = 10 * time.Second
	DefaultMaxRetries      = 5
	DefaultInitialInterval = 500 * time.Millisecond
)

// ackWait is how long a consumer waits for a message's acknowledgement
// before it sends it again: every retry of a delivery must fit in it.
const ackWait = 2 * time.Minute

// maxIntervalFactor caps the backoff between retries at this many
// initial intervals.
const maxIntervalFactor = 16

func (c Config) withDefaults() Config {
	if c.From == "" {
		c.From = DefaultFrom
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{Timeout: DefaultHTTPTimeout}
	}
	if c.MaxRetries == 0 {
		c.MaxRetries = DefaultMaxRetries
	}
	if c.InitialInterval == 0 {
		c.InitialInterval = DefaultInitialInterval
	}
	return c
}

// Validate reports every missing dependency and bad setting at once.
// Zero optional fields take their defaults.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	for _, dep := range []struct {
		name    string
		missing bool
	}{
		{"JetStream", c.JetStream == nil},
		{"Registry", c.Registry == nil},
		{"Sites", c.Sites == nil},
		{"Scripts", c.Scripts == nil},
		{"Record", c.Record == nil},
	} {
		if dep.missing {
			errs = append(errs, fmt.Errorf("notify: %s is required", dep.name))
		}
	}
	for i, t := range c.Global {
		if err := services.ValidateNotify(fmt.Sprintf("global[%d]", i), events.Notify(t)); err != nil {
			errs = append(errs, fmt.Errorf("notify: %w", err))
		}
	}
	if _, err := mail.ParseAddress(c.From); err != nil {
		errs = append(errs, fmt.Errorf("notify: from %q is not an email address: %w", c.From, err))
	}
	switch {
	case c.MaxRetries < 0:
		errs = append(errs, fmt.Errorf("notify: max retries %d is negative", c.MaxRetries))
	case c.InitialInterval < 0:
		errs = append(errs, fmt.Errorf("notify: initial interval %s is negative", c.InitialInterval))
	case c.HTTPClient.Timeout <= 0:
		errs = append(errs, errors.New("notify: the HTTP client has no Timeout; every attempt must be bounded"))
	default:
		if worst := c.retryBudget(); worst >= ackWait {
			errs = append(errs, fmt.Errorf("notify: a failing delivery is tried for up to %s, longer than the consumers' ack wait %s: lower MaxRetries, InitialInterval or the HTTP client's Timeout",
				worst, ackWait))
		}
	}
	return errors.Join(errs...)
}

// retryBudget is the longest a failing delivery may take, every attempt
// timing out and every backoff waited in full.
func (c Config) retryBudget() time.Duration {
	attempt := max(c.HTTPClient.Timeout, smtpTimeout)
	total := time.Duration(c.MaxRetries+1) * attempt
	interval := c.InitialInterval
	for range c.MaxRetries {
		total += interval
		interval = min(2*interval, maxIntervalFactor*c.InitialInterval)
	}
	return total
}

// Notifier turns triggers into deliveries and sends them.
type Notifier struct {
	cfg  Config
	from *mail.Address
}

// New returns a notifier with cfg, defaults filled in.
func New(cfg Config) (*Notifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	from, err := mail.ParseAddress(cfg.From)
	if err != nil { // checked by Validate
		return nil, fmt.Errorf("notify: from: %w", err)
	}
	return &Notifier{cfg: cfg, from: from}, nil
}

// Topics (durable consumer names) of the notifier's handlers.
const (
	TopicRuns    = "notify-runs"
	TopicScripts = "notify-scripts"
	TopicDeliver = "notify-deliver"
	TopicPoison  = "notify-poison"
)

// Topics returns the durable consumers the notifier reads, by name: new
// messages only, one at a time, acknowledged explicitly.
func (n *Notifier) Topics() map[string]wmjet.Topic {
	topic := func(stream, name, filter string) wmjet.Topic {
		return wmjet.Topic{Stream: stream, Consumer: jetstream.ConsumerConfig{
			Durable:       name,
			FilterSubject: filter,
			DeliverPolicy: jetstream.DeliverNewPolicy,
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       ackWait,
			MaxAckPending: 1,
		}}
	}
	return map[string]wmjet.Topic{
		TopicRuns:    topic(events.StreamEvents, TopicRuns, "orchestra.evt."+events.AggSiteRun+".*.RunFinished"),
		TopicScripts: topic(events.StreamResults, TopicScripts, "orchestra.res.*.*.ScriptFinished"),
		TopicDeliver: topic(events.StreamNotify, TopicDeliver, events.SubjectNotifySend),
		TopicPoison:  topic(events.StreamNotify, TopicPoison, events.SubjectNotifyPoison),
	}
}

// RouterConfig is the configuration of the router the handlers need:
// the notifier's retries and events.SubjectNotifyPoison as poison topic.
func (n *Notifier) RouterConfig() wmjet.RouterConfig {
	return wmjet.RouterConfig{
		MaxRetries:      n.cfg.MaxRetries,
		InitialInterval: n.cfg.InitialInterval,
		MaxInterval:     maxIntervalFactor * n.cfg.InitialInterval,
		PoisonTopic:     events.SubjectNotifyPoison,
	}
}

// AddHandlers adds the notifier's four handlers to r, a router built by
// wmjet.NewRouter with RouterConfig; sub must serve Topics and pub
// publish on JetStream.
func (n *Notifier) AddHandlers(r *message.Router, sub message.Subscriber, pub message.Publisher) {
	r.AddHandler(TopicRuns, TopicRuns, sub, events.SubjectNotifySend, pub, n.runFinished)
	r.AddHandler(TopicScripts, TopicScripts, sub, events.SubjectNotifySend, pub, n.scriptFinished)
	r.AddConsumerHandler(TopicDeliver, TopicDeliver, sub, n.deliver)
	r.AddConsumerHandler(TopicPoison, TopicPoison, sub, n.poisoned)
}

// Run runs the notifier on its own router until ctx ends.
func (n *Notifier) Run(ctx context.Context) error {
	pub := wmjet.NewPublisher(n.cfg.JetStream)
	sub := wmjet.NewSubscriber(n.cfg.JetStream, n.Topics())
	sub.Log = n.cfg.Log
	defer sub.Close()
	r, err := wmjet.NewRouter(n.cfg.Log, pub, n.RouterConfig())
	if err != nil {
		return fmt.Errorf("notify: router: %w", err)
	}
	n.AddHandlers(r, sub, pub)
	if err := r.Run(ctx); err != nil {
		return fmt.Errorf("notify: %w", err)
	}
	return nil
}

// Delivery kinds.
const (
	KindWebhook = "webhook"
	KindEmail   = "email"
)

// Delivery is one notification to one target: the body of a message on
// events.SubjectNotifySend. It holds no secret: a webhook's is looked up
// when it is sent.
type Delivery struct {
	// ID is "<run id>/<n>" or "<script id>.<attempt>/<n>", n the
	// target's index: the message id, so a delivery is stored once.
	ID     string `json:"id"`
	Target string `json:"target"` // the webhook URL or the email address
	Kind   string `json:"kind"`   // webhook or email
	// Event is what is reported: EventRunFinished or EventScriptFailed.
	Event   string `json:"event"`
	Site    string `json:"site,omitempty"` // the site whose target it is; "" for a global one
	Subject string `json:"subject"`
	// Text is an email's body, Payload a webhook's.
	Text    string          `json:"text,omitempty"`
	Payload json.RawMessage `json:"payload,omitempty"`
}

// runFinished turns a RunFinished event into deliveries to the site's
// targets and the global ones.
func (n *Notifier) runFinished(msg *message.Message) ([]*message.Message, error) {
	run, err := n.decodeRun(msg)
	if err != nil {
		return nil, err
	}
	targets, err := n.cfg.Sites.SiteTargets(run.Site)
	if err != nil {
		return nil, fmt.Errorf("notify: targets of site %s: %w", run.Site, err)
	}
	payload, err := json.Marshal(runPayload{Event: EventRunFinished, Run: run})
	if err != nil {
		return nil, fmt.Errorf("notify: encode run %s: %w", run.Run, err)
	}
	d := Delivery{Event: EventRunFinished, Subject: runSubject(run), Text: runText(run), Payload: payload}
	return n.deliveries(run.Run.String(), d, run.Site, targets)
}

// decodeRun decodes the RunFinished event msg carries.
func (n *Notifier) decodeRun(msg *message.Message) (events.RunFinished, error) {
	header := make(map[string][]string, len(msg.Metadata))
	for k, v := range msg.Metadata {
		header[k] = []string{v}
	}
	subject := msg.Metadata.Get(wmjet.MetadataSubject)
	env, err := n.cfg.Registry.Decode(events.Message{Subject: subject, Header: header, Data: msg.Payload})
	if err != nil {
		return events.RunFinished{}, fmt.Errorf("notify: decode %s: %w", subject, err)
	}
	p, err := n.cfg.Registry.Payload(env)
	if err != nil {
		return events.RunFinished{}, fmt.Errorf("notify: decode event %s: %w", env.ID, err)
	}
	run, ok := p.(*events.RunFinished)
	if !ok {
		return events.RunFinished{}, fmt.Errorf("notify: event %s is a %s, not a RunFinished", env.ID, env.Type)
	}
	return *run, nil
}

// sitePrefix starts the backend of a site step's script (events.StepLabel).
const sitePrefix = "site:"

// scriptFinished turns the failure of a model script into deliveries to
// the global targets. Site steps are reported by their run.
func (n *Notifier) scriptFinished(msg *message.Message) ([]*message.Message, error) {
	subject := msg.Metadata.Get(wmjet.MetadataSubject)
	r, err := planbus.DecodeResult(subject, msg.Payload)
	if err != nil {
		return nil, fmt.Errorf("notify: decode result: %w", err)
	}
	fin, ok := r.(*events.ScriptFinished)
	if !ok {
		return nil, fmt.Errorf("notify: %s is a %s, not a ScriptFinished", subject, r.ResultType())
	}
	if fin.State == events.StateSuccess || fin.State == events.StateNothing || strings.HasPrefix(fin.Backend, sitePrefix) {
		return nil, nil
	}
	log, logErr := n.scriptLog(msg.Context(), *fin)
	if logErr != nil {
		n.cfg.Log.Warn("notify: script log unavailable; reporting the failure without it", "script", fin.ID, "err", logErr)
	}
	payload, err := json.Marshal(scriptPayload{Event: EventScriptFailed, Script: log})
	if err != nil {
		return nil, fmt.Errorf("notify: encode script %s: %w", fin.ID, err)
	}
	d := Delivery{Event: EventScriptFailed, Subject: scriptSubject(*fin), Text: scriptText(*fin, log, logErr), Payload: payload}
	return n.deliveries(fmt.Sprintf("%s.%d", fin.ID, fin.Attempt), d, "", nil)
}

// Waiting for the read model to fold a script's end.
const (
	catchUpWait = 2 * time.Second
	catchUpPoll = 100 * time.Millisecond
)

// scriptLog returns the log of fin's script with fin folded in. The read
// model folds results a moment after they are stored: it is asked again
// for a while until it has this attempt's end, so the output tails are
// complete.
func (n *Notifier) scriptLog(ctx context.Context, fin events.ScriptFinished) (projections.ScriptLog, error) {
	deadline := time.Now().Add(catchUpWait)
	for {
		log, err := n.cfg.Scripts.Script(ctx, fin.ID)
		if err != nil {
			var bare projections.ScriptLog
			bare.Fold(&fin)
			return bare, fmt.Errorf("script %s: %w", fin.ID, err)
		}
		if (log.Attempt >= fin.Attempt && log.Finished != nil) || !time.Now().Before(deadline) {
			log.Fold(&fin)
			return log, nil
		}
		select {
		case <-ctx.Done():
			log.Fold(&fin)
			return log, nil
		case <-time.After(catchUpPoll):
		}
	}
}

// deliveries makes one message per target out of d: the site's targets
// first, then the global ones, numbered in that order after prefix.
func (n *Notifier) deliveries(prefix string, d Delivery, site string, siteTargets []Target) ([]*message.Message, error) {
	all := append(append([]Target(nil), siteTargets...), n.cfg.Global...)
	out := make([]*message.Message, 0, len(all))
	for i, t := range all {
		one := d
		one.ID = fmt.Sprintf("%s/%d", prefix, i)
		if i < len(siteTargets) {
			one.Site = site
		}
		if t.Email != "" {
			one.Kind, one.Target, one.Payload = KindEmail, t.Email, nil
		} else {
			one.Kind, one.Target, one.Text = KindWebhook, t.Webhook, ""
		}
		data, err := json.Marshal(one)
		if err != nil {
			return nil, fmt.Errorf("notify: encode delivery %s: %w", one.ID, err)
		}
		out = append(out, message.NewMessage(one.ID, data))
	}
	return out, nil
}

// deliver sends one delivery. Its error makes the router retry, then
// give the delivery up.
func (n *Notifier) deliver(msg *message.Message) error {
	var d Delivery
	if err := json.Unmarshal(msg.Payload, &d); err != nil {
		return fmt.Errorf("notify: decode delivery %s: %w", msg.UUID, err)
	}
	ctx := msg.Context()
	var err error
	switch d.Kind {
	case KindWebhook:
		err = n.postWebhook(ctx, d)
	case KindEmail:
		if n.cfg.SMTP == "" {
			// Retrying cannot help: the setting is fixed until a restart.
			return n.abandon(ctx, d, errNoSMTP.Error())
		}
		err = n.sendEmail(ctx, d)
	default:
		err = fmt.Errorf("unknown kind %q", d.Kind)
	}
	if errors.Is(err, errNotTarget) {
		n.cfg.Log.Warn("notify: not sent: no longer a target", "delivery", d.ID, "target", d.Target, "site", d.Site)
		return nil
	}
	if err != nil {
		return fmt.Errorf("notify: deliver %s to %s: %w", d.ID, d.Target, err)
	}
	n.cfg.Log.Debug("notify: sent", "delivery", d.ID, "target", d.Target, "subject", d.Subject)
	return nil
}

// poisoned records a message its handler gave up on. A delivery is
// recorded as such; a trigger that could not be turned into deliveries
// is recorded under its message id, with no target.
func (n *Notifier) poisoned(msg *message.Message) error {
	reason := msg.Metadata.Get(middleware.ReasonForPoisonedKey)
	handler := msg.Metadata.Get(middleware.PoisonedHandlerKey)
	var d Delivery
	if handler != TopicDeliver || json.Unmarshal(msg.Payload, &d) != nil || d.ID == "" {
		return n.abandon(msg.Context(), Delivery{ID: msg.UUID, Subject: "notifications of " + handler}, handler+": "+reason)
	}
	return n.abandon(msg.Context(), d, reason)
}

// abandon records d as given up on for reason.
func (n *Notifier) abandon(ctx context.Context, d Delivery, reason string) error {
	ev := events.NotificationAbandoned{ID: d.ID, Target: d.Target, Subject: d.Subject, Reason: reason}
	n.cfg.Log.Error("notify: notification abandoned", "delivery", d.ID, "target", d.Target, "subject", d.Subject, "reason", reason)
	if err := n.cfg.Record(ctx, ev); err != nil {
		n.cfg.Log.Error("notify: could not record an abandoned notification", "delivery", d.ID, "err", err)
		return fmt.Errorf("notify: record abandoned notification %s: %w", d.ID, err)
	}
	return nil
}
