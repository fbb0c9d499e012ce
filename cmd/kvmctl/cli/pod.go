package cli

import (
	"github.com/spf13/cobra"

	"github.com/kvmctl/kvmctl/pkg/cmdutil"
	"github.com/kvmctl/kvmctl/pkg/inventory"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// PodOptions are the inputs of the `kvmctl pod` subcommands.
type PodOptions struct {
	F    *cmdutil.Factory
	Name string
	Zone string
}

func newPodCmd(f *cmdutil.Factory) *cobra.Command {
	opts := &PodOptions{F: f}
	add := &cobra.Command{
		Use:   "add NAME --zone ZONE",
		Short: "Add a pod to a zone",
		Args:  cmdutil.ExactArgs(1, "one pod NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Name = args[0]
			return runPodAdd(opts)
		},
	}
	add.Flags().StringVar(&opts.Zone, "zone", "", "zone of the pod (required)")
	_ = add.MarkFlagRequired("zone")
	list := &cobra.Command{
		Use:   "list [--zone ZONE]",
		Short: "List pods",
		Args:  cmdutil.NoArgs,
		RunE:  func(cmd *cobra.Command, args []string) error { return runPodList(opts) },
	}
	list.Flags().StringVar(&opts.Zone, "zone", "", "only pods of this zone")
	rm := &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a pod that has no clusters",
		Args:  cmdutil.ExactArgs(1, "one pod NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Name = args[0]
			return runPodRm(opts)
		},
	}
	return group("pod", "Add, list and remove pods", add, list, rm)
}

func runPodAdd(opts *PodOptions) error {
	var p state.Pod
	err := update(opts.F, func(tx state.Tx) (err error) {
		p, err = inventory.AddPod(tx, opts.Name, opts.Zone)
		return err
	})
	if err != nil {
		return err
	}
	return done(opts.F, p, "added pod %s to zone %s", p.Name, p.Zone)
}

func runPodList(opts *PodOptions) error {
	var pods []state.Pod
	if err := view(opts.F, func(tx state.Tx) error {
		all, err := state.Pods(tx)
		for _, p := range all {
			if opts.Zone == "" || p.Zone == opts.Zone {
				pods = append(pods, p)
			}
		}
		return err
	}); err != nil {
		return err
	}
	if opts.F.JSON {
		return opts.F.PrintJSON(nonNil(pods))
	}
	t := opts.F.IO.NewTable("NAME", "ZONE")
	for _, p := range pods {
		t.AddRow(p.Name, p.Zone)
	}
	return t.Render()
}

func runPodRm(opts *PodOptions) error {
	if err := update(opts.F, func(tx state.Tx) error { return inventory.RemovePod(tx, opts.Name) }); err != nil {
		return err
	}
	return done(opts.F, map[string]string{"removed": opts.Name, "kind": "pod"}, "removed pod %s", opts.Name)
}
