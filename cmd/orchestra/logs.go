package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/gateway"
	"github.com/orchestra-fleet/orchestra/infra/fleetdir"
	"github.com/orchestra-fleet/orchestra/projections"
)

// scriptsList is `orchestra scripts`: the newest script logs, filtered.
func scriptsList(cmd *cobra.Command, f scriptFlags) error {
	if f.limit < 1 || f.limit > gateway.MaxPageSize {
		return usageError{fmt.Errorf("--limit: %d, want 1 to %d", f.limit, gateway.MaxPageSize)}
	}
	q := url.Values{"limit": {strconv.Itoa(f.limit)}}
	for k, v := range map[string]string{"server": f.server, "backend": f.backend, "state": f.state, "unit": f.unit,
		"resource": f.resource, "since": f.since, "until": f.until} {
		if v != "" {
			q.Set(k, v)
		}
	}
	var items []projections.ScriptEntry
	return getAndPrint(cmd, f.output, "/v1/scripts?"+q.Encode(), &items, func(tw io.Writer) {
		fmt.Fprintln(tw, "ID\tSERVER\tBACKEND\tSTATE\tEXIT\tATTEMPT\tCREATED\tTOOK\tOPERATIONS")
		for _, e := range items {
			exit, took := "", ""
			if e.ExitCode != nil {
				exit = strconv.Itoa(*e.ExitCode)
			}
			if e.Started != nil && e.Finished != nil {
				took = e.Finished.Sub(*e.Started).Round(time.Millisecond).String()
			}
			ops := make([]string, len(e.Operations))
			for i, op := range e.Operations {
				ops[i] = op.Action + " " + op.Type + "/" + op.Name
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", e.ID, e.Server, e.Backend, e.State, exit, e.Attempt,
				e.Created.Local().Format(time.DateTime), took, clip(strings.Join(ops, ", "), 60))
		}
	})
}

// scriptFlags are the filters of `orchestra scripts`.
type scriptFlags struct {
	server, backend, state, unit, resource, since, until, output string
	limit                                                        int
}

func (f *scriptFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.server, "server", "", "only scripts run on this server")
	fl.StringVar(&f.backend, "backend", "", "only scripts of this backend")
	fl.StringVar(&f.state, "state", "", "only scripts in this state (SUCCESS, FAILURE, TIMEOUT, ERROR, …)")
	fl.StringVar(&f.unit, "unit", "", "only scripts of this unit of work")
	fl.StringVar(&f.resource, "resource", "", "only scripts that carried an operation on TYPE or TYPE/NAME")
	fl.StringVar(&f.since, "since", "", "only scripts created since: a time (RFC 3339) or a duration back from now (90m)")
	fl.StringVar(&f.until, "until", "", "only scripts created before: a time (RFC 3339) or a duration back from now")
	fl.IntVar(&f.limit, "limit", 50, "how many scripts, newest first")
	fl.StringVarP(&f.output, "output", "o", "table", "table, json or yaml")
}

func newUnitsCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "units", Short: "Show units of work: what a change planned, dropped, and what became of its scripts"}
	var output string
	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show a unit of work's roll-up",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var u projections.UnitLog
			return showDocument(cmd, output, "/v1/units/"+url.PathEscape(args[0]), &u, func(w io.Writer) error {
				fmt.Fprintf(w, "unit        %s\nplanned     %s (events up to %d)\noperations  %d\n", u.Unit, u.Planned.Local().Format(time.DateTime), u.Sequence, u.Operations)
				fmt.Fprintf(w, "scripts     %d queued, %d running, %d succeeded, %d failed\n", u.Counts.Queued, u.Counts.Running, u.Counts.Succeeded, u.Counts.Failed)
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				if len(u.Scripts) > 0 {
					fmt.Fprintln(tw, "SCRIPT\tSERVER\tBACKEND\tSTATE\tASYNC")
					for _, s := range u.Scripts {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\n", s.ID, s.Server, s.Backend, s.State, s.Async)
					}
				}
				if err := tw.Flush(); err != nil {
					return err
				}
				for _, d := range u.Dropped {
					route := ""
					if d.Route != "" {
						route = " by " + d.Route
					}
					fmt.Fprintf(w, "dropped     %s %s/%s (%s)%s: %s\n", d.Operation.Action, d.Operation.Type, d.Operation.Name, d.Operation.Backend, route, d.Reason)
				}
				return nil
			})
		},
	}
	show.Flags().StringVarP(&output, "output", "o", "table", "table (text), json or yaml")
	cmd.AddCommand(show)
	return cmd
}

