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
	if i, why := checkValuePlaces(flat.String()); why != "" {
		if i >= len(actions) { // a branch after the last value
			return nil, fmt.Errorf("a value or {{if}}/{{else}}/{{end}} is %s; values are inserted quoted as one word of a command, so they may stand only where a word of its own is literal", why)
		}
		line := strings.Count(src[:actions[i].pos], "\n") + 1
		return nil, fmt.Errorf("line %d: %s is %s; a value is inserted quoted as one word and may stand only as an argument of a command "+
			"(or the value of an assignment) outside quotes, comments, here-documents and arithmetic: move it there, or use raw and take responsibility", line, actions[i].text, why)
	}
	return t, nil
}

var fragmentFuncs = template.FuncMap{
	"shq": ShellQuote,
	"raw": func(v any) string { return plainString(v) },
}

// mark is a quoted action: where it is and how it was written.
type mark struct {
	pos  parse.Pos
	text string
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
	case *parse.BreakNode, *parse.ContinueNode:
		flat.WriteByte(branchMark)
	case *parse.TemplateNode:
		return fmt.Errorf("{{template}} at byte %d: calling other templates is not allowed in a fragment", n.Pos)
	}
	return nil
}

// quoteBranch walks both branches; a branchMark at each boundary lets the
// scanner check that every way through the template stays in step with the
// shell.
func quoteBranch(b *parse.BranchNode, flat *strings.Builder, actions *[]mark) error {
	flat.WriteByte(branchMark)
	if err := quoteActions(b.List, flat, actions); err != nil {
		return err
	}
	flat.WriteByte(branchMark)
	if b.ElseList != nil {
		if err := quoteActions(b.ElseList, flat, actions); err != nil {
			return err
		}
		flat.WriteByte(branchMark)
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
