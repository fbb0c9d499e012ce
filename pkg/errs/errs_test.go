package errs

import (
	"errors"
	"fmt"
	"testing"
)

func TestRefused(t *testing.T) {
	base := errors.New("base")
	r := Refused(base)
	if !IsRefused(r) || !IsRefused(fmt.Errorf("ctx: %w", r)) || !errors.Is(r, base) {
		t.Errorf("a refusal must stay one through wrapping and keep its cause")
	}
	if Refused(nil) != nil || IsRefused(base) {
		t.Errorf("nil stays nil; a plain error is no refusal")
	}
	if got := Refusedf("bad %s: %w", "x", base); got.Error() != "bad x: base" || !errors.Is(got, base) {
		t.Errorf("Refusedf = %v", got)
	}
}

func TestIsCobraUsage(t *testing.T) {
	for msg, want := range map[string]bool{
		`unknown command "x" for "kvmctl"`:    true,
		"unknown flag: --bogus":               true,
		"flag needs an argument: --cluster":   true,
		`required flag(s) "out" not set`:      true,
		"agent h1 is unreachable":             false,
		"unknown setting (not cobra's words)": false,
	} {
		if got := IsCobraUsage(errors.New(msg)); got != want {
			t.Errorf("IsCobraUsage(%q) = %v, want %v", msg, got, want)
		}
	}
}
