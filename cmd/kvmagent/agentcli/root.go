// Package agentcli holds kvmagent's cobra commands. It is importable so that kvmctl's end-to-end
// tests can register kvmagent in-process with testscript:
//
//	testscript.Main(m, map[string]func() int{
//		"kvmagent": func() int { return agentcli.Run(os.Args[1:], os.Stdout, os.Stderr) },
//	})
package agentcli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/kvmctl/kvmctl/pkg/buildinfo"
	"github.com/kvmctl/kvmctl/pkg/errs"
)

// Exit codes of kvmagent, the same contract as kvmctl's.
const (
	ExitOK      = 0 // success, or stopped by SIGTERM/SIGINT
	ExitFailed  = 1 // the agent failed while running
	ExitRefused = 2 // bad usage or a bad agent.properties: nothing was started
)

// errSilent fails a command whose message was already printed.
var errSilent = errors.New("silent")

// Run executes kvmagent with args and returns the exit code. SIGTERM and SIGINT stop a running
// agent gracefully.
func Run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return RunContext(ctx, args, stdout, stderr)
}

// RunContext is Run with the caller's context instead of the signals: when ctx ends, a running
// agent shuts down gracefully and the exit code is 0.
func RunContext(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := NewRootCmd(stdout, stderr)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err != nil && !errors.Is(err, errSilent) {
		fmt.Fprintf(stderr, "kvmagent: %v\n", err)
	}
	return exitCode(err)
}

func exitCode(err error) int {
	switch {
	case err == nil:
		return ExitOK
	case errs.IsRefused(err), errs.IsCobraUsage(err):
		return ExitRefused
	default:
		return ExitFailed
	}
}

// NewRootCmd builds kvmagent's command tree writing to stdout and stderr.
func NewRootCmd(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "kvmagent",
		Short: "The kvmctl agent of one KVM host",
		Long: `kvmagent runs on every KVM host of a kvmctl fleet, as root, under systemd. It serves HTTPS
with mutual TLS 1.3 (only kvmctl operator certificates of the fleet CA get in), reports the
host's status, runs rolling-maintenance stage scripts and writes its heartbeat file.

Exit codes: 0 success or stopped by SIGTERM/SIGINT, 1 the agent failed, 2 bad usage or a bad
agent.properties (nothing was started).`,
		Version:       buildinfo.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return errs.Refusedf("missing command: run `kvmagent run --config FILE`, or `kvmagent --help`")
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return errs.Refusedf("%w\nrun `%s --help` for usage", err, cmd.CommandPath())
	})
	root.CompletionOptions.DisableDefaultCmd = true
	root.AddCommand(
		newRunCmd(stderr),
		newVersionCmd(stdout),
		newStageExecCmd(),
	)
	return root
}

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return errs.Refusedf("%s takes no arguments (got %q): run `%s --help`", cmd.CommandPath(), args, cmd.CommandPath())
	}
	return nil
}
