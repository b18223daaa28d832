package services

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/google/uuid"

	"github.com/orchestra-fleet/orchestra/events"
)

// Requests ask the planner for work without changing the model: a custom
// action on a resource, a sync of a server, a retry of a script. Each is a
// unit of one event on the aggregate it is about, so it is ordered with the
// changes of that object. Operators and admins may make them.

// RequestResult says where a request landed. Unit is empty when there was
// nothing to ask for.
type RequestResult struct {
	Unit     string `json:"unit,omitempty"`
	Sequence uint64 `json:"sequence"`
}

// Action asks for a backend's custom action on a resource. Only backends of
// the resource's type that define the action get it.
func (s *Service) Action(ctx context.Context, p Principal, typ, name, action string) (RequestResult, error) {
	if err := canRequest(p, "running an action"); err != nil {
		return RequestResult{}, err
	}
	for _, f := range []struct{ field, value string }{{"type", typ}, {"action", action}} {
		if err := validateIdent(f.field, f.value); err != nil {
			return RequestResult{}, err
		}
	}
	if action == "delete" {
		return RequestResult{}, FieldErrorf(EINVALID, "action", "delete is not run as an action: delete the resource and the planner runs it")
	}
	ref := Ref{Kind: KindResource, Name: ResourceName(typ, name)}
	return serialized(ctx, s, func() (RequestResult, error) {
		s.mu.RLock()
		_, exists := s.state.resources[ref.Name]
		var defined []string
		var backends []string
		for _, b := range s.state.backends {
			if b.value.Type == typ {
				backends = append(backends, b.value.Name)
				if _, ok := b.value.Actions[action]; ok {
					defined = append(defined, b.value.Name)
				}
			}
		}
		pos := s.state.position(ref.Aggregate())
		s.mu.RUnlock()
		switch {
		case !exists:
			return RequestResult{}, Errorf(ENOTFOUND, "resource %s does not exist", ref.Name)
		case len(defined) == 0:
			return RequestResult{}, FieldErrorf(EINVALID, "action", "no backend of type %s defines %q (backends of the type: %s)",
				typ, action, listOrNone(backends))
		}
		return s.request(ctx, p, ref.Aggregate(), pos, &events.ResourceActionRequested{Type: typ, Name: name, Action: action})
	})
}

// SyncServer asks for a full regeneration of server: a save of every
// resource routed to it, of backend only when backend is not "".
func (s *Service) SyncServer(ctx context.Context, p Principal, server, backend string) (RequestResult, error) {
	if err := canRequest(p, "syncing a server"); err != nil {
		return RequestResult{}, err
	}
	ref := Ref{Kind: KindServer, Name: server}
	return serialized(ctx, s, func() (RequestResult, error) {
		s.mu.RLock()
		_, exists := s.state.servers[server]
		var routed []string
		for _, rt := range s.state.routes {
			if rt.value.Server == server && rt.value.Active {
				routed = append(routed, rt.value.Backend)
			}
		}
		pos := s.state.position(ref.Aggregate())
		s.mu.RUnlock()
		switch {
		case !exists:
			return RequestResult{}, Errorf(ENOTFOUND, "server %s does not exist", server)
		case backend != "" && !slices.Contains(routed, backend):
			return RequestResult{}, FieldErrorf(EINVALID, "backend", "backend %q has no active route to server %s (backends actively routed there: %s)",
				backend, server, listOrNone(routed))
		case len(routed) == 0:
			return RequestResult{}, Errorf(EINVALID, "no backend has an active route to server %s: there is nothing to sync", server)
		}
		return s.request(ctx, p, ref.Aggregate(), pos, &events.ServerSyncRequested{Server: server, Backend: backend})
	})
}

// RetryResult is what a retry asked for and what it left out.
type RetryResult struct {
	RequestResult
	Retried []events.OperationRef `json:"retried"`
	Skipped []SkippedOperation    `json:"skipped"`
}

// SkippedOperation is an operation a retry left out, and why.
type SkippedOperation struct {
	Operation events.OperationRef `json:"operation"`
	Reason    string              `json:"reason"`
}

// Retry asks for the operations of a logged script once more: those whose
// resource still exists, with its current state, routed afresh. Deletes and
// operations on deleted resources, or of backends that are gone or no longer
// define the action, are listed as skipped.
func (s *Service) Retry(ctx context.Context, p Principal, script uuid.UUID, ops []events.OperationRef) (RetryResult, error) {
	if err := canRequest(p, "retrying a script"); err != nil {
		return RetryResult{}, err
	}
	agg := events.Aggregate{Type: events.AggScript, ID: script.String()}
	return serialized(ctx, s, func() (RetryResult, error) {
		res := RetryResult{Retried: []events.OperationRef{}, Skipped: []SkippedOperation{}}
		s.mu.RLock()
		for _, op := range ops {
			if reason := s.state.unretryable(op); reason != "" {
				res.Skipped = append(res.Skipped, SkippedOperation{Operation: op, Reason: reason})
			} else {
				res.Retried = append(res.Retried, op)
			}
		}
		pos := s.state.position(agg)
		seq := s.state.Seq()
		s.mu.RUnlock()
		if len(res.Retried) == 0 {
			res.Sequence = seq
			return res, nil
		}
		var err error
		res.RequestResult, err = s.request(ctx, p, agg, pos, &events.ScriptRetryRequested{Script: script, Operations: res.Retried})
		return res, err
	})
}

// unretryable says why op cannot be planned again, "" when it can.
func (s *State) unretryable(op events.OperationRef) string {
	ref := ResourceName(op.Type, op.Name)
	b, ok := s.backends[op.Backend]
	switch _, exists := s.resources[ref]; {
	case op.Action == "delete":
		return "a delete is not retried: the resource " + ref + " is gone from the model"
	case !exists:
		return "resource " + ref + " no longer exists"
	case !ok:
		return "backend " + op.Backend + " no longer exists"
	case b.value.Type != op.Type:
		return fmt.Sprintf("backend %s serves %s now, not %s", op.Backend, b.value.Type, op.Type)
	}
	if _, ok := b.value.Actions[op.Action]; !ok {
		return fmt.Sprintf("backend %s no longer defines %q", op.Backend, op.Action)
	}
	return ""
}

// request appends a one-event unit for agg, expected at pos.
func (s *Service) request(ctx context.Context, p Principal, agg events.Aggregate, pos uint64, ev events.Payload) (RequestResult, error) {
	unit, at, err := s.commitOne(ctx, p, agg, pos, ev)
	if err != nil {
		return RequestResult{}, err
	}
	return RequestResult{Unit: unit.String(), Sequence: at.Last}, nil
}

func canRequest(p Principal, what string) error {
	if !p.Can(RoleOperator) {
		return Errorf(EFORBIDDEN, "%s needs the operator role; this token (%s) is %s", what, p.Name, p.Role)
	}
	return nil
}

func listOrNone(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	slices.Sort(names)
	return strings.Join(slices.Compact(names), ", ")
}
