package cli

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kvmctl/kvmctl/pkg/cmdutil"
	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/holds"
	"github.com/kvmctl/kvmctl/pkg/inventory"
	"github.com/kvmctl/kvmctl/pkg/orchestrate"
	"github.com/kvmctl/kvmctl/pkg/sshx"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// HostOptions are the inputs of the `kvmctl host` subcommands.
type HostOptions struct {
	F       *cmdutil.Factory
	Name    string
	Host    state.Host
	Tags    []string
	Cluster string // list filter
}

func newHostCmd(f *cmdutil.Factory) *cobra.Command {
	opts := &HostOptions{F: f}
	add := &cobra.Command{
		Use:   "add NAME --cluster C --address H:P",
		Short: "Add a host running kvmagent",
		Example: `  kvmctl host add kvm01 --cluster c1 --address 10.0.0.11:9250 --tags ssd,gpu \
    --ssh-user root --ssh-key ~/.ssh/id_ed25519 --ssh-known-hosts ~/.ssh/known_hosts`,
		Args: cmdutil.ExactArgs(1, "one host NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Host.Name = args[0]
			opts.Host.Tags = splitList(opts.Tags)
			return runHostAdd(opts)
		},
	}
	fl := add.Flags()
	fl.StringVar(&opts.Host.Cluster, "cluster", "", "cluster of the host (required)")
	fl.StringVar(&opts.Host.Address, "address", "", "host:port of the host's kvmagent (required)")
	fl.StringSliceVar(&opts.Tags, "tags", nil, "host tags, comma-separated")
	fl.StringVar(&opts.Host.SSH.User, "ssh-user", "", "SSH user kvmctl may log in as to restart the agent")
	fl.IntVar(&opts.Host.SSH.Port, "ssh-port", 0, "SSH port (default 22)")
	fl.StringVar(&opts.Host.SSH.KeyFile, "ssh-key", "", "SSH private key file")
	fl.StringVar(&opts.Host.SSH.KnownHostsFile, "ssh-known-hosts", "", "known_hosts file that holds the host's SSH key")
	fl.StringVar(&opts.Host.RestartCommand, "restart-command", "", "command that restarts the agent over SSH (default: systemctl restart kvmagent)")
	_ = add.MarkFlagRequired("cluster")
	_ = add.MarkFlagRequired("address")

	list := &cobra.Command{
		Use:   "list [--cluster C]",
		Short: "List hosts",
		Args:  cmdutil.NoArgs,
		RunE:  func(cmd *cobra.Command, args []string) error { return runHostList(opts) },
	}
	list.Flags().StringVar(&opts.Cluster, "cluster", "", "only hosts of this cluster")
	show := &cobra.Command{
		Use:   "show NAME",
		Short: "Show one host",
		Args:  cmdutil.ExactArgs(1, "one host NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Name = args[0]
			return runHostShow(opts)
		},
	}
	rm := &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a host from the inventory",
		Args:  cmdutil.ExactArgs(1, "one host NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Name = args[0]
			return runHostRm(opts)
		},
	}
	return group("host", "Add, list, show, change, remove and check hosts", add, list, show, newHostSetCmd(f), rm, newHostStatusCmd(f))
}

func runHostAdd(opts *HostOptions) error {
	var h state.Host
	err := update(opts.F, func(tx state.Tx) (err error) {
		h, err = inventory.AddHost(tx, opts.Host)
		return err
	})
	if err != nil {
		return err
	}
	return done(opts.F, h, "added host %s to cluster %s at %s", h.Name, h.Cluster, h.Address)
}

