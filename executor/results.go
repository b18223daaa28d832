package executor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/orchestra-fleet/orchestra/events"
)

// publishTimeout bounds the wait for one acknowledgement of RESULTS.
const publishTimeout = 30 * time.Second

// results publishes what happens to scripts on RESULTS.
type results struct {
	js jetstream.JetStream
	// objects keeps whole outputs; nil where whole output is not kept
	// (an agent's credentials do not reach the bucket).
	objects jetstream.ObjectStore
}

// publish sends one result without waiting for its acknowledgement.
func (r *results) publish(server string, id uuid.UUID, msgID string, v events.Result) (jetstream.PubAckFuture, error) {
	subject, err := events.ScriptSubject(server, id, v.ResultType())
	if err != nil {
		return nil, err
	}
	data, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", v.ResultType(), err)
	}
	msg := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{jetstream.MsgIDHeader: {msgID}}}
	return r.js.PublishMsgAsync(msg)
}

// store publishes one result and waits until it is stored, retrying with
// backoff until ctx ends: the script has run, and its result must not be
// lost to a passing disconnect. The message id makes retries harmless.
func (r *results) store(ctx context.Context, server string, id uuid.UUID, msgID string, v events.Result) error {
	wait := 50 * time.Millisecond
	for {
		f, err := r.publish(server, id, msgID, v)
		if err == nil {
			select {
			case <-f.Ok():
				return nil
			case err = <-f.Err():
			case <-time.After(publishTimeout):
				err = fmt.Errorf("no acknowledgement within %s", publishTimeout)
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if fe := (*events.FieldError)(nil); errors.As(err, &fe) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("store %s of script %s: %w (last error: %v)", v.ResultType(), id, ctx.Err(), err)
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// last reads the last result of v's type about a script into v, and
// reports whether there is one: after a redelivery, scripts of the plan
// that finished are not run again, and what an earlier attempt started is
// stopped. It uses a direct get on the server's own subject, which an
// agent's credentials allow.
func (r *results) last(ctx context.Context, server string, id uuid.UUID, v events.Result) (bool, error) {
	subject, err := events.ScriptSubject(server, id, v.ResultType())
	if err != nil {
		return false, err
	}
	reply, err := r.js.Conn().RequestWithContext(ctx, "$JS.API.DIRECT.GET."+events.StreamResults+"."+subject, nil)
	if err != nil {
		return false, fmt.Errorf("look up %s of script %s: %w", v.ResultType(), id, err)
	}
	switch status := reply.Header.Get("Status"); status {
	case "":
		if err := json.Unmarshal(reply.Data, v); err != nil {
			return false, fmt.Errorf("%s of script %s: %w", v.ResultType(), id, err)
		}
		return true, nil
	case "404":
		return false, nil
	default:
		return false, fmt.Errorf("look up %s of script %s: status %s %s", v.ResultType(), id, status, reply.Header.Get("Description"))
	}
}

// keep stores a whole output in the bucket under name.
func (r *results) keep(ctx context.Context, name string, size int64, body io.Reader) error {
	_, err := r.objects.Put(ctx, jetstream.ObjectMeta{
		Name:        name,
		Description: "whole output, " + strconv.FormatInt(size, 10) + " bytes",
	}, body)
	if err != nil {
		return fmt.Errorf("keep output %s: %w", name, err)
	}
	return nil
}

// Claim publishes v, a result about script id on server, unless the
// other side's claim is there: the executor taking up a site step (a
// ScriptStarted) and the runner revoking it (a REVOKED ScriptFinished)
// both claim the script, and only the first succeeds. It reads the
// script's last result, asks other whether the other side's result exists
// (a look after that read sees any claim stored before it), and publishes
// v only if nothing about the script was stored since the read. It
// reports whether v was stored.
func Claim(ctx context.Context, js jetstream.JetStream, server string, id uuid.UUID, v, other events.Result, msgID string) (bool, error) {
	filter, err := events.ScriptSubject(server, id, ">")
	if err != nil {
		return false, err
	}
	reply, err := js.Conn().RequestWithContext(ctx, "$JS.API.DIRECT.GET."+events.StreamResults+"."+filter, nil)
	if err != nil {
		return false, fmt.Errorf("look up the results of script %s: %w", id, err)
	}
	var seq uint64
	switch status := reply.Header.Get("Status"); status {
	case "":
		if seq, err = strconv.ParseUint(reply.Header.Get("Nats-Sequence"), 10, 64); err != nil {
			return false, fmt.Errorf("the last result of script %s has no sequence: %w", id, err)
		}
	case "404":
	default:
		return false, fmt.Errorf("look up the results of script %s: status %s %s", id, status, reply.Header.Get("Description"))
	}
	r := results{js: js}
	if taken, err := r.last(ctx, server, id, other); err != nil || taken {
		return false, err
	}
	subject, err := events.ScriptSubject(server, id, v.ResultType())
	if err != nil {
		return false, err
	}
	data, err := json.Marshal(v)
	if err != nil {
		return false, err
	}
	msg := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{
		jetstream.MsgIDHeader:                   {msgID},
		jetstream.ExpectedLastSubjSeqHeader:     {strconv.FormatUint(seq, 10)},
		jetstream.ExpectedLastSubjSeqSubjHeader: {filter},
	}}
	_, err = js.PublishMsg(ctx, msg)
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("claim script %s: %w", id, err)
	}
	return true, nil
}
