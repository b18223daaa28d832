package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"
)

// kindInfo is how the CLI names and shows one kind.
type kindInfo struct {
	kind    string   // as in apply files
	path    string   // API collection
	columns []string // table header
	row     func(doc map[string]any) []string
}

var kindInfos = []kindInfo{
	{"Server", "/v1/servers", []string{"NAME", "ADDRESS", "PORT", "USER", "METHOD", "ACTIVE", "LABELS", "VERSION"},
		func(d map[string]any) []string {
			return []string{str(d["name"]), str(d["address"]), str(d["port"]), str(d["user"]), str(d["method"]), str(d["active"]), labels(d["labels"]), str(d["version"])}
		}},
	{"Backend", "/v1/backends", []string{"NAME", "TYPE", "ACTIONS", "EXECUTABLE", "TIMEOUT", "VERSION"},
		func(d map[string]any) []string {
			return []string{str(d["name"]), str(d["type"]), keys(d["actions"]), str(d["executable"]), str(d["timeout"]), str(d["version"])}
		}},
	{"Route", "/v1/routes", []string{"NAME", "MATCH", "ASYNC", "ACTIVE", "VERSION"},
		func(d map[string]any) []string {
			return []string{str(d["backend"]) + "@" + str(d["server"]), orTrue(d["match"]), str(d["async"]), str(d["active"]), str(d["version"])}
		}},
	{"Resource", "/v1/resources", []string{"TYPE", "NAME", "ATTRS", "SECRETS", "LABELS", "VERSION"},
		func(d map[string]any) []string {
			attrs, _ := json.Marshal(d["attrs"])
			return []string{str(d["type"]), str(d["name"]), clip(string(attrs), 60), keys(d["secrets"]), labels(d["labels"]), str(d["version"])}
		}},
	{"Site", "/v1/sites", []string{"NAME", "SERVICES", "UPDATE", "NOTIFY", "VERSION"},
		func(d map[string]any) []string {
			var names []string
			svcs, _ := d["services"].([]any)
			for _, s := range svcs {
				if m, ok := s.(map[string]any); ok {
					names = append(names, str(m["name"])+"@"+str(m["rank"]))
				}
			}
			notify, _ := d["notify"].([]any)
			update, _ := d["update"].(map[string]any)
			return []string{str(d["name"]), clip(strings.Join(names, ","), 60), str(update["strategy"]), fmt.Sprint(len(notify)), str(d["version"])}
		}},
	{"Token", "/v1/tokens", []string{"NAME", "ROLE", "CREATED BY", "CREATED", "VERSION"},
		func(d map[string]any) []string {
			return []string{str(d["name"]), str(d["role"]), str(d["created_by"]), str(d["created"]), str(d["version"])}
		}},
}

// lookupKind accepts a kind in any case, singular or plural.
func lookupKind(s string) (kindInfo, error) {
	want := strings.TrimSuffix(strings.ToLower(s), "s")
	var names []string
	for _, k := range kindInfos {
		if strings.ToLower(k.kind) == want {
			return k, nil
		}
		names = append(names, strings.ToLower(k.kind)+"s")
	}
	return kindInfo{}, usageError{fmt.Errorf("%q is not a kind; use one of %s", s, strings.Join(names, ", "))}
}

func checkOutput(o string) error {
	if o != "table" && o != "json" && o != "yaml" {
		return usageError{fmt.Errorf("-o: %q, want table, json or yaml", o)}
	}
	return nil
}

// objectPath is the API path of one object. A resource is TYPE/NAME.
func objectPath(k kindInfo, name string) (string, error) {
	if k.kind == "Resource" {
		typ, n, ok := strings.Cut(name, "/")
		if !ok || typ == "" || n == "" {
			return "", usageError{fmt.Errorf("a resource is named TYPE/NAME, e.g. website/shop; got %q", name)}
		}
		return k.path + "/" + url.PathEscape(typ) + "/" + url.PathEscape(n), nil
	}
	return k.path + "/" + url.PathEscape(name), nil
}

