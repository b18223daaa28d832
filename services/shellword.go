package services

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// Marks in the flattened text of a fragment that checkValuePlaces reads:
// fragments hold no control characters but tab and newline, so neither
// can be confused with the text.
const (
	valueMark  = '\x00' // a value, inserted shell-quoted
	branchMark = '\x01' // {{if}}, {{range}}, {{with}}, {{else}} or {{end}}
)

// Shell contexts the scanner tracks.
const (
	cxCommand  = iota // commands: top level, ( … ), $( … )
	cxSingle          // '…'
	cxDouble          // "…"
	cxANSI            // $'…'
	cxBacktick        // `…`
	cxArith           // $(( … )), (( … )), $[ … ]
	cxBrace           // ${ … }
	cxCond            // [[ … ]]
)

var cxNames = map[int]string{
	cxSingle: "inside single quotes", cxDouble: "inside double quotes", cxANSI: "inside $'…'",
	cxBacktick: "inside backticks", cxArith: "inside an arithmetic expression, which bash evaluates",
	cxBrace: "inside ${…}", cxCond: "inside [[ … ]], which evaluates arithmetic",
}

// Commands that evaluate their arguments as shell code or arithmetic, take
// variable names, or run another command: a value may not be one of their
// arguments.
var evaluating = []string{
	"eval", "let", "trap", "source", ".", "declare", "typeset", "local", "readonly", "export",
	"read", "unset", "mapfile", "readarray", "getopts", "alias", "printf", "exec", "command",
	"builtin", "time", "nohup", "sudo", "doas", "env", "xargs", "nice", "ionice", "stdbuf",
	"chroot", "setsid", "timeout", "bash", "sh", "dash", "zsh", "ksh", "su", "ssh", "coproc",
}

// Reserved words after which a command begins.
var commandWords = []string{"if", "then", "else", "elif", "do", "while", "until", "!", "{", "}", "fi", "done", "esac", "in"}