// logsFlags are the flags of `orchestra logs`.
type logsFlags struct {
	follow       bool
	server, unit string
	since        string
	color        bool
}

func newLogsCommand() *cobra.Command {
	var f logsFlags
	cmd := &cobra.Command{
		Use:   "logs [SERVICE…]",
		Short: "Show scripts' output across servers, each line prefixed with its server and backend; -f follows it live",
		Long: "Prints the output of scripts as they ran, from --since on, each line prefixed with the server and the backend\n" +
			"(coloured per server on a terminal; NO_COLOR turns colours off), with a line where each script started and ended.\n" +
			"With -f it follows live and reconnects, without losing or repeating a line, when the connection drops.\n" +
			"In a fleet folder it shows the services' processes' output instead: every instance's lines interleaved,\n" +
			"each prefixed with its service and instance (of the SERVICEs given, or all).",
		RunE: func(cmd *cobra.Command, args []string) error {
			color := isTerminal(cmd.OutOrStdout()) && os.Getenv("NO_COLOR") == ""
			if inFleet() {
				return fleetLogs(cmd.Context(), cmd.OutOrStdout(), args, f.follow, color)
			}
			if len(args) > 0 {
				return usageError{fmt.Errorf("logs takes services only in a fleet folder (one with %s); here use --server or --unit", fleetdir.ConfigFile)}
			}
			if f.unit != "" {
				if _, err := uuid.Parse(f.unit); err != nil {
					return usageError{fmt.Errorf("--unit: %q is not a unit id", f.unit)}
				}
			}
			f.color = color
			return followLogs(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), f)
		},
	}
	fl := cmd.Flags()
	fl.BoolVarP(&f.follow, "follow", "f", false, "follow the output live")
	fl.StringVar(&f.server, "server", "", "only scripts on this server")
	fl.StringVar(&f.unit, "unit", "", "only scripts of this unit of work")
	fl.StringVar(&f.since, "since", "10m", "start with output from this far back (a duration, or an RFC 3339 time)")
	return cmd
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// reconnectWait is how long `logs -f` waits before it reconnects.
const reconnectWait = time.Second

