package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"
)

// maxApplyFile bounds an apply file.
const maxApplyFile = 8 << 20

// document is one document of an apply file: its JSON form, and where it
// starts, for messages.
type document struct {
	JSON json.RawMessage
	Line int
	Kind string
	Name string
}

// parseApplyFile reads a multi-document YAML file into JSON documents. Empty
// documents are skipped; anything else that is not a mapping is refused,
// naming the document and its line.
func parseApplyFile(data []byte) ([]document, error) {
	if len(data) > maxApplyFile {
		return nil, fmt.Errorf("the file is %d bytes; the limit is %d", len(data), maxApplyFile)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var docs []document
	for n := 1; ; n++ {
		var node yaml.Node
		err := dec.Decode(&node)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: %s", n, yamlMessage(err))
		}
		if len(node.Content) == 0 || (node.Content[0].Kind == yaml.ScalarNode && node.Content[0].Tag == "!!null") {
			n--
			continue
		}
		root := node.Content[0]
		if root.Kind != yaml.MappingNode {
			return nil, fmt.Errorf("document %d (line %d): must be a mapping with a kind (Server, Backend, Route, Resource)", n, root.Line)
		}
		var v any
		if err := root.Decode(&v); err != nil {
			return nil, fmt.Errorf("document %d (line %d): %s", n, root.Line, yamlMessage(err))
		}
		b, err := json.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("document %d (line %d): cannot be expressed as JSON (keys must be strings): %v", n, root.Line, err)
		}
		var id struct {
			Kind, Name, Type, Backend, Server string
		}
		_ = json.Unmarshal(b, &id) // best effort, for messages only
		name := id.Name
		switch {
		case id.Kind == "Route":
			name = id.Backend + "@" + id.Server
		case id.Kind == "Resource":
			name = id.Type + "/" + id.Name
		}
		docs = append(docs, document{JSON: b, Line: root.Line, Kind: id.Kind, Name: name})
	}
	if len(docs) == 0 {
		return nil, errors.New("the file holds no documents")
	}
	return docs, nil
}

// yamlMessage drops the package prefix from a YAML error.
func yamlMessage(err error) string {
	var te *yaml.TypeError
	if errors.As(err, &te) && len(te.Errors) > 0 {
		return te.Errors[0]
	}
	msg := err.Error()
	if len(msg) > 6 && msg[:6] == "yaml: " {
		msg = msg[6:]
	}
	return msg
}

var objectIndex = regexp.MustCompile(`^objects\[(\d+)\]\.?`)

// locate rewrites an API error about objects[i] to name the file, the
// document and its line.
func locate(file string, docs []document, err error) error {
	var ae *apiError
	if !errors.As(err, &ae) {
		return err
	}
	m := objectIndex.FindStringSubmatch(ae.Field)
	if m == nil {
		return err
	}
	i, _ := strconv.Atoi(m[1])
	if i >= len(docs) {
		return err
	}
	out := *ae
	out.Field = ae.Field[len(m[0]):]
	return fmt.Errorf("%s:%d: document %d: %w", file, docs[i].Line, i+1, &out)
}

// applyBody is the body of POST /v1/apply and /v1/plan.
type applyBody struct {
	Objects []json.RawMessage `json:"objects"`
}

// readApplyFile reads and parses an apply file (- for standard input).
func readApplyFile(cmd *cobra.Command, file string) ([]document, applyBody, error) {
	if file == "" {
		return nil, applyBody{}, usageError{errors.New("-f: the file is required")}
	}
	var data []byte
	var err error
	if file == "-" {
		data, err = io.ReadAll(io.LimitReader(cmd.InOrStdin(), maxApplyFile+1))
	} else {
		data, err = os.ReadFile(file)
	}
	if err != nil {
		return nil, applyBody{}, err
	}
	docs, err := parseApplyFile(data)
	if err != nil {
		return nil, applyBody{}, fmt.Errorf("%s: %w", file, err)
	}
	var body applyBody
	for _, d := range docs {
		body.Objects = append(body.Objects, d.JSON)
	}
	return docs, body, nil
}

// sendFile posts the objects of an apply file to path and returns the
// answer; with -o json or yaml it prints it too (printed). An error about
// objects[i] names the file, the document and its line.
func sendFile(cmd *cobra.Command, file, output, path string) (raw json.RawMessage, printed bool, err error) {
	if err := checkOutput(output); err != nil {
		return nil, false, err
	}
	docs, body, err := readApplyFile(cmd, file)
	if err != nil {
		return nil, false, err
	}
	c, err := newClient()
	if err != nil {
		return nil, false, err
	}
	if err := c.do(cmd.Context(), "POST", path, body, &raw); err != nil {
		return nil, false, locate(file, docs, err)
	}
	if output != "table" {
		return raw, true, printData(cmd.OutOrStdout(), output, raw)
	}
	return raw, false, nil
}

