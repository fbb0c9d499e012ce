package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/kvmctl/kvmctl/pkg/cmdutil"
)

// StateOptions are the inputs of `kvmctl state backup|check`.
type StateOptions struct {
	F    *cmdutil.Factory
	File string
}

func newStateCmd(f *cmdutil.Factory) *cobra.Command {
	opts := &StateOptions{F: f}
	backup := &cobra.Command{
		Use:   "backup FILE",
		Short: "Write a consistent copy of the state file to FILE (mode 0600), while others read it",
		Long: `Backup copies the state file as one read transaction sees it, so a copy taken while a run
journals its steps is whole. The copy is checked before it is kept, FILE is never overwritten, and
a damaged state file is not copied. Restore by pointing --state (or KVMCTL_STATE) at a copy, or by
copying it back while no kvmctl runs.`,
		Args: cmdutil.ExactArgs(1, "the backup FILE to write"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.File = args[0]
			return runStateBackup(opts)
		},
	}
	check := &cobra.Command{
		Use:   "check",
		Short: "Read the whole state file and say whether it is sound (exit 1 when it is not)",
		Args:  cmdutil.NoArgs,
		RunE:  func(cmd *cobra.Command, args []string) error { return runStateCheck(opts) },
	}
	return group("state", "Back up and check the state file", backup, check)
}

func runStateBackup(opts *StateOptions) error {
	st, err := opts.F.Store()
	if err != nil {
		return err
	}
	n, err := st.Backup(opts.File)
	if err != nil {
		return err
	}
	return done(opts.F, map[string]any{"state": st.Path, "backup": opts.File, "bytes": n},
		"backed up %s to %s (%d bytes, checked)", st.Path, opts.File, n)
}

func runStateCheck(opts *StateOptions) error {
	st, err := opts.F.Store()
	if err != nil {
		return err
	}
	rep, err := st.Check()
	if err != nil {
		return err
	}
	if opts.F.JSON {
		if err := opts.F.PrintJSON(rep); err != nil {
			return err
		}
	} else if rep.Sound() {
		fmt.Fprintf(opts.F.IO.Out, "%s is sound: %d hosts, %d clusters, %d runs, %d journal records, %d bytes\n",
			rep.Path, rep.Keys["hosts"], rep.Keys["clusters"], rep.Keys["runs"], rep.Keys["journal"], rep.Size)
	} else {
		fmt.Fprintf(opts.F.IO.Out, "%s is damaged:\n", rep.Path)
		for _, p := range append(rep.Problems, rep.Records...) {
			fmt.Fprintf(opts.F.IO.Out, "  %s\n", p)
		}
	}
	if !rep.Sound() {
		return cmdutil.ErrSilent
	}
	return nil
}
