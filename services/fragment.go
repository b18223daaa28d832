package services

import (
	"encoding/json"
	"fmt"
	"regexp"
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
	if err := boundedRanges(t.Root, false); err != nil {
		return nil, fmt.Errorf("%s:%d: %w", name, strings.Count(src[:min(int(err.pos), len(src))], "\n")+1, err)
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
	"shq":    ShellQuote,
	"raw":    func(v any) string { return plainString(v) },
	"printf": boundedPrintf,
}

// rangeError is a range a fragment may not have.
type rangeError struct {
	pos parse.Pos
	why string
}

func (e *rangeError) Error() string { return e.why }

// boundedRanges refuses what would let a render run for ever on small
// input: a range over anything but a value of the data (a number or a
// function's result), and a range inside a range. A render then takes time
// in proportion to the data and the fragment.
func boundedRanges(n parse.Node, inRange bool) *rangeError {
	switch n := n.(type) {
	case *parse.ListNode:
		if n == nil {
			return nil
		}
		for _, c := range n.Nodes {
			if err := boundedRanges(c, inRange); err != nil {
				return err
			}
		}
	case *parse.IfNode:
		return boundedBranch(&n.BranchNode, inRange)
	case *parse.WithNode:
		return boundedBranch(&n.BranchNode, inRange)
	case *parse.RangeNode:
		if inRange {
			return &rangeError{n.Pos, "a range inside a range is not allowed in a fragment"}
		}
		if len(n.Pipe.Cmds) != 1 || len(n.Pipe.Cmds[0].Args) != 1 {
			return &rangeError{n.Pos, "range may go only over a value of the data, such as .attrs.aliases"}
		}
		switch n.Pipe.Cmds[0].Args[0].(type) {
		case *parse.FieldNode, *parse.VariableNode, *parse.ChainNode, *parse.DotNode:
		default:
			return &rangeError{n.Pos, "range may go only over a value of the data, such as .attrs.aliases"}
		}
		return boundedBranch(&n.BranchNode, true)
	}
	return nil
}

func boundedBranch(b *parse.BranchNode, inRange bool) *rangeError {
	if err := boundedRanges(b.List, inRange); err != nil {
		return err
	}
	return boundedRanges(b.ElseList, inRange)
}

// wideVerb finds a printf verb with a width or precision of four digits or
// more, or one taken from an argument (*).
var wideVerb = regexp.MustCompile(`%[-+# 0-9.\[\]]*?(\d{4,}|\*)`)

// boundedPrintf is printf without the widths that would make one call
// write gigabytes.
func boundedPrintf(format string, args ...any) (string, error) {
	if wideVerb.MatchString(format) {
		return "", fmt.Errorf("printf %q: widths and precisions above 999, and *, are not allowed", format)
	}
	return fmt.Sprintf(format, args...), nil
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
