package cli

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvmctl/kvmctl/pkg/cmdutil"
	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/lab"
)

// LabOptions are the inputs of the `kvmctl lab` subcommands.
type LabOptions struct {
	F       *cmdutil.Factory
	Up      lab.Options
	Dir     string
	Purge   bool
	Host    string
	Timeout time.Duration
}

func newLabCmd(f *cmdutil.Factory) *cobra.Command {
	opts := &LabOptions{F: f, Timeout: 60 * time.Second}
	dirFlag := func(c *cobra.Command) {
		c.Flags().StringVar(&opts.Dir, "dir", "./kvmlab", "the lab's directory")
	}
	up := &cobra.Command{
		Use:   "up [--hosts N] [--clusters M] [--vms K] [--dir DIR]",
		Short: "Build a fleet on this machine: a simulated machine, agent and BMC per host",
		Long: `Up builds a whole fleet in DIR: its own state file and PKI, zone z1, pod p1, clusters c1..cM
and hosts h1..hN in contiguous blocks. Each host is a simulated machine (a process of its own that
outlives this command) running a kvmagent on a 127.0.0.1 port, with libvirt's test driver holding
K running VMs (1 vCPU, 1 GiB) whose disks are files in DIR/shared that the machine writes to every
second, as guests would. Each machine has a BMC that speaks IPMI (lanplus and lan) on a 127.0.0.1
UDP port, with a user and password of its own (DIR/hosts/hN/bmc.password); the inventory holds
every host's BMC settings, so fencing works at once. kvmctl reaches each agent through a proxy
of its machine, which ` + "`kvmctl lab partition`" + ` cuts. Hosts are sized so that any one host's VMs
fit on the others of its cluster.`,
		Args: cmdutil.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Up.Dir = opts.Dir
			return runLabUp(opts)
		},
	}
	up.Flags().IntVar(&opts.Up.Hosts, "hosts", 6, "number of hosts")
	up.Flags().IntVar(&opts.Up.Clusters, "clusters", 2, "number of clusters")
	up.Flags().IntVar(&opts.Up.VMs, "vms", 3, "running VMs per host")
	up.Flags().StringVar(&opts.Up.Agent, "agent", "", "kvmagent binary (default: beside kvmctl, else on PATH)")
	up.Flags().BoolVar(&opts.Up.AgentExecutor, "agent-executor", false, "run stage scripts inside each agent (rolling.maintenance.service.executor.disabled=true) instead of through kvmagent-stage")
	cmdutil.DurationVar(up.Flags(), &opts.Timeout, "timeout", opts.Timeout, "how long to wait for every agent to answer")
	dirFlag(up)

	status := &cobra.Command{
		Use:   "status [--dir DIR]",
		Short: "Show the lab's hosts: power, agent, BMC and faults",
		Args:  cmdutil.NoArgs,
		RunE:  func(cmd *cobra.Command, args []string) error { return runLabStatus(opts) },
	}
	dirFlag(status)
	down := &cobra.Command{
		Use:   "down [--purge] [--dir DIR]",
		Short: "Stop every machine the lab started (agents, BMCs, proxies); --purge also deletes DIR",
		Args:  cmdutil.NoArgs,
		RunE:  func(cmd *cobra.Command, args []string) error { return runLabDown(opts) },
	}
	down.Flags().BoolVar(&opts.Purge, "purge", false, "delete the lab's directory after stopping it")
	dirFlag(down)
	kill := &cobra.Command{
		Use:   "kill-agent HOST [--dir DIR]",
		Short: "SIGKILL a host's agent, as a crash of the agent alone would: the host and its VMs run on",
		Args:  cmdutil.ExactArgs(1, "one HOST"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Host = args[0]
			return runLabKillAgent(opts)
		},
	}
	dirFlag(kill)
	start := &cobra.Command{
		Use:   "start-agent HOST [--dir DIR]",
		Short: "Start a host's agent again (booting its machine if the lab is down) and wait until it answers",
		Args:  cmdutil.ExactArgs(1, "one HOST"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Host = args[0]
			return runLabStartAgent(opts)
		},
	}
	cmdutil.DurationVar(start.Flags(), &opts.Timeout, "timeout", opts.Timeout, "how long to wait for the agent to answer")
	dirFlag(start)
	children := append([]*cobra.Command{up, status, down, kill, start}, newLabFaultCmds(f)...)
	children = append(children, newLabMachineCmd(f))
	return group("lab", "A whole fleet on this machine: simulated machines with agents and BMCs, and faults to inject", children...)
}

func runLabUp(opts *LabOptions) error {
	if err := opts.Up.Validate(); err != nil {
		return err
	}
	if opts.Up.Agent == "" {
		a, err := lab.FindAgent()
		if err != nil {
			return err
		}
		opts.Up.Agent = a
	}
	if opts.Up.Machine == "" {
		mc, err := lab.FindMachine()
		if err != nil {
			return err
		}
		opts.Up.Machine = mc
	}
	if _, err := lab.Load(opts.Up.Dir); err == nil {
		return errs.Refusedf("a lab already exists in %s (`make demo` leaves one in ./kvmlab): use it, or `kvmctl lab down --purge --dir %s` first", opts.Up.Dir, opts.Up.Dir)
	}
	fmt.Fprintf(opts.F.IO.ErrOut, "building a lab of %d hosts in %d clusters, %d VMs each, in %s\n", opts.Up.Hosts, opts.Up.Clusters, opts.Up.VMs, opts.Up.Dir)
	ctx, cancel := context.WithTimeout(context.Background(), opts.Timeout)
	defer cancel()
	m, err := lab.Up(ctx, opts.Up)
	if err != nil {
		if m != nil {
			_ = lab.Down(m, false)
			return fmt.Errorf("%w\nthe lab's machines were stopped; its files are in %s (`kvmctl lab down --purge --dir %s` removes them)", err, m.Dir, opts.Dir)
		}
		return err
	}
	if opts.F.JSON {
		return opts.F.PrintJSON(labJSON(m))
	}
	w := opts.F.IO.Out
	fmt.Fprintf(w, "lab up in %s\n", m.Dir)
	if err := labTable(opts, m); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nPoint kvmctl at it:\n  export KVMCTL_STATE=%s\nthen try `kvmctl host status`. Stop it with `kvmctl lab down --dir %s` (--purge deletes it).\n", m.StatePath(), opts.Dir)
	return nil
}

