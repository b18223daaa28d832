package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/orchestra-fleet/orchestra/projections"
	"github.com/orchestra-fleet/orchestra/services"
)

// Requests ask the planner for work without changing the model. Each
// prints the unit of work it appended; -o json prints the API's answer.

func newActionCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "action TYPE NAME ACTION",
		Short: "Run a custom action on a resource (every backend of its type that defines it)",
		Example: `  orchestra action website shop reload
  orchestra action mailbox alice rebuild-index -o json`,
		Args: cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := "/v1/resources/" + url.PathEscape(args[0]) + "/" + url.PathEscape(args[1]) + "/actions/" + url.PathEscape(args[2])
			return request(cmd, output, path, nil, func(w io.Writer, res services.RetryResult) {
				fmt.Fprintf(w, "%s on %s/%s requested: unit %s at sequence %d\n", args[2], args[0], args[1], res.Unit, res.Sequence)
			})
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}

func newSyncCommand() *cobra.Command {
	var output, backend string
	cmd := &cobra.Command{
		Use:   "sync SERVER",
		Short: "Regenerate a server: save every resource routed to it, as one unit of work",
		Example: `  orchestra sync web1
  orchestra sync web1 --backend nginx`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var body any
			if backend != "" {
				body = map[string]string{"backend": backend}
			}
			return request(cmd, output, "/v1/servers/"+url.PathEscape(args[0])+"/sync", body, func(w io.Writer, res services.RetryResult) {
				fmt.Fprintf(w, "sync of %s requested: unit %s at sequence %d\n", args[0], res.Unit, res.Sequence)
			})
		},
	}
	cmd.Flags().StringVar(&backend, "backend", "", "sync only this backend's resources")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}

func newScriptsCommand() *cobra.Command {
	var f scriptFlags
	cmd := &cobra.Command{
		Use:   "scripts",
		Short: "List script logs, newest first (filters: --server, --state, …); show or retry one",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return scriptsList(cmd, f) },
	}
	f.register(cmd)
	var output string
	retry := &cobra.Command{
		Use:   "retry ID",
		Short: "Plan a script's operations again, with current state and routes",
		Long: "Plans the operations the planner recorded for the script once more, as a new unit of work: each with its\n" +
			"resource's current state, routed afresh. Deletes, and operations whose resource or backend is gone, are\n" +
			"listed and skipped.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return request(cmd, output, "/v1/scripts/"+url.PathEscape(args[0])+"/retry", nil, func(w io.Writer, res services.RetryResult) {
				for _, op := range res.Retried {
					fmt.Fprintf(w, "retry    %s %s/%s (%s)\n", op.Action, op.Type, op.Name, op.Backend)
				}
				for _, s := range res.Skipped {
					fmt.Fprintf(w, "skipped  %s %s/%s (%s): %s\n", s.Operation.Action, s.Operation.Type, s.Operation.Name, s.Operation.Backend, s.Reason)
				}
				if res.Unit == "" {
					fmt.Fprintln(w, "nothing left to retry")
					return
				}
				fmt.Fprintf(w, "unit %s at sequence %d\n", res.Unit, res.Sequence)
			})
		},
	}
	retry.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	cmd.AddCommand(retry, newScriptShowCommand())
	return cmd
}

func newScriptShowCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "show ID",
		Short: "Show a script's log: where and how it ran, the script (secrets masked) and its output",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var l projections.ScriptLog
			return showDocument(cmd, output, "/v1/scripts/"+url.PathEscape(args[0]), &l, func(w io.Writer) error {
				printScriptLog(w, l)
				return nil
			})
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table (text), json or yaml")
	return cmd
}

// printScriptLog prints a script's log for a person.
func printScriptLog(w io.Writer, l projections.ScriptLog) {
	state := l.State
	if l.ExitCode != nil && *l.ExitCode >= 0 && l.Finished != nil {
		state += fmt.Sprintf(" (exit %d)", *l.ExitCode)
	}
	fmt.Fprintf(w, "script    %s\nunit      %s\nserver    %s\nbackend   %s\nstate     %s\n", l.ID, l.Unit, l.Server, l.Backend, state)
	if l.Reason != "" {
		fmt.Fprintf(w, "reason    %s\n", l.Reason)
	}
	if l.Attempt > 0 {
		fmt.Fprintf(w, "attempt   %d by %s\n", l.Attempt, l.Executor)
	}
	if l.Started != nil {
		line := l.Started.Format(time.RFC3339)
		if l.Finished != nil {
			line += fmt.Sprintf(", ran %s", l.Finished.Sub(*l.Started).Round(time.Millisecond))
		}
		fmt.Fprintf(w, "started   %s\n", line)
	}
	for _, op := range l.Operations {
		fmt.Fprintf(w, "operation %s %s/%s\n", op.Action, op.Type, op.Name)
	}
	section := func(name, text string, size int64) {
		if text == "" && size == 0 {
			return
		}
		header := "--- " + name
		if size > int64(len(text)) {
			header += fmt.Sprintf(" (last %d of %d bytes)", len(text), size)
		}
		fmt.Fprintln(w, header)
		fmt.Fprint(w, text)
		if !strings.HasSuffix(text, "\n") {
			fmt.Fprintln(w)
		}
	}
	section("script", l.Script, 0)
	section("stdout", l.Stdout, l.StdoutBytes)
	section("stderr", l.Stderr, l.StderrBytes)
	if l.Object != "" {
		fmt.Fprintf(w, "whole output: objects %s/stdout and %s/stderr of bucket orchestra-output\n", l.Object, l.Object)
	}
}

// request POSTs body to path and prints the answer: as JSON, or with text.
// Every request answers a superset of the fields of a RetryResult's
// request part, so one type reads them all.
func request(cmd *cobra.Command, output, path string, body any, text func(io.Writer, services.RetryResult)) error {
	if output != "text" && output != "json" {
		return usageError{fmt.Errorf("-o %q: use text or json", output)}
	}
	c, err := newClient()
	if err != nil {
		return err
	}
	var raw json.RawMessage
	if err := c.do(cmd.Context(), "POST", path, body, &raw); err != nil {
		return err
	}
	if output == "json" {
		return printJSON(cmd.OutOrStdout(), raw)
	}
	var res services.RetryResult
	if err := json.Unmarshal(raw, &res); err != nil {
		return fmt.Errorf("POST %s: the answer is not the JSON expected: %w", path, err)
	}
	text(cmd.OutOrStdout(), res)
	return nil
}
