package inventory

// What stands between an inventory file and go-yaml v1.19.2: every call into the library under
// recover, its errors copied into refusals, and the checks that keep known trouble from
// reaching its decoder (control characters, tags, a second document, alias expansion).

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"

	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/safetext"
)

// yamlPanic is a panic of go-yaml, recovered.
type yamlPanic struct{ value any }

func (p *yamlPanic) Error() string {
	return fmt.Sprintf("the YAML library failed on this file (%v); compare it with the output of `kvmctl inventory export`", p.value)
}

// yamlSafe runs fn, calls into go-yaml, and returns a panic of go-yaml as a *yamlPanic error.
// v1.19.2 panics on some malformed documents (goccy/go-yaml#735: a tag on a scalar where a
// sequence is expected, not fixed in this version), and no input file may crash kvmctl.
func yamlSafe(fn func() error) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = &yamlPanic{value: v}
		}
	}()
	return fn()
}

// refuseYAML turns an error of go-yaml into a refusal that names the file and, when go-yaml
// knows it, the line. Its message is read here, under yamlSafe, and copied: formatting an error
// of go-yaml can itself panic (goccy/go-yaml#718), so none is passed on to be printed later.
func refuseYAML(name string, err error) error {
	var p *yamlPanic
	if errors.As(err, &p) {
		return errs.Refusedf("%s: cannot parse: %v", name, p)
	}
	line, msg := 0, ""
	if perr := yamlSafe(func() error {
		var ye yaml.Error
		if errors.As(err, &ye) {
			msg = ye.GetMessage()
			if tk := ye.GetToken(); tk != nil && tk.Position != nil {
				line = tk.Position.Line
			}
			return nil
		}
		msg = err.Error()
		return nil
	}); perr != nil {
		return errs.Refusedf("%s: cannot parse: %v", name, perr)
	}
	if line > 0 {
		return errs.Refusedf("%s:%d: %s", name, line, msg)
	}
	return errs.Refusedf("%s: %s", name, msg)
}

// checkText refuses a file that is not text: invalid UTF-8, or a control character other than
// tab, newline and carriage return, named with its line. go-yaml would take them into names and
// echo them in its messages; escaped ones ("\0" in double quotes) are refused field by field.
func checkText(name string, data []byte) error {
	text := bytes.Clone(data)
	for i, c := range text {
		if c == '\t' || c == '\n' || c == '\r' {
			text[i] = ' '
		}
	}
	var e *safetext.Error
	if errors.As(safetext.Check("file", string(text)), &e) {
		return errs.Refusedf("%s:%d: cannot parse: %s at byte %d: save the file as UTF-8 text without control characters",
			name, 1+bytes.Count(data[:e.Offset], []byte("\n")), e.Char, e.Offset)
	}
	return nil
}

// checkNodes refuses, with its line, what an inventory file has no use for and go-yaml v1.19.2
// mishandles: tags (`!x`, `!!str`: the panic of goccy/go-yaml#735) and a second document, which
// decoding would silently ignore.
func checkNodes(name string, file *ast.File) error {
	docs := 0
	for _, d := range file.Docs {
		if d == nil || d.Body == nil {
			continue
		}
		if docs++; docs > 1 {
			return errs.Refusedf("%s:%d: cannot parse: a second YAML document: an inventory file holds one (remove the `---` above it)", name, nodeLine(d.Body))
		}
		var tag *ast.TagNode
		size := 0
		if err := yamlSafe(func() error {
			size = newExpander(d.Body).size(d.Body)
			ast.Walk(visitFunc(func(n ast.Node) bool {
				if t, ok := n.(*ast.TagNode); ok && tag == nil {
					tag = t
				}
				return tag == nil
			}), d.Body)
			return nil
		}); err != nil {
			return refuseYAML(name, err)
		}
		if tag != nil {
			return errs.Refusedf("%s:%d: cannot parse: YAML tag %q: an inventory file uses none; remove it", name, nodeLine(tag), tagName(tag))
		}
		if size > maxNodes {
			return errs.Refusedf("%s: cannot parse: with its aliases expanded, the file has more than %d YAML nodes: an alias repeats all its anchor holds; use fewer aliases", name, maxNodes)
		}
	}
	return nil
}

// maxNodes bounds a document with its aliases expanded, about 50,000 hosts: aliases of anchors
// that hold aliases multiply ("billion laughs"), and a few kilobytes of them would decode into
// millions of hosts.
const maxNodes = 1_000_000

// expander counts the nodes of a document as decoding sees them, every alias replaced by what
// its anchor holds.
type expander struct {
	anchors map[string][]ast.Node // every definition of a name: the largest is counted
	sizes   map[string]int
	busy    map[string]bool // an alias inside its own anchor decodes to nothing
}

func newExpander(doc ast.Node) *expander {
	e := &expander{anchors: map[string][]ast.Node{}, sizes: map[string]int{}, busy: map[string]bool{}}
	ast.Walk(visitFunc(func(n ast.Node) bool {
		if a, ok := n.(*ast.AnchorNode); ok && a.Name != nil && a.Value != nil {
			e.anchors[tokenValue(a.Name)] = append(e.anchors[tokenValue(a.Name)], a.Value)
		}
		return true
	}), doc)
	return e
}

// size counts the nodes of n, aliases expanded; it stops a little past maxNodes.
func (e *expander) size(n ast.Node) int {
	total := 0
	ast.Walk(visitFunc(func(n ast.Node) bool {
		if total > maxNodes {
			return false
		}
		total++
		if a, ok := n.(*ast.AliasNode); ok {
			if a.Value != nil {
				total += e.alias(tokenValue(a.Value))
			}
			return false
		}
		return true
	}), n)
	return total
}

func (e *expander) alias(name string) int {
	if s, ok := e.sizes[name]; ok || e.busy[name] {
		return s
	}
	e.busy[name] = true
	s := 0
	for _, def := range e.anchors[name] {
		s = max(s, min(e.size(def), maxNodes+1))
	}
	e.sizes[name] = s
	return s
}

func tokenValue(n ast.Node) string {
	if tk := n.GetToken(); tk != nil {
		return tk.Value
	}
	return ""
}

// visitFunc is an ast.Visitor that goes on into a node's children while it returns true.
type visitFunc func(ast.Node) bool

func (f visitFunc) Visit(n ast.Node) ast.Visitor {
	if n == nil || !f(n) {
		return nil
	}
	return f
}

func nodeLine(n ast.Node) int {
	if tk := n.GetToken(); tk != nil && tk.Position != nil {
		return tk.Position.Line
	}
	return 0
}

func tagName(t *ast.TagNode) string {
	if t.Start != nil {
		return t.Start.Value
	}
	return "!"
}