type labHostJSON struct {
	Name         string `json:"name"`
	Cluster      string `json:"cluster"`
	Address      string `json:"address"`
	AgentAddress string `json:"agent_address"`
	// PID and Running are the agent's.
	PID            int        `json:"pid"`
	Running        bool       `json:"running"`
	AgentExit      string     `json:"agent_exit,omitempty"`
	MachinePID     int        `json:"machine_pid"`
	MachineRunning bool       `json:"machine_running"`
	Power          string     `json:"power"`
	BootID         string     `json:"boot_id,omitempty"`
	BMC            labBMCJSON `json:"bmc"`
	Faults         lab.Faults `json:"faults"`
	FaultList      []string   `json:"fault_list"`
	Dir            string     `json:"dir"`
}

// labBMCJSON is a host's BMC without its password (DIR/hosts/hN/bmc.password holds it).
type labBMCJSON struct {
	Address   string `json:"address"`
	Port      int    `json:"port"`
	Username  string `json:"username"`
	Interface string `json:"interface"`
}

func labJSON(m *lab.Manifest) map[string]any {
	st := lab.Status(m)
	hosts := make([]labHostJSON, len(st))
	for i, s := range st {
		h := s.Host
		mpid := 0
		if s.MachineRunning {
			mpid = h.MachinePID
		}
		hosts[i] = labHostJSON{Name: h.Name, Cluster: h.Cluster, Address: h.Address, AgentAddress: h.AgentAddress,
			PID: s.AgentPID, Running: s.AgentPID > 0, AgentExit: s.AgentExit, MachinePID: mpid, MachineRunning: s.MachineRunning,
			Power: s.Power, BootID: s.BootID, Faults: s.Faults, FaultList: nonNil(s.Faults.List()), Dir: h.Dir,
			BMC: labBMCJSON{Address: "127.0.0.1", Port: h.BMCPort, Username: h.BMCUser, Interface: "lanplus"}}
	}
	return map[string]any{"dir": m.Dir, "state": m.StatePath(), "hosts": hosts}
}

// labTable renders the lab's hosts: power "-" when the machine does not run (the lab is down).
func labTable(opts *LabOptions, m *lab.Manifest) error {
	t := opts.F.IO.NewTable("HOST", "CLUSTER", "ADDRESS", "POWER", "AGENT", "PID", "BMC", "FAULTS")
	for _, s := range lab.Status(m) {
		agent, pid := "stopped", "-"
		if s.AgentPID > 0 {
			agent, pid = "running", strconv.Itoa(s.AgentPID)
		}
		t.AddRow(s.Host.Name, s.Host.Cluster, s.Host.Address, s.Power, agent, pid, s.Host.BMCAddress(), strings.Join(s.Faults.List(), ","))
	}
	return t.Render()
}

func runLabStatus(opts *LabOptions) error {
	m, err := lab.Load(opts.Dir)
	if err != nil {
		return err
	}
	if opts.F.JSON {
		return opts.F.PrintJSON(labJSON(m))
	}
	fmt.Fprintf(opts.F.IO.ErrOut, "lab in %s (KVMCTL_STATE=%s)\n", m.Dir, m.StatePath())
	return labTable(opts, m)
}

func runLabDown(opts *LabOptions) error {
	m, err := lab.Load(opts.Dir)
	if err != nil {
		return err
	}
	if err := lab.Down(m, opts.Purge); err != nil {
		return err
	}
	what := "stopped"
	if opts.Purge {
		what = "stopped and removed"
	}
	return done(opts.F, map[string]any{"dir": m.Dir, "purged": opts.Purge}, "lab in %s %s", m.Dir, what)
}

// labHost loads the lab of --dir and the host the command names.
func labHost(opts *LabOptions) (*lab.Manifest, *lab.HostManifest, error) {
	m, err := lab.Load(opts.Dir)
	if err != nil {
		return nil, nil, err
	}
	h, err := m.Host(opts.Host)
	return m, h, err
}

func runLabKillAgent(opts *LabOptions) error {
	_, h, err := labHost(opts)
	if err != nil {
		return err
	}
	pid := lab.AgentPID(h)
	ctx, cancel := context.WithTimeout(context.Background(), opts.Timeout)
	defer cancel()
	msg, _, err := lab.MachineOp(ctx, h, "kill-agent", nil)
	if err != nil {
		return err
	}
	return done(opts.F, map[string]any{"host": h.Name, "pid": pid, "signal": "SIGKILL"}, "%s", msg)
}

func runLabStartAgent(opts *LabOptions) error {
	m, h, err := labHost(opts)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), opts.Timeout)
	defer cancel()
	if err := lab.StartHosts(ctx, m, []*lab.HostManifest{h}); err != nil {
		return err
	}
	pid := lab.AgentPID(h)
	return done(opts.F, map[string]any{"host": h.Name, "pid": pid, "address": h.Address}, "started the agent of %s (pid %d) on %s", h.Name, pid, h.Address)
}
