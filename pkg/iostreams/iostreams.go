// Package iostreams gives commands their standard streams and what they need to know about
// them: a terminal gets aligned tables, colour and relative times; a pipe gets plain
// tab-separated lines and RFC 3339 times. Results go to Out, progress and errors to ErrOut.
package iostreams

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mattn/go-isatty"

	"github.com/kvmctl/kvmctl/pkg/termtext"
)

// IOStreams are a command's streams.
type IOStreams struct {
	In     io.Reader
	Out    io.Writer
	ErrOut io.Writer
	// rawOut is Out before SafeText, for the live view, which draws the terminal itself.
	rawOut io.Writer
	safe   []*termtext.Writer

	stdoutTTY bool
	stderrTTY bool
	stdinTTY  bool
	noColor   bool
}

// System returns the process's own streams.
func System() *IOStreams {
	return &IOStreams{
		In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr,
		stdoutTTY: isTerminal(os.Stdout), stderrTTY: isTerminal(os.Stderr), stdinTTY: isTerminal(os.Stdin),
		noColor: os.Getenv("NO_COLOR") != "" || os.Getenv("TERM") == "dumb",
	}
}

func isTerminal(f *os.File) bool { return isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd()) }

// Test returns streams backed by buffers, none of them a terminal.
func Test() (ios *IOStreams, in *bytes.Buffer, out *bytes.Buffer, errOut *bytes.Buffer) {
	in, out, errOut = &bytes.Buffer{}, &bytes.Buffer{}, &bytes.Buffer{}
	return &IOStreams{In: in, Out: out, ErrOut: errOut, noColor: true}, in, out, errOut
}

// SafeText makes Out and ErrOut escape every control character but newline and tab (see
// pkg/termtext): whatever a host sent (script output, error texts, names) reaches the terminal
// as text, never as a command to it. Call Flush before exiting.
func (s *IOStreams) SafeText() {
	if s.rawOut != nil {
		return
	}
	s.rawOut = s.Out
	out, errOut := termtext.NewWriter(s.Out), termtext.NewWriter(s.ErrOut)
	s.Out, s.ErrOut = out, errOut
	s.safe = []*termtext.Writer{out, errOut}
}

// Flush writes what SafeText's writers hold back.
func (s *IOStreams) Flush() {
	for _, w := range s.safe {
		_ = w.Flush()
	}
}

// Terminal is where a live view draws: stdout itself, not the SafeText writer (the view cleans
// what it shows).
func (s *IOStreams) Terminal() io.Writer {
	if s.rawOut != nil {
		return s.rawOut
	}
	return s.Out
}

// IsStdoutTTY reports whether results go to a terminal.
func (s *IOStreams) IsStdoutTTY() bool { return s.stdoutTTY }

// IsStderrTTY reports whether progress goes to a terminal.
func (s *IOStreams) IsStderrTTY() bool { return s.stderrTTY }

// IsStdinTTY reports whether input comes from a terminal.
func (s *IOStreams) IsStdinTTY() bool { return s.stdinTTY }

// SetStdoutTTY overrides terminal detection, for tests.
func (s *IOStreams) SetStdoutTTY(v bool) { s.stdoutTTY = v }

// ColorEnabled reports whether output may carry ANSI colour.
func (s *IOStreams) ColorEnabled() bool { return s.stdoutTTY && !s.noColor }

// Time renders t for people on a terminal ("3m ago") and for programs otherwise (RFC 3339).
func (s *IOStreams) Time(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	if !s.stdoutTTY {
		return t.UTC().Format(time.RFC3339)
	}
	return Relative(t, now)
}

// Relative renders the distance from t to now in the largest sensible unit.
func Relative(t, now time.Time) string {
	d := now.Sub(t)
	suffix := "ago"
	if d < 0 {
		d, suffix = -d, "from now"
	}
	switch {
	case d < time.Second:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds %s", int(d.Seconds()), suffix)
	case d < time.Hour:
		return fmt.Sprintf("%dm %s", int(d.Minutes()), suffix)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh %s", int(d.Hours()), suffix)
	default:
		return fmt.Sprintf("%dd %s", int(d.Hours()/24), suffix)
	}
}

// Table collects rows and prints them aligned under a header on a terminal, or as
// tab-separated lines without a header on a pipe (for cut and awk).
type Table struct {
	ios    *IOStreams
	header []string
	rows   [][]string
}

// NewTable starts a table with the given column names.
func (s *IOStreams) NewTable(header ...string) *Table { return &Table{ios: s, header: header} }

// AddRow appends one row; an empty cell prints as "-" so columns stay aligned.
func (t *Table) AddRow(cells ...string) {
	row := make([]string, len(cells))
	for i, c := range cells {
		if c == "" {
			c = "-"
		}
		row[i] = c
	}
	t.rows = append(t.rows, row)
}

// Render writes the table to Out.
func (t *Table) Render() error {
	if !t.ios.stdoutTTY {
		for _, r := range t.rows {
			if _, err := fmt.Fprintln(t.ios.Out, strings.Join(r, "\t")); err != nil {
				return err
			}
		}
		return nil
	}
	w := tabwriter.NewWriter(t.ios.Out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, strings.Join(t.header, "\t"))
	for _, r := range t.rows {
		fmt.Fprintln(w, strings.Join(r, "\t"))
	}
	return w.Flush()
}
