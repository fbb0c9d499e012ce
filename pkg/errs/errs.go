// Package errs marks errors that refuse input: the command line maps them to exit code 2
// ("bad usage or input refused before anything was changed"), every other error to 1.
package errs

import (
	"errors"
	"fmt"
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