func runHostList(opts *HostOptions) error {
	var hosts []state.Host
	if err := view(opts.F, func(tx state.Tx) error {
		all, err := state.Hosts(tx)
		for _, h := range all {
			if opts.Cluster == "" || h.Cluster == opts.Cluster {
				hosts = append(hosts, h)
			}
		}
		return err
	}); err != nil {
		return err
	}
	// The order runs take them: cluster by cluster, names as people count (h2 before h10).
	inventory.SortHosts(hosts)
	if opts.F.JSON {
		return opts.F.PrintJSON(nonNil(hosts))
	}
	t := opts.F.IO.NewTable("NAME", "ZONE", "POD", "CLUSTER", "ADDRESS", "TAGS", "STATE")
	for _, h := range hosts {
		t.AddRow(h.Name, h.Zone, h.Pod, h.Cluster, h.Address, strings.Join(h.Tags, ","), h.ResourceState)
	}
	return t.Render()
}

func runHostShow(opts *HostOptions) error {
	var h hostView
	if err := view(opts.F, func(tx state.Tx) (err error) {
		h.Host, err = state.GetHost(tx, opts.Name)
		if state.IsNotFound(err) {
			return inventory.NotFound("host", opts.Name, "hosts")
		}
		if err != nil {
			return err
		}
		h.HostStatus, err = state.GetHostStatus(tx, opts.Name)
		return err
	}); err != nil {
		return err
	}
	if opts.F.JSON {
		return opts.F.PrintJSON(h)
	}
	w := opts.F.IO.Out
	row := func(k, v string) {
		if v == "" {
			v = "-"
		}
		fmt.Fprintf(w, "%-16s %s\n", k+":", v)
	}
	row("name", h.Name)
	row("zone", h.Zone)
	row("pod", h.Pod)
	row("cluster", h.Cluster)
	row("address", h.Address)
	row("tags", strings.Join(h.Tags, ","))
	row("resource state", h.ResourceState)
	if h.Lab {
		row("lab", "yes: made by `kvmctl lab up`; its VMs move by transfer through kvmctl")
	}
	if h.StateReason != "" {
		row("state reason", h.StateReason)
	}
	now := opts.F.Now()
	if h.Connection == "" {
		row("connection", "never checked (run `kvmctl host status "+h.Name+"`)")
	} else {
		row("connection", h.Connection+", checked "+opts.F.IO.Time(h.CheckedAt, now))
		row("last seen", opts.F.IO.Time(h.LastSeen, now))
		row("agent state", h.AgentState)
		row("agent version", h.AgentVersion)
		row("boot id", h.BootID)
		row("capacity", fmt.Sprintf("%d CPUs, %s", h.Capacity.CPUs, gib(h.Capacity.MemoryMiB)))
		row("allocated", fmt.Sprintf("%d CPUs, %s", h.Allocation.CPUs, gib(h.Allocation.MemoryMiB)))
		if h.LastError != "" {
			row("last error", firstLine(h.LastError))
		}
		for _, vm := range h.VMs {
			row("vm", fmt.Sprintf("%s (%s, %d vCPU, %s)", vm.Name, vm.State, vm.VCPUs, gib(vm.MemoryMiB)))
		}
	}
	if !h.SSH.IsZero() {
		row("ssh", sshString(h.SSH))
		row("ssh key", h.SSH.KeyFile)
		row("ssh known_hosts", h.SSH.KnownHostsFile)
		cmd := h.RestartCommand
		if cmd == "" {
			cmd = sshx.DefaultRestartCommand + " (default)"
		}
		row("restart command", cmd)
	}
	return nil
}

func sshString(s state.SSH) string {
	port := s.Port
	if port == 0 {
		port = 22
	}
	user := s.User
	if user == "" {
		user = "root"
	}
	return fmt.Sprintf("user %s, port %d", user, port)
}

func runHostRm(opts *HostOptions) error {
	if err := update(opts.F, func(tx state.Tx) error {
		if err := hostFree(tx, opts.Name); err != nil {
			return err
		}
		return inventory.RemoveHost(tx, opts.Name)
	}); err != nil {
		return err
	}
	return done(opts.F, map[string]string{"removed": opts.Name, "kind": "host"}, "removed host %s", opts.Name)
}

