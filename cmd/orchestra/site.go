package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/gateway"
	"github.com/orchestra-fleet/orchestra/projections"
	"github.com/orchestra-fleet/orchestra/services"
)

// pollEvery is how often a run's progress is read.
const pollEvery = 200 * time.Millisecond

func newSiteCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "site start|stop|status|update|restart|run SITE",
		Short: "Run a command on a site's services, in rank order",
		Long: "start runs ranks ascending, stop descending; within a rank every instance at once (in order on one server).\n" +
			"status asks every instance; update follows the site's strategy (stop-all or rolling); restart is stop then start.\n" +
			"`site run SITE COMMAND` runs a custom command on every service that defines it.\n" +
			"The command shows the run's progress and exits 0 when it succeeded, 1 when it did not.\n" +
			"A command while another runs on the site is refused (409), naming the run in progress.",
	}
	for _, c := range []string{events.CommandStart, events.CommandStop, events.CommandStatus, events.CommandUpdate, events.CommandRestart} {
		cmd.AddCommand(siteRunCommand(c))
	}
	cmd.AddCommand(siteRunCommand(events.CommandRun))
	return cmd
}

func siteRunCommand(command string) *cobra.Command {
	var req services.RunRequest
	var output string
	use := command + " SITE"
	args := cobra.ExactArgs(1)
	if command == events.CommandRun {
		use, args = "run SITE COMMAND", cobra.ExactArgs(2)
	}
	cmd := &cobra.Command{
		Use:   use,
		Short: "Run " + command + " on a site",
		Args:  args,
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "table" && output != "json" {
				return usageError{fmt.Errorf("-o: %q, want table or json", output)}
			}
			req.Command = command
			if command == events.CommandRun {
				req.Custom = args[1]
			}
			c, err := newClient()
			if err != nil {
				return err
			}
			return runOnSite(cmd.Context(), c, cmd.OutOrStdout(), args[0], req, output)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&req.Keepgoing, "keepgoing", false, "on a failure go on with the rest, and end FAILED")
	f.StringArrayVar(&req.Services, "service", nil, "only this service (repeat for more); rank order holds")
	f.BoolVar(&req.DryRun, "dry-run", false, "print the steps and run nothing")
	f.StringVarP(&output, "output", "o", "table", "table (a live view) or json (the run at its end)")
	if command == events.CommandRun {
		f.StringVar(&req.Order, "order", services.OrderAsc, "rank order: asc or desc")
	}
	return cmd
}

// runOnSite asks for a command on site and follows the run to its end,
// showing its progress on w (or printing it as JSON at the end); a run
// that does not succeed is an error.
func runOnSite(ctx context.Context, c *client, w io.Writer, site string, req services.RunRequest, output string) error {
	var res services.RunResult
	if err := c.do(ctx, "POST", "/v1/sites/"+url.PathEscape(site)+"/commands", req, &res); err != nil {
		return err
	}
	if req.DryRun {
		if output == "json" {
			return printJSON(w, res)
		}
		printDryRun(w, res)
		return nil
	}
	view := progressView{w: w, tty: output == "table" && isTerminal(w), quiet: output == "json"}
	run, err := followRun(ctx, c, res.Run, view.show)
	if err != nil {
		return err
	}
	if output == "json" {
		if err := printJSON(w, run); err != nil {
			return err
		}
	} else {
		view.summary(run)
	}
	if run.State != events.RunSuccess {
		return fmt.Errorf("run %s ended %s: %s", run.Run, run.State, run.Reason)
	}
	return nil
}

// followRun reads the run until it ends, calling show with each new view.
func followRun(ctx context.Context, c *client, id string, show func(projections.RunView)) (projections.RunView, error) {
	for {
		var v projections.RunView
		if err := c.do(ctx, "GET", "/v1/runs/"+url.PathEscape(id), nil, &v); err != nil {
			return v, err
		}
		show(v)
		if v.Finished != nil {
			return v, nil
		}
		select {
		case <-ctx.Done():
			return v, ctx.Err()
		case <-time.After(pollEvery):
		}
	}
}