var assignment = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*\+?=`)

// scanner follows a fragment's text as bash would read it, far enough to
// tell whether each value stands as one literal word of a command.
type scanner struct {
	src      string
	stack    []int // contexts, innermost last; cxCommand at the bottom
	parens   []int // for each cxArith and cxCommand-in-$( ): open parentheses
	word     strings.Builder
	inWord   bool
	cmdPos   bool   // the next word is a command word
	command  string // the command word of the current simple command
	printfV  bool   // printf -v seen in this command
	heredocs []heredoc
	value    int // index of the next value
	// outer holds the word state of each command context a $( … ) was
	// opened in, restored when it closes.
	outer []wordState
}

type wordState struct {
	word           string
	inWord, cmdPos bool
	command        string
	printfV        bool
}

// openSubst enters $( … ): a new command list, the outer word kept.
func (s *scanner) openSubst() {
	s.outer = append(s.outer, wordState{s.word.String(), true, s.cmdPos, s.command, s.printfV})
	s.word.Reset()
	s.push(cxCommand)
	s.inWord, s.cmdPos, s.command, s.printfV = false, true, "", false
}

// closeSubst leaves $( … ), back in the word it was opened in.
func (s *scanner) closeSubst() {
	s.pop()
	if len(s.outer) == 0 {
		return
	}
	o := s.outer[len(s.outer)-1]
	s.outer = s.outer[:len(s.outer)-1]
	s.word.Reset()
	s.word.WriteString(o.word)
	s.inWord, s.cmdPos, s.command, s.printfV = o.inWord, o.cmdPos, o.command, o.printfV
}

type heredoc struct {
	delim string
	dash  bool
}

// checkValuePlaces reports the first value of the flattened fragment that
// would not be one literal word of a command, with the reason; -1 and ""
// when every value is safe. A value is safe only as an argument of a
// simple command (or the value of an assignment), outside quotes,
// comments, here-documents, arithmetic, ${…} and [[ … ]], and not an
// argument of a command that evaluates or runs its arguments.
func checkValuePlaces(flat string) (int, string) {
	s := &scanner{src: flat, stack: []int{cxCommand}, parens: []int{0}, cmdPos: true}
	return s.run()
}

func (s *scanner) top() int { return s.stack[len(s.stack)-1] }

func (s *scanner) push(cx int) {
	s.stack = append(s.stack, cx)
	s.parens = append(s.parens, 0)
}

func (s *scanner) pop() {
	s.stack = s.stack[:len(s.stack)-1]
	s.parens = s.parens[:len(s.parens)-1]
}

// inCommands reports whether every enclosing context is a command list.
func (s *scanner) inCommands() bool {
	for _, cx := range s.stack {
		if cx != cxCommand {
			return false
		}
	}
	return true
}

func (s *scanner) where() string {
	for i := len(s.stack) - 1; i >= 0; i-- {
		if s.stack[i] != cxCommand {
			return cxNames[s.stack[i]]
		}
	}
	return ""
}

// endWord finishes the current word of a command context.
func (s *scanner) endWord() {
	if !s.inWord {
		return
	}
	w := s.word.String()
	s.word.Reset()
	s.inWord = false
	switch {
	case s.cmdPos && (slices.Contains(commandWords, w) || assignment.MatchString(w)):
		// still before the command word
	case s.cmdPos:
		s.cmdPos = false
		s.command = w
		if i := strings.LastIndexByte(w, '/'); i >= 0 {
			s.command = w[i+1:]
		}
	case s.command == "printf" && w == "-v":
		s.printfV = true
	}
}

// endCommand starts a new simple command.
func (s *scanner) endCommand() {
	s.endWord()
	s.cmdPos, s.command, s.printfV = true, "", false
}

func (s *scanner) run() (int, string) {
	src := s.src
	for i := 0; i < len(src); i++ {
		c := src[i]
		switch c {
		case valueMark:
			if why := s.checkValue(i); why != "" {
				return s.value, why
			}
			s.value++
			continue
		case branchMark:
			if !s.inCommands() || len(s.heredocs) > 0 {
				return s.value, "after an {{if}}, {{range}}, {{with}}, {{else}} or {{end}} that is " + s.whereOrHeredoc()
			}
			continue
		}
		switch s.top() {
		case cxSingle:
			if c == '\'' {
				s.pop()
			}
		case cxANSI:
			if c == '\\' {
				i++
			} else if c == '\'' {
				s.pop()
			}
		case cxDouble, cxBacktick:
			switch {
			case c == '\\':
				if i+1 < len(src) && src[i+1] == valueMark {
					return s.value, "right after a backslash"
				}
				i++
			case c == '"' && s.top() == cxDouble, c == '`' && s.top() == cxBacktick:
				s.pop()
			case c == '$' && strings.HasPrefix(src[i:], "$(("):
				s.push(cxArith)
				i += 2
			case c == '$' && strings.HasPrefix(src[i:], "$("):
				s.openSubst()
				i++
			case c == '$' && strings.HasPrefix(src[i:], "${"):
				s.push(cxBrace)
				i++
			}
		case cxArith:
			switch c {
			case '(':
				s.parens[len(s.parens)-1]++
			case ')':
				if s.parens[len(s.parens)-1] > 0 {
					s.parens[len(s.parens)-1]--
				} else if strings.HasPrefix(src[i:], "))") {
					s.pop()
					i++
				}
			case ']':
				s.pop() // $[ … ]
			}
		case cxBrace:
			switch c {
			case '{':
				s.parens[len(s.parens)-1]++
			case '}':
				if s.parens[len(s.parens)-1] > 0 {
					s.parens[len(s.parens)-1]--
				} else {
					s.pop()
				}
			}
		case cxCond:
			if strings.HasPrefix(src[i:], "]]") {
				s.pop()
				i++
			}
		case cxCommand:
			var why string
			if i, why = s.command1(i); why != "" {
				return s.value, why
			}
		}
	}
	return -1, ""
}

func (s *scanner) whereOrHeredoc() string {
	if w := s.where(); w != "" {
		return w
	}
	return "inside a here-document"
}

