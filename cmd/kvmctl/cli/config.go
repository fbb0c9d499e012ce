package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/kvmctl/kvmctl/pkg/cmdutil"
	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/settings"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// ConfigOptions are the inputs of `kvmctl config list|get|set|unset`.
type ConfigOptions struct {
	F     *cmdutil.Factory
	Key   string
	Value string
}

func newConfigCmd(f *cmdutil.Factory) *cobra.Command {
	opts := &ConfigOptions{F: f}
	complete := func(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
		if len(args) == 0 {
			return settings.Names(), cobra.ShellCompDirectiveNoFileComp
		}
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List every setting with its value, default and meaning",
		Args:  cmdutil.NoArgs,
		RunE:  func(cmd *cobra.Command, args []string) error { return runConfigList(opts) },
	}
	get := &cobra.Command{
		Use:               "get KEY",
		Short:             "Print the value of a setting",
		Args:              cmdutil.ExactArgs(1, "one setting KEY"),
		ValidArgsFunction: complete,
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Key = args[0]
			return runConfigGet(opts)
		},
	}
	set := &cobra.Command{
		Use:               "set KEY VALUE",
		Short:             "Set a setting, checking its type and range",
		Args:              cmdutil.ExactArgs(2, "a setting KEY and a VALUE"),
		ValidArgsFunction: complete,
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Key, opts.Value = args[0], args[1]
			return runConfigSet(opts)
		},
	}
	unset := &cobra.Command{
		Use:               "unset KEY",
		Short:             "Return a setting to its default",
		Args:              cmdutil.ExactArgs(1, "one setting KEY"),
		ValidArgsFunction: complete,
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Key = args[0]
			return runConfigUnset(opts)
		},
	}
	return group("config", "Read and change global settings (CloudStack's names and defaults)", list, get, set, unset)
}

func runConfigList(opts *ConfigOptions) error {
	var vals []settings.Value
	if err := view(opts.F, func(tx state.Tx) (err error) { vals, err = settings.List(tx); return err }); err != nil {
		return err
	}
	if opts.F.JSON {
		return opts.F.PrintJSON(vals)
	}
	t := opts.F.IO.NewTable("KEY", "VALUE", "DEFAULT", "RANGE", "DESCRIPTION")
	for _, v := range vals {
		t.AddRow(v.Key, v.Value, v.Default, v.Range, v.Description)
	}
	return t.Render()
}

func runConfigGet(opts *ConfigOptions) error {
	if _, err := settings.Lookup(opts.Key); err != nil {
		return errs.Refused(err)
	}
	var v settings.Value
	if err := view(opts.F, func(tx state.Tx) (err error) { v, err = settings.Get(tx, opts.Key); return err }); err != nil {
		return err
	}
	if opts.F.JSON {
		return opts.F.PrintJSON(v)
	}
	_, err := fmt.Fprintln(opts.F.IO.Out, v.Value)
	return err
}

func runConfigSet(opts *ConfigOptions) error {
	// Checked before the state file is opened, so a typo never touches it.
	k, err := settings.Lookup(opts.Key)
	if err != nil {
		return errs.Refused(err)
	}
	if _, err := k.Normalize(opts.Value); err != nil {
		return errs.Refused(err)
	}
	var v settings.Value
	if err := update(opts.F, func(tx state.Tx) (err error) { v, err = settings.Set(tx, opts.Key, opts.Value); return err }); err != nil {
		return err
	}
	return done(opts.F, v, "%s = %s", v.Key, v.Value)
}

func runConfigUnset(opts *ConfigOptions) error {
	if _, err := settings.Lookup(opts.Key); err != nil {
		return errs.Refused(err)
	}
	var v settings.Value
	if err := update(opts.F, func(tx state.Tx) (err error) { v, err = settings.Unset(tx, opts.Key); return err }); err != nil {
		return err
	}
	return done(opts.F, v, "%s = %s (default)", v.Key, v.Value)
}
