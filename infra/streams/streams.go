// Package streams provisions Orchestra's JetStream streams (DESIGN.md §6).
package streams

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/orchestra-fleet/orchestra/events"
)

// Config sizes the streams.
type Config struct {
	// Replicas per stream: 1 on the embedded server, 3 on a cluster.
	Replicas int
	// LogRetention is how long EXEC, RESULTS and LOGS keep messages.
	LogRetention time.Duration
	// LogMaxBytes bounds the LOGS stream (supervised process output).
	LogMaxBytes int64
	// OutputMaxBytes bounds the bucket of whole script outputs.
	OutputMaxBytes int64
}

// Defaults: one replica, 30 days of logs, 1 GiB of process output.
const (
	DefaultLogRetention = 30 * 24 * time.Hour
	DefaultLogMaxBytes  = 1 << 30
	// DefaultOutputMaxBytes bounds the bucket of whole script outputs.
	DefaultOutputMaxBytes = 8 << 30
	// EventDuplicates is the de-duplication window of EVENTS: a unit
	// retried within it is recognised by its message ids.
	EventDuplicates = 10 * time.Minute
)

func (c *Config) setDefaults() {
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.LogRetention == 0 {
		c.LogRetention = DefaultLogRetention
	}
	if c.LogMaxBytes == 0 {
		c.LogMaxBytes = DefaultLogMaxBytes
	}
	if c.OutputMaxBytes == 0 {
		c.OutputMaxBytes = DefaultOutputMaxBytes
	}
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	var errs []error
	if c.Replicas != 1 && c.Replicas != 3 && c.Replicas != 5 {
		errs = append(errs, fmt.Errorf("replicas: %d, want 1, 3 or 5", c.Replicas))
	}
	if c.LogRetention < time.Minute {
		errs = append(errs, fmt.Errorf("log retention: %s, want at least 1m", c.LogRetention))
	}
	if c.LogMaxBytes < 1<<20 {
		errs = append(errs, fmt.Errorf("log max bytes: %d, want at least 1 MiB", c.LogMaxBytes))
	}
	return errors.Join(errs...)
}

// Configs returns the desired configuration of every stream.
func Configs(c Config) ([]jetstream.StreamConfig, error) {
	c.setDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	logs := retained(c, events.StreamLogs, "Output of supervised processes", events.SubjectLogs)
	results := retained(c, events.StreamResults, "Script and unit results from the planner and the executors", events.SubjectResults)
	results.Subjects = append(results.Subjects, events.SubjectUnits)
	logs.MaxBytes, logs.Discard = c.LogMaxBytes, jetstream.DiscardOld
	return []jetstream.StreamConfig{
		{
			Name:               events.StreamEvents,
			Description:        "Orchestra event log: the source of truth",
			Subjects:           []string{events.SubjectEvents},
			Storage:            jetstream.FileStorage,
			Retention:          jetstream.LimitsPolicy,
			Replicas:           c.Replicas,
			Duplicates:         EventDuplicates,
			DenyDelete:         true,
			DenyPurge:          true,
			AllowDirect:        c.Replicas == 1, // a replica may answer a direct get before it has what the leader acknowledged
			AllowAtomicPublish: true,
		},
		retained(c, events.StreamExec, "Plans, one subject per server, strictly ordered", events.SubjectExec),
		results,
		logs,
		retained(c, events.StreamNotify, "Notifications to deliver, and those given up on", events.SubjectNotify),
	}, nil
}

// LeaseBucket holds the leases that make one of several `orchestra up`
// the active planner and site runner; an entry expires LeaseTTL after its
// last renewal.
const (
	LeaseBucket = "orchestra-leases"
	LeaseTTL    = 10 * time.Second
)

// PlannerBucket is the key-value bucket where the planner keeps how far it
// has published, shared by every process that may plan.
const PlannerBucket = "orchestra-planner"

// retained is a stream whose messages expire after the log retention.
func retained(c Config, name, description, subject string) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        name,
		Description: description,
		Subjects:    []string{subject},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Replicas:    c.Replicas,
		MaxAge:      c.LogRetention,
		Duplicates:  EventDuplicates,
		AllowDirect: true,
	}
}

// Provision creates the streams or brings them to the configuration. Run it
// as often as you like: an unchanged stream is left alone.
func Provision(ctx context.Context, js jetstream.JetStream, c Config) error {
	c.setDefaults()
	cfgs, err := Configs(c)
	if err != nil {
		return err
	}
	for _, cfg := range cfgs {
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("provision stream %s: %w", cfg.Name, err)
		}
	}
	if _, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: PlannerBucket, Description: "How far the planner has published plans",
		Storage: jetstream.FileStorage, Replicas: c.Replicas, History: 1,
	}); err != nil {
		return fmt.Errorf("provision bucket %s: %w", PlannerBucket, err)
	}
	if _, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: LeaseBucket, Description: "Which orchestra up is the active planner and site runner",
		Storage: jetstream.FileStorage, Replicas: c.Replicas, History: 1, TTL: LeaseTTL,
	}); err != nil {
		return fmt.Errorf("provision bucket %s: %w", LeaseBucket, err)
	}
	if _, err := js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket: events.OutputBucket, Description: "Whole outputs of scripts that outgrew their chunks on RESULTS",
		Storage: jetstream.FileStorage, Replicas: c.Replicas, TTL: c.LogRetention, MaxBytes: c.OutputMaxBytes,
	}); err != nil {
		return fmt.Errorf("provision bucket %s: %w", events.OutputBucket, err)
	}
	return nil
}
