package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/orchestra-fleet/orchestra/gateway"
)

// replayPoll is how often `orchestra replay` asks how far the replay got.
const replayPoll = 200 * time.Millisecond

func newReplayCommand() *cobra.Command {
	var projection string
	cmd := &cobra.Command{
		Use:   "replay",
		Short: "Rebuild read models from sequence 1, with a progress bar; the API answers from the old copy until the new one has caught up",
		Long: "Rebuilds the read models (model: servers, backends, routes, resources, tokens; results: script logs, units,\n" +
			"servers' status, resource history) from the first event the streams hold, into a new file beside the current one.\n" +
			"The API keeps answering from the current copy, which keeps following the log, until the new one has caught up;\n" +
			"then it switches and the old file is removed.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := newClient()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			var started struct {
				Replays []gateway.ReplayStatus `json:"replays"`
			}
			if err := c.do(ctx, "POST", "/v1/replay", map[string]string{"projection": projection}, &started); err != nil {
				return err
			}
			bar := progressBar{w: cmd.ErrOrStderr(), tty: isTerminal(cmd.ErrOrStderr())}
			for {
				var now struct {
					Replays []gateway.ReplayStatus `json:"replays"`
				}
				if err := c.do(ctx, "GET", "/v1/replay", nil, &now); err != nil {
					return err
				}
				done, failed := 0, []string{}
				var current []gateway.ReplayStatus
				for _, want := range started.Replays {
					for _, st := range now.Replays {
						if st.Projection != want.Projection || st.Started.Before(want.Started) {
							continue
						}
						current = append(current, st)
						if st.Finished != nil {
							done++
						}
						if st.Error != "" {
							failed = append(failed, st.Projection+": "+st.Error)
						}
					}
				}
				bar.show(current)
				if len(failed) > 0 {
					return fmt.Errorf("replay failed: %s", strings.Join(failed, "; "))
				}
				if done == len(started.Replays) {
					bar.end()
					for _, st := range current {
						fmt.Fprintf(cmd.OutOrStdout(), "%s: rebuilt to sequence %d in %s\n", st.Projection, st.Seq, st.Finished.Sub(st.Started).Round(time.Millisecond))
					}
					return nil
				}
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(replayPoll):
				}
			}
		},
	}
	cmd.Flags().StringVar(&projection, "projection", "", "rebuild only this read model: model or results (default: both)")
	return cmd
}

// progressBar draws replays' progress: one line redrawn in place on a
// terminal, a line per projection and tenth otherwise.
type progressBar struct {
	w     io.Writer
	tty   bool
	shown map[string]int // projection → tenths printed (not a terminal)
	drawn bool
}

// fraction is how far st has got, from 0 to 1.
func fraction(st gateway.ReplayStatus) float64 {
	if st.Done || st.Target == 0 {
		return 1
	}
	return min(float64(st.Seq)/float64(st.Target), 1)
}

func (b *progressBar) show(sts []gateway.ReplayStatus) {
	if !b.tty {
		if b.shown == nil {
			b.shown = map[string]int{}
		}
		for _, st := range sts {
			frac := fraction(st)
			tenth := int(frac * 10)
			if prev, ok := b.shown[st.Projection]; ok && tenth <= prev {
				continue
			}
			b.shown[st.Projection] = tenth
			fmt.Fprintf(b.w, "replay %s: %3.0f%% (%d of %d)\n", st.Projection, frac*100, st.Seq, st.Target)
		}
		return
	}
	const width = 24
	parts := make([]string, len(sts))
	for i, st := range sts {
		frac := fraction(st)
		n := int(frac * width)
		parts[i] = fmt.Sprintf("%s [%s%s] %3.0f%% %d/%d", st.Projection, strings.Repeat("#", n), strings.Repeat(" ", width-n), frac*100, st.Seq, st.Target)
	}
	fmt.Fprintf(b.w, "\r%s\x1b[K", strings.Join(parts, "  "))
	b.drawn = true
}

func (b *progressBar) end() {
	if b.drawn {
		fmt.Fprintln(b.w)
	}
}
