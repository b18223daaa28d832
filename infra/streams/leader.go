package streams

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// leaderWait bounds how long AwaitLeader waits.
const leaderWait = 10 * time.Second

// AwaitLeader waits, at most leaderWait, until cons has a leader. A
// consumer just made on a NATS cluster (by this process, or by another at
// the same moment) has none for a moment, and a pull sent then is
// answered "no responders", which nats.go takes for a pull still pending:
// the consumer would stall until the pull expires, 30 s later. Call it
// before the first pull of a consumer just created or updated. On a
// single server a consumer always has one.
func AwaitLeader(ctx context.Context, cons jetstream.Consumer) {
	info := cons.CachedInfo()
	for deadline := time.Now().Add(leaderWait); info.Cluster != nil && info.Cluster.Leader == "" && time.Now().Before(deadline); {
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
		if i, err := cons.Info(ctx); err == nil {
			info = i
		}
	}
}