func newPlanCommand() *cobra.Command {
	var file, output string
	cmd := &cobra.Command{
		Use:   "plan -f FILE",
		Short: "Show what applying a YAML file would run where, running and writing nothing",
		Long: "A dry run of `orchestra apply`: prints `# <backend> on <server>` and each script (secrets masked),\n" +
			"scripts with nothing to do, and operations no route takes.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			raw, printed, err := sendFile(cmd, file, output, "/v1/plan")
			if err != nil || printed {
				return err
			}
			var res struct {
				Plans []struct {
					Server  string `json:"server"`
					Scripts []struct {
						Backend string `json:"backend"`
						Script  string `json:"script"`
						State   string `json:"state"`
						Reason  string `json:"reason"`
					} `json:"scripts"`
				} `json:"plans"`
				Dropped []struct {
					Operation struct{ Backend, Action, Resource string } `json:"operation"`
					Route     string                                     `json:"route"`
					Reason    string                                     `json:"reason"`
				} `json:"dropped"`
			}
			if err := json.Unmarshal(raw, &res); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			for _, p := range res.Plans {
				for _, s := range p.Scripts {
					fmt.Fprintf(w, "# %s on %s\n", s.Backend, p.Server)
					if s.State != "RECEIVED" {
						fmt.Fprintf(w, "# %s: %s\n\n", s.State, s.Reason)
						continue
					}
					fmt.Fprintln(w, s.Script)
				}
			}
			for _, d := range res.Dropped {
				fmt.Fprintf(w, "# dropped: %s %s of %s: %s %s\n", d.Operation.Backend, d.Operation.Action, d.Operation.Resource, d.Route, d.Reason)
			}
			if len(res.Plans) == 0 && len(res.Dropped) == 0 {
				fmt.Fprintln(w, "# nothing to run")
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "YAML file to plan (- for standard input)")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table, json or yaml")
	return cmd
}

func newApplyCommand() *cobra.Command {
	var file, output, wait string
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Save and delete the objects of a YAML file as one unit of work",
		Long: "Apply a multi-document YAML file (kind: Server | Backend | Route | Resource; delete: true removes an object).\n" +
			"The whole file is one unit of work: every change is written, or none is. Use -f - for standard input.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := "/v1/apply"
			if wait != "" {
				path += "?wait=" + url.QueryEscape(wait)
			}
			raw, printed, err := sendFile(cmd, file, output, path)
			if err != nil {
				return err
			}
			var res struct {
				Unit     string `json:"unit"`
				Sequence uint64 `json:"sequence"`
				Objects  []struct {
					Kind    string   `json:"kind"`
					Name    string   `json:"name"`
					Result  string   `json:"result"`
					Version uint64   `json:"version"`
					Changed []string `json:"changed"`
				} `json:"objects"`
				Scripts  []scriptOutcome `json:"scripts"`
				Complete *bool           `json:"complete"`
			}
			if err := json.Unmarshal(raw, &res); err != nil {
				return err
			}
			if !printed {
				w := cmd.OutOrStdout()
				for _, o := range res.Objects {
					fmt.Fprintf(w, "%s %s %s\n", o.Kind, o.Name, o.Result)
				}
				if res.Unit != "" {
					fmt.Fprintf(w, "unit %s committed at sequence %d\n", res.Unit, res.Sequence)
				} else {
					fmt.Fprintln(w, "nothing changed")
				}
				printOutcomes(w, res.Scripts, res.Complete != nil && !*res.Complete)
			}
			return failedScripts(res.Scripts)
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "YAML file to apply (- for standard input)")
	cmd.Flags().StringVar(&wait, "wait", "", "how long to wait for the scripts of synchronous routes (such as 2m; 0s: do not wait); default: the server's --apply-wait")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table, json or yaml")
	return cmd
}

// scriptOutcome is a script as an apply reports it.
type scriptOutcome struct {
	ID       string `json:"id"`
	Server   string `json:"server"`
	Backend  string `json:"backend"`
	Async    bool   `json:"async"`
	State    string `json:"state"`
	ExitCode *int   `json:"exit_code"`
	Reason   string `json:"reason"`
}

// printOutcomes prints a line per script: where, which backend, how it
// ended (or that it is queued or still running).
func printOutcomes(w io.Writer, scripts []scriptOutcome, cut bool) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, s := range scripts {
		state := s.State
		switch {
		case s.Async && s.State == "RECEIVED":
			state = "queued (async route)"
		case s.State == "RECEIVED" && cut:
			state = "still running when the wait ended"
		case s.ExitCode != nil && *s.ExitCode > 0:
			state += fmt.Sprintf(" (exit %d)", *s.ExitCode)
		}
		if s.Reason != "" {
			state += ": " + s.Reason
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Server, s.Backend, state, s.ID)
	}
	tw.Flush()
}

// failedScripts is an error naming the scripts that did not succeed.
func failedScripts(scripts []scriptOutcome) error {
	var failed []string
	for _, s := range scripts {
		switch s.State {
		case "FAILURE", "TIMEOUT", "ERROR", "ABORTED":
			failed = append(failed, fmt.Sprintf("%s on %s %s", s.Backend, s.Server, s.State))
		}
	}
	if len(failed) == 0 {
		return nil
	}
	return fmt.Errorf("%d script(s) did not succeed: %s (orchestra scripts show ID prints a log)", len(failed), strings.Join(failed, ", "))
}