func newGetCommand() *cobra.Command {
	var output, typ string
	cmd := &cobra.Command{
		Use:   "get KIND [NAME]",
		Short: "Show servers, backends, routes, resources, sites or tokens",
		Long: "Show one object or a list. KIND is servers, backends, routes, resources, sites or tokens.\n" +
			"A resource is named TYPE/NAME; `get resources TYPE` lists one type.\n" +
			"-o json prints the API's documents (a list prints a JSON array); -o yaml prints documents `orchestra apply` takes back.",
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			k, err := lookupKind(args[0])
			if err != nil {
				return err
			}
			if k.kind == "Resource" && len(args) == 2 && !strings.Contains(args[1], "/") {
				typ, args = args[1], args[:1]
			}
			c, err := newClient()
			if err != nil {
				return err
			}
			var docs []json.RawMessage
			if len(args) == 2 {
				p, err := objectPath(k, args[1])
				if err != nil {
					return err
				}
				var doc json.RawMessage
				if err := c.do(cmd.Context(), "GET", p, nil, &doc); err != nil {
					return err
				}
				if output == "json" {
					return printJSON(cmd.OutOrStdout(), doc)
				}
				docs = []json.RawMessage{doc}
			} else {
				p := k.path
				if typ != "" {
					p += "?type=" + url.QueryEscape(typ)
				}
				if docs, err = c.listAll(cmd.Context(), p); err != nil {
					return err
				}
				if output == "json" {
					return printJSON(cmd.OutOrStdout(), docs)
				}
			}
			if output == "yaml" {
				return printYAMLDocs(cmd.OutOrStdout(), docs)
			}
			return printTable(cmd.OutOrStdout(), k, docs)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table, json or yaml")
	cmd.Flags().StringVar(&typ, "type", "", "only resources of this type")
	return cmd
}

func newDeleteCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "delete KIND NAME",
		Short: "Delete one object (a resource is TYPE/NAME; a route BACKEND@SERVER)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			k, err := lookupKind(args[0])
			if err != nil {
				return err
			}
			if k.kind == "Token" {
				return usageError{errors.New("tokens are revoked: orchestra token revoke NAME")}
			}
			p, err := objectPath(k, args[1])
			if err != nil {
				return err
			}
			c, err := newClient()
			if err != nil {
				return err
			}
			var res struct {
				Sequence uint64 `json:"sequence"`
			}
			if err := c.do(cmd.Context(), "DELETE", p, nil, &res); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s deleted (sequence %d)\n", k.kind, args[1], res.Sequence)
			return nil
		},
	}
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printData prints v as JSON or YAML.
func printData(w io.Writer, format string, v any) error {
	if format == "json" {
		return printJSON(w, v)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return printYAMLDocs(w, []json.RawMessage{b})
}

// printYAMLDocs prints JSON documents as a multi-document YAML stream, keys
// in the order the API gave them.
func printYAMLDocs(w io.Writer, docs []json.RawMessage) error {
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	for _, d := range docs {
		var node yaml.Node
		// JSON is YAML: parsing it keeps the key order of the document.
		if err := yaml.Unmarshal(d, &node); err != nil {
			return err
		}
		unflow(&node)
		if err := enc.Encode(&node); err != nil {
			return err
		}
	}
	return enc.Close()
}

// unflow turns JSON's flow style into YAML's block style.
func unflow(n *yaml.Node) {
	n.Style &^= yaml.FlowStyle
	if n.Kind == yaml.ScalarNode && n.Style&yaml.DoubleQuotedStyle != 0 && n.Tag == "!!str" && !strings.ContainsAny(n.Value, "\n") {
		n.Style &^= yaml.DoubleQuotedStyle
	}
	if n.Kind == yaml.ScalarNode && strings.Contains(n.Value, "\n") {
		n.Style = yaml.LiteralStyle
	}
	for _, c := range n.Content {
		unflow(c)
	}
}

func printTable(w io.Writer, k kindInfo, docs []json.RawMessage) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(k.columns, "\t"))
	for _, d := range docs {
		var m map[string]any
		if err := json.Unmarshal(d, &m); err != nil {
			return err
		}
		fmt.Fprintln(tw, strings.Join(k.row(m), "\t"))
	}
	return tw.Flush()
}

func str(v any) string {
	switch v := v.(type) {
	case nil:
		return ""
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	case string:
		return v
	}
	return fmt.Sprint(v)
}

func orTrue(v any) string {
	if s := str(v); s != "" {
		return s
	}
	return "(default)"
}

func keys(v any) string {
	m, _ := v.(map[string]any)
	return strings.Join(slices.Sorted(maps.Keys(m)), ",")
}

func labels(v any) string {
	m, _ := v.(map[string]any)
	var out []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, k+"="+str(m[k]))
	}
	return strings.Join(out, ",")
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}
