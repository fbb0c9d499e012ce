package cmdutil

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// Exit codes of every kvmctl command.
const (
	ExitOK      = 0 // success
	ExitFailed  = 1 // the operation failed
	ExitRefused = 2 // bad usage or input refused before anything was changed
)

// ErrSilent fails a command whose message was already printed.
var ErrSilent = errors.New("silent")

// ExitCode maps an error to the documented exit code.
func ExitCode(err error) int {
	switch {
	case err == nil:
		return ExitOK
	case errs.IsRefused(err), errors.Is(err, state.ErrNotInitialized), errs.IsCobraUsage(err):
		return ExitRefused
	default:
		return ExitFailed
	}
}

// FlagErrorFunc turns cobra's flag parsing errors into refusals that point at --help.
func FlagErrorFunc(cmd *cobra.Command, err error) error {
	return errs.Refusedf("%w\nrun `%s --help` for usage", err, cmd.CommandPath())
}

// ExactArgs requires n positional arguments, naming them in the refusal.
func ExactArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return errs.Refusedf("%s takes %s (got %d argument%s): run `%s --help`", cmd.CommandPath(), names, len(args), plural(len(args)), cmd.CommandPath())
		}
		return nil
	}
}

// NoArgs refuses positional arguments.
func NoArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return errs.Refusedf("%s takes no arguments (got %q): run `%s --help`", cmd.CommandPath(), args, cmd.CommandPath())
	}
	return nil
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// Failf returns an error for an operation that failed (exit 1).
func Failf(format string, args ...any) error { return fmt.Errorf(format, args...) }
