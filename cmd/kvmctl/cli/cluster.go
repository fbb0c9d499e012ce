package cli

import (
	"github.com/spf13/cobra"

	"github.com/kvmctl/kvmctl/pkg/cmdutil"
	"github.com/kvmctl/kvmctl/pkg/holds"
	"github.com/kvmctl/kvmctl/pkg/inventory"
	"github.com/kvmctl/kvmctl/pkg/orchestrate"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// ClusterOptions are the inputs of the `kvmctl cluster` subcommands.
type ClusterOptions struct {
	F    *cmdutil.Factory
	Name string
	Pod  string
	Zone string
}

func newClusterCmd(f *cmdutil.Factory) *cobra.Command {
	opts := &ClusterOptions{F: f}
	add := &cobra.Command{
		Use:   "add NAME --pod POD",
		Short: "Add a cluster to a pod",
		Args:  cmdutil.ExactArgs(1, "one cluster NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Name = args[0]
			return runClusterAdd(opts)
		},
	}
	add.Flags().StringVar(&opts.Pod, "pod", "", "pod of the cluster (required)")
	_ = add.MarkFlagRequired("pod")
	list := &cobra.Command{
		Use:   "list [--zone ZONE] [--pod POD]",
		Short: "List clusters",
		Args:  cmdutil.NoArgs,
		RunE:  func(cmd *cobra.Command, args []string) error { return runClusterList(opts) },
	}
	list.Flags().StringVar(&opts.Zone, "zone", "", "only clusters of this zone")
	list.Flags().StringVar(&opts.Pod, "pod", "", "only clusters of this pod")
	rm := &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a cluster that has no hosts",
		Args:  cmdutil.ExactArgs(1, "one cluster NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Name = args[0]
			return runClusterRm(opts)
		},
	}
	setState := func(use, short, to string) *cobra.Command {
		return &cobra.Command{
			Use:   use + " NAME",
			Short: short,
			Args:  cmdutil.ExactArgs(1, "one cluster NAME"),
			RunE: func(cmd *cobra.Command, args []string) error {
				opts.Name = args[0]
				return runClusterSetState(opts, to)
			},
		}
	}
	return group("cluster", "Add, list, remove, enable and disable clusters", add, list, rm,
		setState("enable", "Enable a cluster: its hosts may receive VMs", state.Enabled),
		setState("disable", "Disable a cluster: no new VMs are placed on its hosts", state.Disabled))
}

func runClusterAdd(opts *ClusterOptions) error {
	var c state.Cluster
	err := update(opts.F, func(tx state.Tx) (err error) {
		c, err = inventory.AddCluster(tx, opts.Name, opts.Pod)
		return err
	})
	if err != nil {
		return err
	}
	return done(opts.F, c, "added cluster %s to pod %s (zone %s)", c.Name, c.Pod, c.Zone)
}

func runClusterList(opts *ClusterOptions) error {
	var clusters []state.Cluster
	hosts := map[string]int{}
	if err := view(opts.F, func(tx state.Tx) error {
		all, err := state.Clusters(tx)
		if err != nil {
			return err
		}
		for _, c := range all {
			if (opts.Zone == "" || c.Zone == opts.Zone) && (opts.Pod == "" || c.Pod == opts.Pod) {
				clusters = append(clusters, c)
			}
		}
		hs, err := state.Hosts(tx)
		for _, h := range hs {
			hosts[h.Cluster]++
		}
		return err
	}); err != nil {
		return err
	}
	if opts.F.JSON {
		return opts.F.PrintJSON(nonNil(clusters))
	}
	t := opts.F.IO.NewTable("NAME", "ZONE", "POD", "STATE", "HOSTS")
	for _, c := range clusters {
		t.AddRow(c.Name, c.Zone, c.Pod, c.ResourceState, itoa(hosts[c.Name]))
	}
	return t.Render()
}

func runClusterRm(opts *ClusterOptions) error {
	if err := update(opts.F, func(tx state.Tx) error {
		if err := orchestrate.Free(tx, holds.Local(), holds.Cluster(opts.Name)); err != nil {
			return err
		}
		return inventory.RemoveCluster(tx, opts.Name)
	}); err != nil {
		return err
	}
	return done(opts.F, map[string]string{"removed": opts.Name, "kind": "cluster"}, "removed cluster %s", opts.Name)
}

func runClusterSetState(opts *ClusterOptions, to string) error {
	var before string
	err := update(opts.F, func(tx state.Tx) (err error) {
		// A run, or a maintenance action, that holds the cluster restores its state itself.
		if err := orchestrate.Free(tx, holds.Local(), holds.Cluster(opts.Name)); err != nil {
			return err
		}
		before, err = inventory.SetClusterState(tx, opts.Name, to)
		return err
	})
	if err != nil {
		return err
	}
	v := map[string]string{"name": opts.Name, "resource_state": to, "previous_state": before}
	if before == to {
		return done(opts.F, v, "cluster %s was already %s", opts.Name, to)
	}
	return done(opts.F, v, "cluster %s: %s -> %s", opts.Name, before, to)
}

// clusterFree refuses a change to what every host of cluster name inherits (its BMC settings)
// while a run, a maintenance action or a fence holds the cluster or one of its hosts: the
// holder reads the settings as it goes.
func clusterFree(tx state.Tx, name string) error {
	subjects := []holds.Subject{holds.Cluster(name)}
	hosts, err := inventory.ClusterHosts(tx, name)
	if err != nil {
		return err
	}
	for _, h := range hosts {
		subjects = append(subjects, holds.Host(h.Name))
	}
	return orchestrate.Free(tx, holds.Local(), subjects...)
}
