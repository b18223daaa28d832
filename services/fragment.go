package services

import (
	"encoding/json"
	"fmt"
	"strings"
	"text/template"
	"text/template/parse"
)

// ParseFragment parses a backend's script fragment (a Go text/template) so
// that every value it inserts is shell-quoted: each {{ … }} that prints
// gets a final "| shq", unless it calls raw, with which the backend author
// takes responsibility for inserting a value unquoted. Template data:
// .name, .type, .attrs, .labels, .secrets, .action and .server (.name,
// .address, .labels). define, template and block are refused: a fragment
// is one script piece.
func ParseFragment(name, src string) (*template.Template, error) {
	if i := strings.IndexByte(src, 0); i >= 0 {
		return nil, fmt.Errorf("byte %d is NUL, which no script can hold", i)
	}
	t, err := template.New(name).Funcs(fragmentFuncs).Option("missingkey=zero").Parse(src)
	if err != nil {
		return nil, fmt.Errorf("%s", strings.TrimPrefix(err.Error(), "template: "))
	}
	if len(t.Templates()) > 1 {
		return nil, fmt.Errorf("define and block are not allowed in a fragment")
	}
	if t.Tree == nil || t.Root == nil {
		return t, nil
	}
	var flat strings.Builder
	var actions []mark
	if err := quoteActions(t.Root, &flat, &actions); err != nil {
		return nil, err
	}
	if i, where := unquotedContext(flat.String()); where != "" {
		line := strings.Count(src[:actions[i].pos], "\n") + 1
		return nil, fmt.Errorf("line %d: %s is %s, where a quoted value is not one word of the script; "+
			"values are inserted already quoted: move it out (or use raw and quote it yourself)", line, actions[i].text, where)
	}
	return t, nil
}

// mark is a quoted action: where it is and how it was written.
type mark struct {
	pos  parse.Pos
	text string
}

// valueMark stands for a quoted value in the flattened script that
// unquotedContext reads; fragments hold no NUL, so it is unambiguous.
const valueMark = '\x00'

// unquotedContext reads a fragment's text with each quoted value marked, as
// the shell would, and reports the first value that is not a word of its
// own: inside '…', "…" or `…`, a comment, or a here-document, where the
// quotes around it would not protect it. It returns the value's index and
// where it is, or "" when every value stands alone.
func unquotedContext(script string) (int, string) {
	const (
		normal = iota
		single
		double
		backtick
		comment
		heredoc
	)
	state, value := normal, 0
	var pending []string // here-document delimiters opened on this line
	var delim, line string
	for i := 0; i < len(script); i++ {
		c := script[i]
		if c == valueMark {
			switch state {
			case single:
				return value, "inside single quotes"
			case double:
				return value, "inside double quotes"
			case backtick:
				return value, "inside backticks"
			case comment:
				return value, "inside a comment"
			case heredoc:
				return value, "inside a here-document"
			}
			value++
			continue
		}
		switch state {
		case normal:
			switch {
			case c == '\\':
				i++
			case c == '\'':
				state = single
			case c == '"':
				state = double
			case c == '`':
				state = backtick
			case c == '#' && (i == 0 || strings.IndexByte(" \t\n;|&(", script[i-1]) >= 0):
				state = comment
			case c == '<' && strings.HasPrefix(script[i:], "<<") && !strings.HasPrefix(script[i:], "<<<"):
				j := i + 2
				for j < len(script) && (script[j] == '-' || script[j] == ' ' || script[j] == '\t') {
					j++
				}
				k := j
				for k < len(script) && strings.IndexByte(" \t\n;|&<>()", script[k]) < 0 {
					k++
				}
				pending = append(pending, strings.Trim(script[j:k], `'"\`))
				i = k - 1
			case c == '\n' && len(pending) > 0:
				state, delim, pending, line = heredoc, pending[0], pending[1:], ""
			}
		case single:
			if c == '\'' {
				state = normal
			}
		case double, backtick:
			switch {
			case c == '\\':
				i++
			case state == double && c == '"', state == backtick && c == '`':
				state = normal
			}
		case comment:
			if c == '\n' {
				state = normal
			}
		case heredoc:
			if c != '\n' {
				line += string(c)
				continue
			}
			if strings.TrimLeft(line, "\t") == delim {
				state = normal
				if len(pending) > 0 {
					state, delim, pending = heredoc, pending[0], pending[1:]
				}
			}
			line = ""
		}
	}
	return 0, ""
}

var fragmentFuncs = template.FuncMap{
	"shq": ShellQuote,
	"raw": func(v any) string { return plainString(v) },
}

// quoteActions walks a template's tree and pipes every printing action
// through shq. It also writes the fragment's text to flat in source order,
// each quoted value as valueMark (a raw one as a plain word), and lists the
// quoted actions.
func quoteActions(n parse.Node, flat *strings.Builder, actions *[]mark) error {
	switch n := n.(type) {
	case *parse.ListNode:
		if n == nil {
			return nil
		}
		for _, c := range n.Nodes {
			if err := quoteActions(c, flat, actions); err != nil {
				return err
			}
		}
	case *parse.TextNode:
		flat.Write(n.Text)
	case *parse.ActionNode:
		if len(n.Pipe.Decl) > 0 {
			return nil
		}
		if callsRaw(n.Pipe) {
			flat.WriteString("raw")
			return nil
		}
		flat.WriteByte(valueMark)
		*actions = append(*actions, mark{n.Pos, n.String()})
		n.Pipe.Cmds = append(n.Pipe.Cmds, &parse.CommandNode{
			NodeType: parse.NodeCommand,
			Pos:      n.Pos,
			Args:     []parse.Node{parse.NewIdentifier("shq").SetPos(n.Pos)},
		})
	case *parse.IfNode:
		return quoteBranch(&n.BranchNode, flat, actions)
	case *parse.RangeNode:
		return quoteBranch(&n.BranchNode, flat, actions)
	case *parse.WithNode:
		return quoteBranch(&n.BranchNode, flat, actions)
	case *parse.TemplateNode:
		return fmt.Errorf("{{template}} at byte %d: calling other templates is not allowed in a fragment", n.Pos)
	}
	return nil
}

func quoteBranch(b *parse.BranchNode, flat *strings.Builder, actions *[]mark) error {
	if err := quoteActions(b.List, flat, actions); err != nil {
		return err
	}
	if b.ElseList != nil {
		return quoteActions(b.ElseList, flat, actions)
	}
	return nil
}

func callsRaw(p *parse.PipeNode) bool {
	for _, c := range p.Cmds {
		if len(c.Args) > 0 {
			if id, ok := c.Args[0].(*parse.IdentifierNode); ok && id.Ident == "raw" {
				return true
			}
		}
	}
	return false
}

// ShellQuote renders v as one shell word that stands for exactly its text:
// single-quoted, with each single quote inside written as
//
//	'\''
//
// Strings stand for themselves; numbers and booleans for their JSON text;
// lists and objects for their JSON; a missing value for the empty word (two
// single quotes).
func ShellQuote(v any) string {
	return "'" + strings.ReplaceAll(plainString(v), "'", `'\''`) + "'"
}

// plainString is the text a template value stands for.
func plainString(v any) string {
	switch v := v.(type) {
	case nil:
		return ""
	case string:
		return v
	case fmt.Stringer:
		return v.String()
	case json.RawMessage:
		var s string
		if json.Unmarshal(v, &s) == nil {
			return s
		}
		return string(v)
	case map[string]any, []any, map[string]string:
		b, err := json.Marshal(v)
		if err != nil {
			return ""
		}
		return string(b)
	}
	return fmt.Sprint(v)
}
