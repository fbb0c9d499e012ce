package bmcconf

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/kvmctl/kvmctl/pkg/argv"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// DefaultTemplate is seed 002's "IPMI Execution Syntax": the exec driver runs it for an action
// that has no template of its own, $IPMI_ACTION being the action (off, on, reboot, blink,
// status, test). It passes the password in the program's arguments, where every local user can
// read it (ps, /proc/PID/cmdline): a template of one's own with --password-file
// $IPMI_PASSWORD_FILE keeps it out of them.
const DefaultTemplate = "$IPMI_EXEC --username $IPMI_USERNAME --password $IPMI_PASSWORD --command $IPMI_ACTION --host $IPMI_HOST"

// Template variables. Names are matched without regard to case, so seed 002's own spelling
// ($IPMI_Username, $IPMI_password) works, and may be written ${NAME}.
const (
	VarExec         = "IPMI_EXEC"          // the exec program
	VarUsername     = "IPMI_USERNAME"      // the BMC user
	VarPassword     = "IPMI_PASSWORD"      // the password itself: it lands in the program's arguments
	VarPasswordFile = "IPMI_PASSWORD_FILE" // a file (mode 0600) holding the password, removed afterwards
	VarAction       = "IPMI_ACTION"        // off, on, reboot, blink, status or test
	VarHost         = "IPMI_HOST"          // the BMC's address
	VarPort         = "IPMI_PORT"          // the BMC's port (623 unless set)
	VarInterface    = "IPMI_INTERFACE"     // lanplus or lan
)

// variables maps each template variable to the field it reads; "" for those always known.
var variables = map[string]string{
	VarExec: FieldExec, VarUsername: FieldUsername, VarPassword: FieldPassword, VarPasswordFile: FieldPassword,
	VarAction: "", VarHost: FieldAddress, VarPort: "", VarInterface: "",
}

// Variables lists the template variables, for help texts.
func Variables() []string {
	names := make([]string, 0, len(variables))
	for v := range variables {
		names = append(names, "$"+v)
	}
	slices.Sort(names)
	return names
}

// part is a piece of a word: literal text, or a variable (v set).
type part struct{ lit, v string }

// Template is a command line split into words once; variables are substituted inside the
// words, so a value with spaces or quotes stays one argument and is never read as syntax.
type Template struct {
	words [][]part
}

// CheckTemplate checks the template of action as it is stored: it splits into words (shell
// quoting rules, no shell), its variables are known, its program is $IPMI_EXEC or an absolute
// path, and it does not use both $IPMI_PASSWORD and $IPMI_PASSWORD_FILE (the file form exists
// to keep the password out of the arguments).
func CheckTemplate(action, t string) error {
	_, err := ParseTemplate(action, t)
	return err
}

// ParseTemplate splits the template of action into words and finds its variables, with the
// checks of CheckTemplate.
func ParseTemplate(action, s string) (*Template, error) {
	what := action + " template"
	words, err := argv.Split(what, s)
	if err != nil {
		return nil, err
	}
	if len(words) == 0 {
		return nil, fmt.Errorf("the %s is empty: give the command line to run", what)
	}
	t := &Template{}
	for _, w := range words {
		parts, err := splitVars(w)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		t.words = append(t.words, parts)
	}
	first := t.words[0]
	if !(len(first) == 1 && (first[0].v == VarExec || first[0].v == "" && filepath.IsAbs(first[0].lit))) {
		return nil, fmt.Errorf("the %s must start with $%s or an absolute program path, not %q", what, VarExec, words[0])
	}
	vars := t.Vars()
	if slices.Contains(vars, VarPassword) && slices.Contains(vars, VarPasswordFile) {
		return nil, fmt.Errorf("the %s uses both $%s and $%s: use only $%s, which keeps the password out of the program's arguments",
			what, VarPassword, VarPasswordFile, VarPasswordFile)
	}
	return t, nil
}

// splitVars cuts a word into literals and variables. A '$' that does not start a variable name
// stays literal text; a name that starts with IPMI_ and is not known is a mistake, refused.
func splitVars(w string) ([]part, error) {
	var parts []part
	lit := strings.Builder{}
	for i := 0; i < len(w); {
		if w[i] != '$' {
			lit.WriteByte(w[i])
			i++
			continue
		}
		name, n := varName(w[i+1:])
		key := strings.ToUpper(name)
		if _, ok := variables[key]; !ok {
			if strings.HasPrefix(key, "IPMI_") {
				return nil, fmt.Errorf("unknown variable $%s: use %s", name, strings.Join(Variables(), ", "))
			}
			lit.WriteByte('$')
			i++
			continue
		}
		if lit.Len() > 0 {
			parts = append(parts, part{lit: lit.String()})
			lit.Reset()
		}
		parts = append(parts, part{v: key})
		i += 1 + n
	}
	if lit.Len() > 0 || len(parts) == 0 {
		parts = append(parts, part{lit: lit.String()})
	}
	return parts, nil
}

// varName reads the variable name at the start of s (NAME or {NAME}) and how many bytes it
// takes; "" when there is none.
func varName(s string) (string, int) {
	isName := func(c byte) bool {
		return c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
	}
	if strings.HasPrefix(s, "{") {
		end := strings.IndexByte(s, '}')
		if end < 2 || strings.IndexFunc(s[1:end], func(r rune) bool { return r > 0x7f || !isName(byte(r)) }) >= 0 {
			return "", 0
		}
		return s[1:end], end + 1
	}
	n := 0
	for n < len(s) && isName(s[n]) {
		n++
	}
	return s[:n], n
}

// Vars lists the variables the template uses, each once.
func (t *Template) Vars() []string {
	var out []string
	for _, w := range t.words {
		for _, p := range w {
			if p.v != "" && !slices.Contains(out, p.v) {
				out = append(out, p.v)
			}
		}
	}
	return out
}

// Needs lists the fields the template's variables read (bmcconf.FieldNames).
func (t *Template) Needs() []string {
	var out []string
	for _, v := range t.Vars() {
		if f := variables[v]; f != "" && !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	return out
}

// Expand substitutes vals, by variable name, into the words: one argument per word, whatever
// the values hold.
func (t *Template) Expand(vals map[string]string) []string {
	out := make([]string, len(t.words))
	for i, w := range t.words {
		var b strings.Builder
		for _, p := range w {
			if p.v != "" {
				b.WriteString(vals[p.v])
			} else {
				b.WriteString(p.lit)
			}
		}
		out[i] = b.String()
	}
	return out
}

// Templates returns the template each action of b runs: its own, or DefaultTemplate when b has
// an exec program. Templates that do not parse are left out (they were refused when set).
func Templates(b state.BMC) map[string]*Template {
	out := map[string]*Template{}
	for _, a := range TemplateActions {
		s, ok := b.Actions[a]
		if !ok {
			if b.Exec == "" {
				continue
			}
			s = DefaultTemplate
		}
		if t, err := ParseTemplate(a, s); err == nil {
			out[a] = t
		}
	}
	return out
}

// PasswordInArgs names the actions of effective settings b whose command line carries the
// password itself ($IPMI_PASSWORD, as the default template does), for a warning: every local
// user can read a program's arguments.
func PasswordInArgs(b state.BMC) []string {
	if WithDefaults(b).Driver != DriverExec {
		return nil
	}
	var out []string
	ts := Templates(b)
	for _, a := range TemplateActions {
		if t, ok := ts[a]; ok && slices.Contains(t.Vars(), VarPassword) {
			out = append(out, a)
		}
	}
	return out
}
