package gateway

import (
	"net/http"
	"time"

	"github.com/orchestra-fleet/orchestra/services"
)

// Replays rebuild read models from sequence 1 while the API goes on
// answering from the current copy (orchestra replay).
type Replays interface {
	// Start starts a replay of projection ("" for every read model) and
	// returns at once. A replay already running is an ECONFLICT; an
	// unknown projection an EINVALID naming "projection".
	Start(projection string) ([]ReplayStatus, error)
	// Status is the latest replay of each read model.
	Status() []ReplayStatus
}

// ReplayStatus is how far a replay of one read model has got.
type ReplayStatus struct {
	Projection string     `json:"projection"`
	Seq        uint64     `json:"seq"`    // where the new copy is
	Target     uint64     `json:"target"` // where the copy the API reads is
	Started    time.Time  `json:"started"`
	Finished   *time.Time `json:"finished,omitempty"`
	Done       bool       `json:"done"` // the API reads the new copy
	Error      string     `json:"error,omitempty"`
}

func (a *api) startReplay(w http.ResponseWriter, r *http.Request, _ services.Principal) error {
	var req struct {
		Projection string `json:"projection"`
	}
	if err := optionalBody(r, &req); err != nil {
		return err
	}
	st, err := a.replays.Start(req.Projection)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusAccepted, map[string]any{"replays": st})
	return nil
}

func (a *api) replayStatus(w http.ResponseWriter, _ *http.Request, _ services.Principal) error {
	st := a.replays.Status()
	if st == nil {
		st = []ReplayStatus{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"replays": st})
	return nil
}
