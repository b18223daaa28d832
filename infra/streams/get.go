package streams

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// LastMsg is the last message of st under subject, as the stream's leader
// has it: a read that must see what a publish acknowledged a moment ago
// (a record the planner just stored) uses it. A direct get, which
// st.GetLastMsgForSubject is on a stream that allows them, may be answered
// by a replica that has not stored that message yet (on a three-node
// cluster on loopback, under load, up to one read in five right after the
// publish missed it). On one replica the two are the same, and the direct
// get is used.
func LastMsg(ctx context.Context, js jetstream.JetStream, st jetstream.Stream, subject string) (*jetstream.RawStreamMsg, error) {
	cfg := st.CachedInfo().Config
	if cfg.Replicas <= 1 || !cfg.AllowDirect {
		return st.GetLastMsgForSubject(ctx, subject)
	}
	req, err := json.Marshal(map[string]string{"last_by_subj": subject})
	if err != nil {
		return nil, err
	}
	reply, err := js.Conn().RequestWithContext(ctx, jetstream.DefaultAPIPrefix+"STREAM.MSG.GET."+cfg.Name, req)
	if err != nil {
		return nil, fmt.Errorf("last message of %s on %s: %w", subject, cfg.Name, err)
	}
	var resp struct {
		Error   *jetstream.APIError `json:"error"`
		Message *struct {
			Subject  string    `json:"subject"`
			Sequence uint64    `json:"seq"`
			Header   []byte    `json:"hdrs"`
			Data     []byte    `json:"data"`
			Time     time.Time `json:"time"`
		} `json:"message"`
	}
	if err := json.Unmarshal(reply.Data, &resp); err != nil {
		return nil, fmt.Errorf("last message of %s on %s: %w", subject, cfg.Name, err)
	}
	switch {
	case resp.Error != nil && resp.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound:
		return nil, jetstream.ErrMsgNotFound
	case resp.Error != nil:
		return nil, fmt.Errorf("last message of %s on %s: %w", subject, cfg.Name, resp.Error)
	case resp.Message == nil:
		return nil, fmt.Errorf("last message of %s on %s: %w", subject, cfg.Name, jetstream.ErrInvalidJetStreamResponse)
	}
	m := resp.Message
	var hdr nats.Header
	if len(m.Header) > 0 {
		if hdr, err = nats.DecodeHeadersMsg(m.Header); err != nil {
			return nil, fmt.Errorf("last message of %s on %s: %w", subject, cfg.Name, err)
		}
	}
	return &jetstream.RawStreamMsg{Subject: m.Subject, Sequence: m.Sequence, Header: hdr, Data: m.Data, Time: m.Time}, nil
}