// followLogs reads GET /v1/stream and prints it; with f.follow it
// reconnects after the last event it printed until ctx ends.
func followLogs(ctx context.Context, out, errw io.Writer, f logsFlags) error {
	c, err := newClient()
	if err != nil {
		return err
	}
	q := url.Values{"kind": {"ScriptStarted,ScriptOutput,ScriptFinished"}, "follow": {strconv.FormatBool(f.follow)}}
	if f.server != "" {
		q.Set("server", f.server)
	}
	if f.unit != "" {
		q.Set("unit", f.unit)
	}
	if f.since != "" && f.since != "0" && f.since != "0s" {
		// A duration is taken back from now once, here: a reconnect
		// before the first event starts from the same point.
		since := f.since
		if d, err := time.ParseDuration(since); err == nil {
			if d < 0 {
				return usageError{fmt.Errorf("--since: %s is in the future; give a duration back from now, such as 10m", since)}
			}
			since = time.Now().Add(-d).UTC().Format(time.RFC3339Nano)
		}
		q.Set("since", since)
	}
	p := &logPrinter{w: out, color: f.color, partial: map[string]string{}}
	last := ""
	for {
		err := c.stream(ctx, "/v1/stream?"+q.Encode(), last, func(id, event string, data []byte) error {
			if event == "" {
				last = id
				return nil
			}
			if event == "gap" {
				var g gateway.StreamGap
				if json.Unmarshal(data, &g) == nil {
					fmt.Fprintf(errw, "orchestra logs: results %d to %d expired before they could be shown\n", g.From, g.To)
				}
				return nil
			}
			var ev struct {
				gateway.StreamEvent
				Result json.RawMessage `json:"result"`
			}
			if err := json.Unmarshal(data, &ev); err != nil {
				return fmt.Errorf("event %s: %w", id, err)
			}
			last = id
			return p.print(ev.StreamEvent, ev.Result)
		})
		// A refusal is final; an Orchestra that is starting or busy (5xx,
		// 429) or unreachable is waited for.
		var apiErr *apiError
		refused := errors.As(err, &apiErr) && apiErr.Status < 500 && apiErr.Status != http.StatusTooManyRequests
		if !f.follow || ctx.Err() != nil || refused {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if err != nil {
			fmt.Fprintf(errw, "orchestra logs: %v; reconnecting\n", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(reconnectWait):
		}
	}
}

// stream reads the Server-Sent Events of path, resuming after lastID when
// it is not empty, and calls fn with each, until the stream ends.
func (c *client) stream(ctx context.Context, path, lastID string, fn func(id, event string, data []byte) error) error {
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "text/event-stream")
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := (&http.Client{}).Do(req) // no timeout: a stream lasts
	if err != nil {
		return fmt.Errorf("cannot reach Orchestra at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return problemOf(resp.StatusCode, data)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 8<<20)
	var id, event string
	var data []byte
	for sc.Scan() {
		line := sc.Bytes()
		switch {
		case len(line) == 0:
			// A block with only an id is a position: where the stream
			// starts, to resume from.
			if event != "" || id != "" {
				if err := fn(id, event, data); err != nil {
					return err
				}
			}
			id, event, data = "", "", nil
		case line[0] == ':': // a comment: keep-alive
		default:
			field, value, _ := strings.Cut(string(line), ":")
			value = strings.TrimPrefix(value, " ")
			switch field {
			case "id":
				id = value
			case "event":
				event = value
			case "data":
				data = append(data, value...)
			}
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}

// logPrinter prints script output line by line, each prefixed with its
// server and backend; a line split over chunks is printed once whole.
type logPrinter struct {
	w       io.Writer
	color   bool
	partial map[string]string // script id and stream → the start of a line
}

// palette colours servers on a terminal.
var palette = []string{"\x1b[36m", "\x1b[33m", "\x1b[32m", "\x1b[35m", "\x1b[34m", "\x1b[91m", "\x1b[96m", "\x1b[93m"}

func (p *logPrinter) prefix(server, backend string) string {
	return colored(p.color, server, server+" "+backend+" |")
}

// colored paints text in key's colour, always the same for one key, when
// color is on.
func colored(color bool, key, text string) string {
	if !color {
		return text
	}
	h := fnv.New32a()
	h.Write([]byte(key))
	return palette[h.Sum32()%uint32(len(palette))] + text + "\x1b[0m"
}

func (p *logPrinter) print(ev gateway.StreamEvent, result json.RawMessage) error {
	pre := p.prefix(ev.Server, ev.Backend)
	switch ev.Kind {
	case "ScriptStarted":
		var r events.ScriptStarted
		if err := json.Unmarshal(result, &r); err != nil {
			return err
		}
		_, err := fmt.Fprintf(p.w, "%s ── script %s started (attempt %d)\n", pre, r.ID, r.Attempt)
		return err
	case "ScriptOutput":
		var r events.ScriptOutput
		if err := json.Unmarshal(result, &r); err != nil {
			return err
		}
		if r.Truncated {
			_, err := fmt.Fprintf(p.w, "%s ── %s truncated: the whole output is in the output bucket (orchestra scripts show %s)\n", pre, r.Stream, r.ID)
			return err
		}
		key := r.ID.String() + r.Stream
		text := p.partial[key] + string(r.Data)
		lines := strings.SplitAfter(text, "\n")
		p.partial[key] = lines[len(lines)-1]
		for _, l := range lines[:len(lines)-1] {
			if _, err := fmt.Fprintf(p.w, "%s %s", pre, l); err != nil {
				return err
			}
		}
		return nil
	case "ScriptFinished":
		var r events.ScriptFinished
		if err := json.Unmarshal(result, &r); err != nil {
			return err
		}
		for _, stream := range []string{events.Stdout, events.Stderr} {
			key := r.ID.String() + stream
			if rest := p.partial[key]; rest != "" {
				if _, err := fmt.Fprintf(p.w, "%s %s\n", pre, rest); err != nil {
					return err
				}
			}
			delete(p.partial, key)
		}
		end := r.State
		if r.ExitCode >= 0 {
			end += fmt.Sprintf(", exit %d", r.ExitCode)
		}
		if r.Reason != "" {
			end += ": " + r.Reason
		}
		_, err := fmt.Fprintf(p.w, "%s ── script %s %s in %s\n", pre, r.ID, end, r.Duration.Round(time.Millisecond))
		return err
	}
	return nil
}

func newStatusCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show what the scripts' results say of each server: reachable, last state, last seen",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var items []projections.ServerStatus
			return getAndPrint(cmd, output, "/v1/server-status", &items, func(tw io.Writer) {
				fmt.Fprintln(tw, "SERVER\tREACHABLE\tLAST STATE\tLAST SEEN\tLAST SCRIPT\tREASON")
				for _, s := range items {
					fmt.Fprintf(tw, "%s\t%v\t%s\t%s\t%s\t%s\n", s.Name, s.Reachable, s.LastState, s.LastSeen.Local().Format(time.DateTime),
						s.LastScript, clip(s.Reason, 60))
				}
			})
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table, json or yaml")
	return cmd
}

func newHistoryCommand() *cobra.Command {
	var output string
	var limit int
	cmd := &cobra.Command{
		Use:   "history TYPE/NAME",
		Short: "Show every operation on a resource, newest first: the script that carried it and its state now, or why it was dropped",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			typ, name, ok := strings.Cut(args[0], "/")
			if !ok || typ == "" || name == "" {
				return usageError{fmt.Errorf("a resource is named TYPE/NAME, e.g. website/shop; got %q", args[0])}
			}
			if limit < 1 || limit > gateway.MaxPageSize {
				return usageError{fmt.Errorf("--limit: %d, want 1 to %d", limit, gateway.MaxPageSize)}
			}
			var items []projections.ResourceOp
			path := "/v1/resources/" + url.PathEscape(typ) + "/" + url.PathEscape(name) + "/history?limit=" + strconv.Itoa(limit)
			return getAndPrint(cmd, output, path, &items, func(tw io.Writer) {
				fmt.Fprintln(tw, "TIME\tACTION\tBACKEND\tSERVER\tSTATE\tSCRIPT\tREASON")
				for _, op := range items {
					script := ""
					if op.Script != uuid.Nil {
						script = op.Script.String()
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", op.Time.Local().Format(time.DateTime), op.Action, op.Backend, op.Server,
						op.State, script, clip(op.Reason, 60))
				}
			})
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table, json or yaml")
	cmd.Flags().IntVar(&limit, "limit", 50, "how many operations, newest first")
	return cmd
}

// showDocument GETs one document at path: with -o json or yaml it prints
// it as it came; as text it decodes it into v and calls text.
func showDocument(cmd *cobra.Command, output, path string, v any, text func(io.Writer) error) error {
	if err := checkOutput(output); err != nil {
		return err
	}
	c, err := newClient()
	if err != nil {
		return err
	}
	var raw json.RawMessage
	if err := c.do(cmd.Context(), "GET", path, nil, &raw); err != nil {
		return err
	}
	if output != "table" {
		return printData(cmd.OutOrStdout(), output, raw)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	return text(cmd.OutOrStdout())
}

// getAndPrint GETs a page at path: with -o json or yaml it prints the
// page's items as they came; as a table it decodes them into items and
// calls table.
func getAndPrint(cmd *cobra.Command, output, path string, items any, table func(io.Writer)) error {
	if err := checkOutput(output); err != nil {
		return err
	}
	c, err := newClient()
	if err != nil {
		return err
	}
	var raw struct {
		Items json.RawMessage `json:"items"`
	}
	if err := c.do(cmd.Context(), "GET", path, nil, &raw); err != nil {
		return err
	}
	if output != "table" {
		if string(raw.Items) == "null" || len(raw.Items) == 0 {
			raw.Items = json.RawMessage("[]")
		}
		return printData(cmd.OutOrStdout(), output, raw.Items)
	}
	if err := json.Unmarshal(raw.Items, items); err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}