func itoa(n int) string { return strconv.Itoa(n) }

// HostSetOptions are the inputs of `kvmctl host set`.
type HostSetOptions struct {
	F     *cmdutil.Factory
	Name  string
	Set   state.Host
	Tags  []string
	Flags func(name string) bool // whether the operator gave flag name
}

func newHostSetCmd(f *cmdutil.Factory) *cobra.Command {
	opts := &HostSetOptions{F: f}
	c := &cobra.Command{
		Use:   "set NAME [--address H:P] [--tags a,b] [--ssh-user U] [--ssh-port N] [--ssh-key F] [--ssh-known-hosts F] [--restart-command CMD]",
		Short: "Change fields of a host; only the flags given change",
		Example: `  kvmctl host set kvm01 --ssh-user root --ssh-key ~/.ssh/id_ed25519 --ssh-known-hosts ~/.ssh/known_hosts
  kvmctl host set kvm01 --tags ssd,gpu`,
		Args: cmdutil.ExactArgs(1, "one host NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Name = args[0]
			opts.Flags = func(name string) bool { return cmd.Flags().Changed(name) }
			if cmd.Flags().NFlag() == 0 {
				return errs.Refusedf("give at least one field to change: `kvmctl host set --help` lists them")
			}
			opts.Set.Tags = splitList(opts.Tags)
			return runHostSet(opts)
		},
	}
	fl := c.Flags()
	fl.StringVar(&opts.Set.Address, "address", "", "host:port of the host's kvmagent")
	fl.StringSliceVar(&opts.Tags, "tags", nil, "host tags, comma-separated (replaces the old ones)")
	fl.StringVar(&opts.Set.SSH.User, "ssh-user", "", "SSH user kvmctl may log in as to restart the agent")
	fl.IntVar(&opts.Set.SSH.Port, "ssh-port", 0, "SSH port")
	fl.StringVar(&opts.Set.SSH.KeyFile, "ssh-key", "", "SSH private key file")
	fl.StringVar(&opts.Set.SSH.KnownHostsFile, "ssh-known-hosts", "", "known_hosts file that holds the host's SSH key")
	fl.StringVar(&opts.Set.RestartCommand, "restart-command", "", "command that restarts the agent over SSH")
	return c
}

func runHostSet(opts *HostSetOptions) error {
	var h state.Host
	err := update(opts.F, func(tx state.Tx) (err error) {
		if err := hostFree(tx, opts.Name); err != nil {
			return err
		}
		h, err = inventory.UpdateHost(tx, opts.Name, func(h *state.Host) {
			set := func(flag string, dst *string, v string) {
				if opts.Flags(flag) {
					*dst = v
				}
			}
			set("address", &h.Address, opts.Set.Address)
			set("ssh-user", &h.SSH.User, opts.Set.SSH.User)
			set("ssh-key", &h.SSH.KeyFile, opts.Set.SSH.KeyFile)
			set("ssh-known-hosts", &h.SSH.KnownHostsFile, opts.Set.SSH.KnownHostsFile)
			set("restart-command", &h.RestartCommand, opts.Set.RestartCommand)
			if opts.Flags("ssh-port") {
				h.SSH.Port = opts.Set.SSH.Port
			}
			if opts.Flags("tags") {
				h.Tags = opts.Set.Tags
			}
		})
		return err
	})
	if err != nil {
		return err
	}
	return done(opts.F, h, "updated host %s", h.Name)
}

// hostFree refuses a change to host name while a run, a maintenance action or a fence holds it or
// its cluster: the holder reads the host's record as it goes. An unknown host is left to the
// change, which says so.
func hostFree(tx state.Tx, name string) error {
	h, err := state.GetHost(tx, name)
	if err != nil {
		return nil
	}
	return orchestrate.Free(tx, holds.Local(), holds.Host(name), holds.Cluster(h.Cluster))
}
