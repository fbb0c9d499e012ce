package argv

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestSplit(t *testing.T) {
	got, err := Split("payload", `a "b c" 'd;e' $HOME $(id) `+"`id`"+` x\ y ""`)
	want := []string{"a", "b c", "d;e", "$HOME", "$(id)", "`id`", "x y", ""}
	if err != nil || cmp.Diff(want, got) != "" {
		t.Errorf("Split = %q, %v; want %q", got, err, want)
	}
	for in, msg := range map[string]string{
		`a "b`:     `split off template: invalid command line string (check its quotes)`,
		`a; b`:     `split off template: unquoted ';' at offset 1: quote it: it runs without a shell`,
		`a | b`:    `unquoted '|'`,
		`a 2> f`:   `unquoted "2>" at offset 2`,
		"a\x00b":   `invalid off template "a\x00b": NUL at byte 1`,
		"a\nb":     `control character U+000A`,
		"a \u0085": `C1 control character U+0085`,
	} {
		if _, err := Split("off template", in); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("Split(%q) = %v; want %q", in, err, msg)
		}
	}
}
