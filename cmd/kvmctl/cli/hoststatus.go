package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvmctl/kvmctl/pkg/cmdutil"
	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/inventory"
	"github.com/kvmctl/kvmctl/pkg/orchestrate"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// HostStatusOptions are the inputs of `kvmctl host status`.
type HostStatusOptions struct {
	F       *cmdutil.Factory
	Names   []string
	Timeout time.Duration
}

// hostView is a host with what its agent last said, as `host show` and `host status` print it.
type hostView struct {
	state.Host
	state.HostStatus
}

func newHostStatusCmd(f *cmdutil.Factory) *cobra.Command {
	opts := &HostStatusOptions{F: f, Timeout: 5 * time.Second}
	c := &cobra.Command{
		Use:   "status [NAME...]",
		Short: "Ask every (or the named) host's agent for its status, all at once",
		Long: `Status asks the agents over mutual TLS, concurrently, each within --timeout, and records
what they said in the state file: connection (Up or Disconnected), last seen, agent state, boot
id, capacity and VMs. A host that does not answer keeps what was last known of it.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Names = args
			return runHostStatus(opts)
		},
	}
	cmdutil.DurationVar(c.Flags(), &opts.Timeout, "timeout", opts.Timeout, "how long to wait for each agent")
	return c
}

func runHostStatus(opts *HostStatusOptions) error {
	if opts.Timeout <= 0 {
		return errs.Refusedf("--timeout %s: must be positive, e.g. 5s", opts.Timeout)
	}
	var hosts []state.Host
	prev := map[string]state.HostStatus{}
	// Read, let go of the file, then talk to the agents: nobody waits on us meanwhile.
	if err := view(opts.F, func(tx state.Tx) error {
		all, err := state.Hosts(tx)
		if err != nil {
			return err
		}
		byName := map[string]state.Host{}
		for _, h := range all {
			byName[h.Name] = h
		}
		if len(opts.Names) == 0 {
			hosts = all
		}
		for _, n := range opts.Names {
			h, ok := byName[n]
			if !ok {
				return inventory.NotFound("host", n, "hosts")
			}
			hosts = append(hosts, h)
		}
		for _, h := range hosts {
			s, err := state.GetHostStatus(tx, h.Name)
			if err != nil {
				return err
			}
			prev[h.Name] = s
		}
		return nil
	}); err != nil {
		return err
	}
	clients, err := agentClients(opts.F)
	if err != nil {
		return err
	}
	dial := func(h state.Host) (orchestrate.StatusClient, error) { return clients(h) }
	checks := orchestrate.CheckHosts(context.Background(), hosts, prev, dial, opts.F.Clock, opts.Timeout)
	if err := update(opts.F, func(tx state.Tx) error {
		for _, c := range checks {
			// A host removed while we asked is not brought back by its status.
			if _, err := state.GetHost(tx, c.Host.Name); state.IsNotFound(err) {
				continue
			}
			if err := state.PutHostStatus(tx, c.Host.Name, c.Status); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return err
	}
	// Keep the VMs' definitions HA needs to start them elsewhere; what could not be kept is
	// said on stderr, and changes nothing of the status.
	if st, err := opts.F.Store(); err == nil {
		defDial := func(h state.Host) (orchestrate.DefinitionClient, error) { return clients(h) }
		for _, p := range orchestrate.KeepDefinitions(context.Background(), st, checks, defDial, opts.F.Clock, opts.Timeout) {
			fmt.Fprintf(opts.F.IO.ErrOut, "kvmctl: warning: VM definition: %s\n", p)
		}
	}
	views := make([]hostView, len(checks))
	silent := 0
	for i, c := range checks {
		views[i] = hostView{Host: c.Host, HostStatus: c.Status}
		if c.Err != nil {
			silent++
		}
	}
	// Exit 1 when an agent did not answer, so that scripts and monitors can rely on the code.
	failed := func() error {
		if silent == 0 {
			return nil
		}
		if !opts.F.JSON {
			fmt.Fprintf(opts.F.IO.ErrOut, "kvmctl: %d of %d agents did not answer\n", silent, len(checks))
		}
		return cmdutil.ErrSilent
	}
	if opts.F.JSON {
		if err := opts.F.PrintJSON(views); err != nil {
			return err
		}
		return failed()
	}
	now := opts.F.Now()
	t := opts.F.IO.NewTable("NAME", "CLUSTER", "STATE", "CONNECTION", "AGENT STATE", "VMS", "CPU", "MEMORY", "LAST SEEN")
	for _, v := range views {
		agent := v.AgentState
		if v.Connection != state.ConnUp && agent != "" {
			agent = "last: " + agent
		}
		t.AddRow(v.Name, v.Cluster, v.ResourceState, v.Connection, agent, fmt.Sprint(runningVMs(v.VMs)),
			fmt.Sprintf("%d/%d", v.Allocation.CPUs, v.Capacity.CPUs),
			fmt.Sprintf("%s/%s", gib(v.Allocation.MemoryMiB), gib(v.Capacity.MemoryMiB)),
			opts.F.IO.Time(v.LastSeen, now))
	}
	if err := t.Render(); err != nil {
		return err
	}
	for _, c := range checks {
		if c.Err != nil {
			fmt.Fprintf(opts.F.IO.ErrOut, "%s: %s\n", c.Host.Name, firstLine(c.Err.Error()))
		}
	}
	return failed()
}

func runningVMs(vms []state.VMRecord) int {
	n := 0
	for _, vm := range vms {
		if vm.State == "running" {
			n++
		}
	}
	return n
}

func gib(mib uint64) string {
	if mib%1024 == 0 {
		return fmt.Sprintf("%dG", mib/1024)
	}
	return fmt.Sprintf("%.1fG", float64(mib)/1024)
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