// command1 reads the byte at i in a command context and returns the index
// of the last byte it read, or why the next value is not safe.
func (s *scanner) command1(i int) (int, string) {
	src := s.src
	c := src[i]
	word := func() {
		s.inWord = true
		s.word.WriteByte(c)
	}
	switch {
	case c == '\\':
		switch {
		case i+1 < len(src) && src[i+1] == valueMark:
			return i, "right after a backslash"
		case i+1 < len(src) && src[i+1] == '\n':
			return i + 1, "" // a line continuation
		case i+1 < len(src):
			s.inWord = true
			s.word.WriteByte(src[i+1])
		}
		return i + 1, ""
	case c == '\'':
		s.inWord = true
		s.push(cxSingle)
	case c == '"':
		s.inWord = true
		s.push(cxDouble)
	case c == '`':
		s.inWord = true
		s.push(cxBacktick)
	case c == '$' && strings.HasPrefix(src[i:], "$'"):
		s.inWord = true
		s.push(cxANSI)
		return i + 1, ""
	case c == '$' && strings.HasPrefix(src[i:], "$(("):
		s.inWord = true
		s.push(cxArith)
		return i + 2, ""
	case c == '$' && strings.HasPrefix(src[i:], "$("):
		s.inWord = true
		s.openSubst()
		return i + 1, ""
	case c == '$' && strings.HasPrefix(src[i:], "${"):
		s.inWord = true
		s.push(cxBrace)
		return i + 1, ""
	case c == '$' && strings.HasPrefix(src[i:], "$["):
		s.inWord = true
		s.push(cxArith)
		return i + 1, ""
	case c == '(' && !s.inWord && strings.HasPrefix(src[i:], "(("):
		s.push(cxArith)
		return i + 1, ""
	case c == '[' && !s.inWord && strings.HasPrefix(src[i:], "[[") && (i+2 == len(src) || strings.IndexByte(" \t\n", src[i+2]) >= 0):
		s.push(cxCond)
		return i + 1, ""
	case c == '#' && !s.inWord:
		// A comment, to the end of the line.
		j := strings.IndexByte(src[i:], '\n')
		if j < 0 {
			j = len(src) - i
		}
		if strings.IndexByte(src[i:i+j], valueMark) >= 0 {
			return i, "inside a comment"
		}
		if i+j == len(src) {
			return len(src), ""
		}
		return s.newline(i + j)
	case c == '<' && strings.HasPrefix(src[i:], "<<") && !strings.HasPrefix(src[i:], "<<<"):
		s.endWord()
		return s.heredocOpener(i), ""
	case c == '(':
		s.endCommand()
		if len(s.stack) > 1 {
			s.parens[len(s.parens)-1]++
		}
	case c == ')':
		s.endWord()
		if len(s.stack) > 1 {
			if s.parens[len(s.parens)-1] > 0 {
				s.parens[len(s.parens)-1]--
			} else {
				s.closeSubst() // the end of $( … )
				return i, ""
			}
		}
		// After a subshell or a case pattern a command may follow.
		s.cmdPos, s.command, s.printfV = true, "", false
	case c == '\n':
		return s.newline(i)
	case c == ';' || c == '&' || c == '|':
		s.endCommand()
	case c == ' ' || c == '\t' || c == '<' || c == '>':
		s.endWord()
	default:
		word()
	}
	return i, ""
}

// newline ends a line at i; pending here-documents begin after it.
func (s *scanner) newline(i int) (int, string) {
	s.endCommand()
	if len(s.heredocs) == 0 {
		return i, ""
	}
	return s.skipHeredocs(i + 1)
}

// heredocOpener reads "<<[-]WORD" at i and queues the here-document.
func (s *scanner) heredocOpener(i int) int {
	src := s.src
	j := i + 2
	h := heredoc{}
	if j < len(src) && src[j] == '-' {
		h.dash = true
		j++
	}
	for j < len(src) && (src[j] == ' ' || src[j] == '\t') {
		j++
	}
	k := j
	for k < len(src) && strings.IndexByte(" \t\n;|&<>()", src[k]) < 0 {
		k++
	}
	h.delim = strings.NewReplacer(`'`, "", `"`, "", `\`, "").Replace(src[j:k])
	s.heredocs = append(s.heredocs, h)
	return k - 1
}

// skipHeredocs passes over the bodies of the queued here-documents, which
// start at i, and returns the index of the last byte read. A value or a
// branch in a body stops the scan.
func (s *scanner) skipHeredocs(i int) (int, string) {
	src := s.src
	for len(s.heredocs) > 0 {
		h := s.heredocs[0]
		for {
			if i >= len(src) {
				return len(src), ""
			}
			end := strings.IndexByte(src[i:], '\n')
			if end < 0 {
				end = len(src) - i
			}
			line := src[i : i+end]
			if strings.ContainsAny(line, string([]byte{valueMark, branchMark})) {
				return i, "inside a here-document"
			}
			i += end + 1
			if h.dash {
				line = strings.TrimLeft(line, "\t")
			}
			if line == h.delim {
				break
			}
		}
		s.heredocs = s.heredocs[1:]
	}
	return i - 1, ""
}

// checkValue decides whether the value at i stands as one literal word.
func (s *scanner) checkValue(i int) string {
	if !s.inCommands() {
		return s.where()
	}
	src := s.src
	if i > 0 {
		switch p := src[i-1]; {
		case p == '\\':
			return "right after a backslash"
		case p == '$':
			return "right after $"
		case p == '=' && strings.Contains(s.word.String(), "["):
			return "in an array subscript, which bash evaluates"
		case p == '[':
			return "in an array subscript, which bash evaluates"
		}
	}
	if i+1 < len(src) && strings.IndexByte(" \t\n;|&)<>\x00\x01", src[i+1]) < 0 {
		if src[i+1] == '[' || src[i+1] == '=' || src[i+1] == '(' {
			return fmt.Sprintf("followed by %q, where it would be part of a name or an assignment", src[i+1])
		}
	}
	// The value is (part of) the current word.
	if s.cmdPos && !assignment.MatchString(s.word.String()) {
		return "the command word, so it would choose the command to run"
	}
	if slices.Contains(evaluating, s.command) && (s.command != "printf" || s.printfV) {
		return fmt.Sprintf("an argument of %s, which evaluates or runs its arguments", s.command)
	}
	s.inWord = true
	s.word.WriteString("v")
	return ""
}
