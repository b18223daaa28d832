package gateway

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"

	"github.com/google/uuid"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/projections"
	"github.com/orchestra-fleet/orchestra/services"
)

// PlanRecords finds the planner's record of a script.
type PlanRecords interface {
	// Script returns the planner's record, or an error wrapping
	// projections.ErrNotFound.
	Script(ctx context.Context, id uuid.UUID) (events.ScriptPlanned, error)
}

// Requests ask the planner for work: they answer 202 Accepted with the
// unit of work they appended; the plans follow.

func (a *api) action(w http.ResponseWriter, r *http.Request, p services.Principal) error {
	if err := optionalBody(r, &struct{}{}); err != nil {
		return err
	}
	res, err := a.svc.Action(r.Context(), p, r.PathValue("type"), r.PathValue("name"), r.PathValue("action"))
	if err != nil {
		return err
	}
	writeRequest(w, http.StatusAccepted, res.Sequence, res)
	return nil
}

func (a *api) sync(w http.ResponseWriter, r *http.Request, p services.Principal) error {
	var body struct {
		Backend string `json:"backend"`
	}
	if err := optionalBody(r, &body); err != nil {
		return err
	}
	res, err := a.svc.SyncServer(r.Context(), p, r.PathValue("name"), body.Backend)
	if err != nil {
		return err
	}
	writeRequest(w, http.StatusAccepted, res.Sequence, res)
	return nil
}

// scriptID is the script id in the path.
func scriptID(r *http.Request) (uuid.UUID, error) {
	id, err := uuid.Parse(r.PathValue("id"))
	if err != nil {
		return id, services.FieldErrorf(services.EINVALID, "id", "%q is not a script id (a UUID)", r.PathValue("id"))
	}
	return id, nil
}

// scriptErr is the error of a failed look-up of script id: a 404 naming
// it when it is not there.
func scriptErr(id uuid.UUID, err error) error {
	if errors.Is(err, projections.ErrNotFound) {
		return services.Errorf(services.ENOTFOUND, "script %s does not exist, or its record has expired", id)
	}
	return err
}

func (a *api) retry(w http.ResponseWriter, r *http.Request, p services.Principal) error {
	if err := optionalBody(r, &struct{}{}); err != nil {
		return err
	}
	id, err := scriptID(r)
	if err != nil {
		return err
	}
	rec, err := a.records.Script(r.Context(), id)
	if err != nil {
		return scriptErr(id, err)
	}
	res, err := a.svc.Retry(r.Context(), p, id, rec.Operations)
	if err != nil {
		return err
	}
	status := http.StatusAccepted
	if res.Unit == "" {
		status = http.StatusOK // nothing was left to retry
	}
	writeRequest(w, status, res.Sequence, res)
	return nil
}

// optionalBody decodes a body that may be absent or empty.
func optionalBody(r *http.Request, v any) error {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return err
		}
		return services.Errorf(services.EINVALID, "reading the body: %v", err)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	return services.DecodeJSON(body, v)
}

func writeRequest(w http.ResponseWriter, status int, seq uint64, v any) {
	w.Header().Set(HeaderSequence, strconv.FormatUint(seq, 10))
	writeJSON(w, status, v)
}
