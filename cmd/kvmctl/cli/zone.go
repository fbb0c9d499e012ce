package cli

import (
	"github.com/spf13/cobra"

	"github.com/kvmctl/kvmctl/pkg/cmdutil"
	"github.com/kvmctl/kvmctl/pkg/inventory"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// ZoneOptions are the inputs of the `kvmctl zone` subcommands.
type ZoneOptions struct {
	F    *cmdutil.Factory
	Name string
}

func newZoneCmd(f *cmdutil.Factory) *cobra.Command {
	opts := &ZoneOptions{F: f}
	add := &cobra.Command{
		Use:   "add NAME",
		Short: "Add a zone",
		Args:  cmdutil.ExactArgs(1, "one zone NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Name = args[0]
			return runZoneAdd(opts)
		},
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List zones",
		Args:  cmdutil.NoArgs,
		RunE:  func(cmd *cobra.Command, args []string) error { return runZoneList(opts) },
	}
	rm := &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a zone that has no pods",
		Args:  cmdutil.ExactArgs(1, "one zone NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Name = args[0]
			return runZoneRm(opts)
		},
	}
	return group("zone", "Add, list and remove zones", add, list, rm)
}

func runZoneAdd(opts *ZoneOptions) error {
	var z state.Zone
	err := update(opts.F, func(tx state.Tx) (err error) {
		z, err = inventory.AddZone(tx, opts.Name)
		return err
	})
	if err != nil {
		return err
	}
	return done(opts.F, z, "added zone %s", z.Name)
}

func runZoneList(opts *ZoneOptions) error {
	var zones []state.Zone
	if err := view(opts.F, func(tx state.Tx) (err error) { zones, err = state.Zones(tx); return err }); err != nil {
		return err
	}
	if opts.F.JSON {
		return opts.F.PrintJSON(nonNil(zones))
	}
	t := opts.F.IO.NewTable("NAME")
	for _, z := range zones {
		t.AddRow(z.Name)
	}
	return t.Render()
}

func runZoneRm(opts *ZoneOptions) error {
	if err := update(opts.F, func(tx state.Tx) error { return inventory.RemoveZone(tx, opts.Name) }); err != nil {
		return err
	}
	return done(opts.F, map[string]string{"removed": opts.Name, "kind": "zone"}, "removed zone %s", opts.Name)
}

// nonNil makes an empty list print as [] rather than null in JSON.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
