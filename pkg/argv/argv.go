// Package argv splits a command line that kvmctl or kvmagent runs into its words, by shell
// quoting rules but without a shell: no variable is expanded, no command substituted, and an
// unquoted operator that a shell would act on is refused rather than passed on as a word. Hook
// payloads and the exec fence driver's templates both go through it, so they follow one rule.
package argv

import (
	"fmt"
	"strings"

	"github.com/mattn/go-shellwords"

	"github.com/kvmctl/kvmctl/pkg/safetext"
)

// Split splits s into words; what names s in errors ("payload", "off template"). An
// unbalanced quote, a control character, or an unquoted shell operator (; & | < >) that would
// silently cut the line short, is an error.
func Split(what, s string) ([]string, error) {
	if err := safetext.Check(what, s); err != nil {
		return nil, err
	}
	p := shellwords.NewParser()
	p.ParseEnv = false
	p.ParseBacktick = false
	words, err := p.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("split %s: %w (check its quotes)", what, err)
	}
	if p.Position >= 0 {
		// The parser stops at a redirection's file descriptor ("2>"): name the operator with it.
		op := fmt.Sprintf("%q", s[p.Position])
		if n := strings.IndexAny(s[p.Position:], ";&|<>"); n > 0 {
			op = fmt.Sprintf("%q", s[p.Position:p.Position+n+1])
		}
		return nil, fmt.Errorf("split %s: unquoted %s at offset %d: quote it: it runs without a shell", what, op, p.Position)
	}
	return words, nil
}
