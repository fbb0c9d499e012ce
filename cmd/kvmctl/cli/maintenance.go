package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/cmdutil"
	"github.com/kvmctl/kvmctl/pkg/orchestrate"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// MaintenanceOptions are the inputs of `kvmctl maintenance enable|cancel`.
type MaintenanceOptions struct {
	F      *cmdutil.Factory
	Host   string
	DryRun bool
}

func newMaintenanceCmd(f *cmdutil.Factory) *cobra.Command {
	opts := &MaintenanceOptions{F: f}
	enable := &cobra.Command{
		Use:   "enable HOST [--dry-run]",
		Short: "Move a host's VMs to the rest of its cluster and put it in maintenance",
		Long: `Enable plans where each running VM of HOST goes (same cluster; Enabled, Up hosts not in
maintenance; CPU and memory with the overprovisioning factors; host tags; affinity and
anti-affinity groups). If a VM fits nowhere it refuses and changes nothing. Otherwise the host
becomes PrepareForMaintenance, its agent enters hostInMaintenance (it stays connected and refuses
every VM operation), the VMs move (host.maintenance.max.parallel.migrations at a time) and the
host becomes Maintenance. A failure leaves it ErrorInMaintenance with the reason.`,
		Args: cmdutil.ExactArgs(1, "one HOST"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Host = args[0]
			return runMaintenanceEnable(opts)
		},
	}
	enable.Flags().BoolVar(&opts.DryRun, "dry-run", false, "print the plan and change nothing")
	cancel := &cobra.Command{
		Use:   "cancel HOST",
		Short: "Take a host out of maintenance (restarting a dead agent over SSH if allowed)",
		Long: `Cancel takes HOST out of maintenance. A connected agent is told to cancel, whatever
kvm.ssh.to.agent says. A disconnected agent is restarted over SSH (the host's restart command,
default "systemctl restart kvmagent"; key auth; the host key must be in the host's known_hosts
file) when kvm.ssh.to.agent is true, and cancel fails saying so when it is false.
VMs do not move back by themselves.`,
		Args: cmdutil.ExactArgs(1, "one HOST"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Host = args[0]
			return runMaintenanceCancel(opts)
		},
	}
	return group("maintenance", "Put hosts into maintenance mode and take them out", enable, cancel)
}

// maintenanceEngine wires the engine to the state file, the agents, SSH and the output; it also
// returns the agent clients, for engines built on top of it.
func maintenanceEngine(f *cmdutil.Factory) (*orchestrate.Maintenance, func(state.Host) (*api.Client, error), error) {
	st, err := f.Store()
	if err != nil {
		return nil, nil, err
	}
	clients, err := agentClients(f)
	if err != nil {
		return nil, nil, err
	}
	return &orchestrate.Maintenance{
		Store:  st,
		Dial:   func(h state.Host) (orchestrate.MaintenanceAgent, error) { return clients(h) },
		SSH:    sshRunner(),
		Events: progressSink(f),
		Clock:  f.Clock,
	}, clients, nil
}

func runMaintenanceEnable(opts *MaintenanceOptions) error {
	m, _, err := maintenanceEngine(opts.F)
	if err != nil {
		return err
	}
	res, err := m.Enable(context.Background(), opts.Host, orchestrate.EnableOptions{DryRun: opts.DryRun})
	if opts.F.JSON && (err == nil || errors.Is(err, orchestrate.ErrDoesNotFit) || res.ResourceState == state.ErrorInMaintenance) {
		if perr := opts.F.PrintJSON(res); perr != nil {
			return perr
		}
		if err != nil {
			fmt.Fprintf(opts.F.IO.ErrOut, "kvmctl: %v\n", err)
			return cmdutil.ErrSilent
		}
		return nil
	}
	if err != nil {
		return err
	}
	w := opts.F.IO.Out
	if opts.DryRun {
		fmt.Fprintf(w, "dry run: %s would enter maintenance; %s would move\n", res.Host, plural(len(res.Plan), "VM"))
	} else {
		fmt.Fprintf(w, "%s is in %s; %s moved\n", res.Host, res.ResourceState, plural(len(res.Migrated), "VM"))
	}
	if len(res.Plan) == 0 {
		return nil
	}
	t := opts.F.IO.NewTable("VM", "FROM", "TO")
	for _, p := range res.Plan {
		t.AddRow(p.VM, p.From, p.To)
	}
	return t.Render()
}

func runMaintenanceCancel(opts *MaintenanceOptions) error {
	m, _, err := maintenanceEngine(opts.F)
	if err != nil {
		return err
	}
	res, err := m.Cancel(context.Background(), opts.Host)
	if err != nil {
		return err
	}
	var how []string
	if res.AgentRestart != nil {
		how = append(how, fmt.Sprintf("its agent was restarted over SSH (%s)", res.AgentRestart.Command))
	}
	msg := fmt.Sprintf("%s is %s, its agent %s", res.Host, res.ResourceState, res.AgentState)
	if len(how) > 0 {
		msg += "; " + strings.Join(how, "; ")
	}
	return done(opts.F, res, "%s. VMs do not move back by themselves.", msg)
}
