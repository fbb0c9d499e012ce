// Package cli holds kvmctl's cobra commands, one file per command. A command's RunE only fills
// its XxxOptions; runXxx does the work by calling one package, so each is testable alone.
package cli

import (
	"errors"
	"fmt"
	"regexp"
	"runtime"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kvmctl/kvmctl/pkg/buildinfo"
	"github.com/kvmctl/kvmctl/pkg/cmdutil"
	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/iostreams"
)

// Run executes kvmctl with args and returns the exit code; errors are printed on ErrOut.
func Run(args []string, ios *iostreams.IOStreams) int {
	// Text from hosts (script output, agents' errors, VM names) reaches the operator's terminal
	// escaped: no escape sequence of theirs is ever interpreted.
	ios.SafeText()
	defer ios.Flush()
	f := cmdutil.New(ios)
	root := NewRootCmd(f)
	root.SetArgs(args)
	err := root.Execute()
	err = plainFlagGroupError(err)
	if err != nil && !errors.Is(err, cmdutil.ErrSilent) {
		fmt.Fprintf(ios.ErrOut, "kvmctl: %v\n", err)
	}
	return cmdutil.ExitCode(err)
}

// NewRootCmd builds the whole command tree on f.
func NewRootCmd(f *cmdutil.Factory) *cobra.Command {
	root := &cobra.Command{
		Use:   "kvmctl",
		Short: "Patch, reboot and fence the hosts of a KVM fleet",
		Long: `kvmctl drives a kvmagent on every KVM host over mutual TLS: host maintenance mode,
rolling maintenance of zones, pods, clusters and hosts through hook scripts, and host HA.
Its state (inventory, settings, runs) lives in one local file; see --state.

Exit codes: 0 success, 1 the operation failed, 2 bad usage or input refused (nothing changed).`,
		Version:       buildinfo.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(f.IO.In)
	root.SetOut(f.IO.Out)
	root.SetErr(f.IO.ErrOut)
	root.SetFlagErrorFunc(cmdutil.FlagErrorFunc)
	// --version says what `kvmctl version` says.
	root.SetVersionTemplate(fmt.Sprintf("kvmctl %s (%s %s/%s)\n", buildinfo.String(), runtime.Version(), runtime.GOOS, runtime.GOARCH))
	pf := root.PersistentFlags()
	pf.StringVar(&f.StateFlag, "state", "", "state file (default $KVMCTL_STATE, else ~/.local/state/kvmctl/state.db)")
	pf.BoolVar(&f.JSON, "json", false, "print the result as JSON")
	pf.BoolVar(&f.Events, "events", false, "stream progress events as JSON lines on stdout (commands that report progress)")
	pf.BoolVar(&f.NoTUI, "no-tui", false, "plain progress lines instead of the live view, even on a terminal")

	root.AddCommand(
		newVersionCmd(f),
		newInitCmd(f),
		newZoneCmd(f),
		newPodCmd(f),
		newClusterCmd(f),
		newHostCmd(f),
		newBMCCmd(f),
		newInventoryCmd(f),
		newConfigCmd(f),
		newPKICmd(f),
		newLabCmd(f),
		newMaintenanceCmd(f),
		newRollingCmd(f),
		newNotifyCmd(f),
		newHooksCmd(f),
		newStateCmd(f),
		newFenceCmd(f),
		newAuditCmd(f),
		newHACmd(f),
	)
	// Cobra's completion command prints help and exits 0 when the shell is missing or unknown;
	// like every other group, it refuses instead.
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		if c.Name() == "completion" {
			c.Args = cobra.NoArgs
			c.RunE = func(cmd *cobra.Command, args []string) error { return refusedUsage(cmd) }
		}
	}
	return root
}

// group returns a parent command that only holds subcommands; run bare, it refuses with usage.
func group(use, short string, children ...*cobra.Command) *cobra.Command {
	c := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return refusedUsage(cmd)
		},
	}
	c.AddCommand(children...)
	return c
}

// flagGroup matches cobra's flag-group errors, which name Go-ish lists rather than flags.
var flagGroup = regexp.MustCompile(`^(if any flags in the group|at least one of the flags in the group) \[([^\]]*)\]`)

// plainFlagGroupError rewrites cobra's flag-group errors in the words of the rest of kvmctl.
func plainFlagGroupError(err error) error {
	if err == nil {
		return nil
	}
	m := flagGroup.FindStringSubmatch(err.Error())
	if m == nil {
		return err
	}
	var flags []string
	for _, f := range strings.Fields(m[2]) {
		flags = append(flags, "--"+f)
	}
	if strings.HasPrefix(m[1], "at least") {
		return errs.Refusedf("give one of %s", strings.Join(flags, ", "))
	}
	return errs.Refusedf("give only one of %s", strings.Join(flags, ", "))
}