func printDryRun(w io.Writer, res services.RunResult) {
	fmt.Fprintf(w, "# %s on site %s: %d phase(s); nothing runs (dry run)\n", res.Command, res.Site, len(res.Phases))
	for i, ph := range res.Phases {
		fmt.Fprintf(w, "\n## phase %d: rank %d %s%s\n", i+1, ph.Rank, ph.Command, batchNote(ph.Group))
		for _, st := range ph.Steps {
			fmt.Fprintf(w, "# %s#%d on %s\n%s", st.Service, st.Index, st.Server, st.Text)
		}
	}
}

func batchNote(group int) string {
	if group == 0 {
		return ""
	}
	return fmt.Sprintf(" (rolling batch %d)", group)
}

// progressView shows a run as it goes: on a terminal the whole view
// redrawn in place, otherwise a line per step that changed.
type progressView struct {
	w     io.Writer
	tty   bool
	quiet bool
	lines int               // lines drawn last, on a terminal
	seen  map[string]string // step → state printed, otherwise
}

func (p *progressView) show(v projections.RunView) {
	switch {
	case p.quiet:
	case p.tty:
		var b strings.Builder
		fmt.Fprintf(&b, "%s %s  run %s  %s\n", v.Site, commandName(v), v.Run, v.State)
		for _, ph := range v.Phases {
			fmt.Fprintf(&b, "  %s %-10s %-9s%s\n", rankLabel(v, ph), ph.Command, ph.State, batchNote(ph.Group))
			for _, st := range ph.Steps {
				fmt.Fprintf(&b, "    %-24s %-16s %-9s %s\n", fmt.Sprintf("%s#%d", st.Service, st.Index), st.Server, st.State, stepTime(st))
			}
		}
		if p.lines > 0 {
			fmt.Fprintf(p.w, "\x1b[%dA\x1b[J", p.lines)
		}
		fmt.Fprint(p.w, b.String())
		p.lines = strings.Count(b.String(), "\n")
	default:
		if p.seen == nil {
			p.seen = map[string]string{}
			fmt.Fprintf(p.w, "run %s: %s on site %s\n", v.Run, commandName(v), v.Site)
		}
		for _, ph := range v.Phases {
			for _, st := range ph.Steps {
				key := st.Script.String()
				if st.State == projections.StatePending || p.seen[key] == st.State {
					continue
				}
				p.seen[key] = st.State
				fmt.Fprintf(p.w, "%s %-10s %s#%d on %s: %s %s\n", rankLabel(v, ph), ph.Command, st.Service, st.Index, st.Server, st.State, stepTime(st))
			}
		}
	}
}

func (p *progressView) summary(v projections.RunView) {
	took := ""
	if v.Finished != nil {
		took = " in " + v.Finished.Sub(v.Requested).Round(time.Millisecond).String()
	}
	fmt.Fprintf(p.w, "%s %s: %s%s — %d succeeded, %d failed, %d not run\n", v.Site, commandName(v), v.State, took, v.Succeeded, v.Failed, v.Revoked)
	if v.Reason != "" && v.State != events.RunSuccess {
		fmt.Fprintf(p.w, "  %s\n", v.Reason)
	}
}

// rankLabel names a phase's rank; a status run asks every rank at once.
func rankLabel(v projections.RunView, ph projections.PhaseView) string {
	if v.Command == events.CommandStatus {
		return "all ranks"
	}
	return fmt.Sprintf("rank %d", ph.Rank)
}

func commandName(v projections.RunView) string {
	if v.Custom != "" {
		return v.Command + " " + v.Custom
	}
	return v.Command
}

func stepTime(st projections.StepView) string {
	switch {
	case st.Started == nil:
		return ""
	case st.Ended == nil:
		return time.Since(*st.Started).Round(100 * time.Millisecond).String()
	}
	return st.Ended.Sub(*st.Started).Round(time.Millisecond).String()
}

func newRunCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "run", Short: "Show, list and cancel site runs"}
	var output string
	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show a run's phases and steps",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var v projections.RunView
			return showDocument(cmd, output, "/v1/runs/"+url.PathEscape(args[0]), &v, func(w io.Writer) error {
				view := progressView{w: w, tty: true}
				view.show(v)
				return nil
			})
		},
	}
	show.Flags().StringVarP(&output, "output", "o", "table", "table, json or yaml")
	var site string
	list := &cobra.Command{
		Use:   "list",
		Short: "List runs, newest last",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := newClient()
			if err != nil {
				return err
			}
			docs, err := c.listAll(cmd.Context(), "/v1/runs?site="+url.QueryEscape(site))
			if err != nil {
				return err
			}
			if output == "json" {
				return printJSON(cmd.OutOrStdout(), docs)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "RUN\tSITE\tCOMMAND\tSTATE\tREQUESTED\tOK\tFAILED\tNOT RUN")
			for _, d := range docs {
				var s projections.RunSummary
				if err := json.Unmarshal(d, &s); err != nil {
					return err
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\n", s.Run, s.Site, s.Command, s.State, s.Requested.Format(time.RFC3339), s.Succeeded, s.Failed, s.Revoked)
			}
			return tw.Flush()
		},
	}
	list.Flags().StringVar(&site, "site", "", "only this site's runs")
	list.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	cancel := &cobra.Command{
		Use:   "cancel ID",
		Short: "Revoke a run's steps not yet started",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient()
			if err != nil {
				return err
			}
			if err := c.do(cmd.Context(), "POST", "/v1/runs/"+url.PathEscape(args[0])+"/cancel", nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "run %s: cancel requested; steps not yet started will be REVOKED\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(show, list, cancel)
	return cmd
}

func newPsCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "ps [SITE]",
		Short: "Show every instance of a site's services (of every site without SITE)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "table" && output != "json" {
				return usageError{fmt.Errorf("-o: %q, want table or json", output)}
			}
			if _, ok := runningUp(); inFleet() && os.Getenv(envURL) == "" && !ok {
				fmt.Fprintln(cmd.OutOrStdout(), "Orchestra does not run for this folder: nothing runs (orchestra start starts it)")
				return nil
			}
			c, err := newClient()
			if err != nil {
				return err
			}
			sites := args
			if len(sites) == 0 {
				docs, err := c.listAll(cmd.Context(), "/v1/sites")
				if err != nil {
					return err
				}
				for _, d := range docs {
					var s struct{ Name string }
					if err := json.Unmarshal(d, &s); err != nil {
						return err
					}
					sites = append(sites, s.Name)
				}
			}
			states := make([]gateway.SiteState, len(sites))
			for i, s := range sites {
				if err := c.do(cmd.Context(), "GET", "/v1/sites/"+url.PathEscape(s)+"/state", nil, &states[i]); err != nil {
					return err
				}
			}
			if output == "json" {
				return printJSON(cmd.OutOrStdout(), states)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SITE\tSERVICE\tINSTANCE\tSERVER\tRANK\tSTATE\tSINCE\tPID\tRESTARTS\tPORT\tLAST\tEXIT")
			for _, st := range states {
				for _, in := range st.Instances {
					since, exit := "", ""
					if !in.Since.IsZero() {
						since = time.Since(in.Since).Round(time.Second).String() + " ago"
					}
					if in.LastCode != nil {
						exit = fmt.Sprint(*in.LastCode)
					}
					pid, restarts, port := "", "", ""
					if in.PID > 0 {
						pid, restarts = strconv.Itoa(in.PID), strconv.Itoa(in.Restarts)
					}
					if in.Port > 0 {
						port = strconv.Itoa(in.Port)
					}
					fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", st.Site, in.Service, in.Index, in.Server, in.Rank, in.State, since, pid, restarts, port, in.Last, exit)
				}
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}
