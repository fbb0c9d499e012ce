// Package errs marks errors that refuse input: the command line maps them to exit code 2
// ("bad usage or input refused before anything was changed"), every other error to 1.
package errs

import (
	"errors"
	"fmt"
	"strings"
)

// RefusedError wraps an error that rejects what the operator asked for.
type RefusedError struct{ Err error }

func (e *RefusedError) Error() string { return e.Err.Error() }

// Unwrap returns the wrapped error.
func (e *RefusedError) Unwrap() error { return e.Err }

// Refused marks err as refused input; nil stays nil.
func Refused(err error) error {
	if err == nil {
		return nil
	}
	return &RefusedError{Err: err}
}

// Refusedf formats a refusal; %w works as in fmt.Errorf.
func Refusedf(format string, args ...any) error {
	return &RefusedError{Err: fmt.Errorf(format, args...)}
}

// IsRefused reports whether err, or an error it wraps, is a refusal.
func IsRefused(err error) bool {
	var r *RefusedError
	return errors.As(err, &r)
}

// IsCobraUsage reports whether err is one of cobra's own command-line errors (unknown command or
// flag, missing flag value, required flag, flag group): bad usage, refused like a RefusedError.
func IsCobraUsage(err error) bool {
	if err == nil {
		return false
	}
	msg := err.Error()
	for _, prefix := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "invalid argument",
		"required flag", "if any flags in the group", "at least one of the flags"} {
		if strings.HasPrefix(msg, prefix) {
			return true
		}
	}
	return strings.Contains(msg, "flag needs an argument")
}
