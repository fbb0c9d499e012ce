package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvmctl/kvmctl/pkg/cmdutil"
	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/lab"
)

// LabFaultOptions are the inputs of the lab's fault commands (`kvmctl lab crash HOST`, ...):
// each is one operation of the host's machine.
type LabFaultOptions struct {
	F   *cmdutil.Factory
	Dir string
	// Fault is the command: its machine operation and words.
	Fault labFault
	Host  string
	// All applies the fault to every host that does not have it yet (storage faults only).
	All     bool
	Timeout time.Duration
}

// labFault is one fault command.
type labFault struct {
	// op is the machine operation (lab.MachineOp), and the command's name.
	op          string
	short, long string
	// all: the command takes --all; has says whether a host is already in the state the
	// command brings (--all skips it); allDone is the line for --all, given the hosts.
	all     bool
	has     func(lab.HostStatus) bool
	allDone string
	// waitAgent: the command boots the host; it waits until the agent answers.
	waitAgent bool
}

var labFaults = []labFault{
	{op: "crash", short: "Cut a host's power: agent and VMs gone, nothing written to the shared storage any more",
		long: `Crash cuts the host's power, as a power supply failure would: its agent is killed, its VMs stop
(the test driver's node file shows them shut off), nothing more is written to DIR/shared (no
heartbeat, no guest I/O), and kvmctl's connections to it hang. Its BMC still answers: power off.
` + "`kvmctl lab power-on HOST`" + ` (or the BMC's power on) boots it again.`},
	{op: "power-on", waitAgent: true, short: "Boot a host that is off: a new boot id, its agent started, its VMs shut off until started",
		long: `Power-on boots a host that is off, as its power button would: the host gets a new boot id, its
agent starts (this waits until it answers), and its VMs stay shut off until something starts them.`},
	{op: "partition", short: "Cut the network between kvmctl and a host's agent; the host runs on",
		long: `Partition cuts the link between kvmctl and the host's agent: connections to the inventory's
address of the host (the host's proxy) hang, as over a dead network. The host, its agent and its
VMs run on and keep writing to the shared storage. ` + "`kvmctl lab heal HOST`" + ` ends it.`},
	{op: "heal", short: "End a host's partition: kvmctl reaches its agent again"},
	{op: "storage-stall", all: true, has: func(s lab.HostStatus) bool { return s.Faults.StorageStalled },
		allDone: "stalled the shared storage of %s: heartbeats and VM disk writes block; the agents still answer",
		short:   "Stall a host's shared storage: its heartbeat and VM disk writes block, its agent still answers",
		long: `Storage-stall makes the host's I/O to DIR/shared hang, as a hung NFS server would: its agent's
heartbeat write blocks (agent.properties lab.storage.stall.file), so its /v1/health says the
heartbeat is stuck, the reads of the activity checks it is asked for hang too (an error per file
after their deadline), and its VMs' guest I/O stops, while the agent answers kvmctl. --all stalls
every host, as an NFS outage would.
` + "`kvmctl lab storage-resume HOST|--all`" + ` ends it.`},
	{op: "storage-resume", all: true, has: func(s lab.HostStatus) bool { return !s.Faults.StorageStalled },
		allDone: "resumed the shared storage of %s: heartbeats and VM disks are written again",
		short:   "End a host's storage stall: its heartbeat and VM disks are written again"},
	{op: "bmc-down", short: "Make a host's BMC stop answering (IPMI times out); the host is not touched"},
	{op: "bmc-off-fails", short: "Make a host's BMC answer every power off with an error, and power off all the same"},
	{op: "bmc-up", short: "Clear a host's BMC faults: it answers, and does what it is told"},
}

func newLabFaultCmds(f *cmdutil.Factory) []*cobra.Command {
	var cmds []*cobra.Command
	for _, fault := range labFaults {
		opts := &LabFaultOptions{F: f, Fault: fault, Timeout: 60 * time.Second}
		use := fault.op + " HOST [--dir DIR]"
		if fault.all {
			use = fault.op + " HOST|--all [--dir DIR]"
		}
		c := &cobra.Command{
			Use:   use,
			Short: fault.short,
			Long:  fault.long,
			Args: func(cmd *cobra.Command, args []string) error {
				if fault.all && opts.All {
					return cmdutil.ExactArgs(0, "no HOST with --all")(cmd, args)
				}
				return cmdutil.ExactArgs(1, "one HOST")(cmd, args)
			},
			RunE: func(cmd *cobra.Command, args []string) error {
				if len(args) == 1 {
					opts.Host = args[0]
				}
				return runLabFault(opts)
			},
		}
		c.Flags().StringVar(&opts.Dir, "dir", "./kvmlab", "the lab's directory")
		if fault.all {
			c.Flags().BoolVar(&opts.All, "all", false, "every host of the lab")
		}
		if fault.waitAgent {
			cmdutil.DurationVar(c.Flags(), &opts.Timeout, "timeout", opts.Timeout, "how long to wait for the agent to answer")
		}
		cmds = append(cmds, c)
	}
	return cmds
}

func runLabFault(opts *LabFaultOptions) error {
	m, err := lab.Load(opts.Dir)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), opts.Timeout)
	defer cancel()
	if opts.All {
		return runLabFaultAll(ctx, opts, m)
	}
	h, err := m.Host(opts.Host)
	if err != nil {
		return err
	}
	msg, st, err := lab.MachineOp(ctx, h, opts.Fault.op, nil)
	if err != nil {
		return err
	}
	if opts.Fault.waitAgent {
		if err := lab.WaitReady(ctx, m, []*lab.HostManifest{h}); err != nil {
			return fmt.Errorf("%s, but: %w", msg, err)
		}
	}
	return done(opts.F, map[string]any{"host": h.Name, "operation": opts.Fault.op, "message": msg, "machine": st}, "%s", msg)
}

// runLabFaultAll applies the fault to every host that does not have it yet, and refuses when
// none is left.
func runLabFaultAll(ctx context.Context, opts *LabFaultOptions, m *lab.Manifest) error {
	var todo []*lab.HostManifest
	for _, s := range lab.Status(m) {
		if !s.MachineRunning {
			return errs.Refusedf("the machine of %s is not running (is the lab down?): `kvmctl lab start-agent %s` boots it again", s.Host.Name, s.Host.Name)
		}
		if !opts.Fault.has(s) {
			todo = append(todo, s.Host)
		}
	}
	if len(todo) == 0 {
		return errs.Refusedf("%s --all: every host of the lab in %s already is as it would make it", opts.Fault.op, m.Dir)
	}
	var names []string
	for _, h := range todo {
		if _, _, err := lab.MachineOp(ctx, h, opts.Fault.op, nil); err != nil {
			if len(names) > 0 {
				err = fmt.Errorf("%w (done before it on %s)", err, strings.Join(names, ", "))
			}
			return err
		}
		names = append(names, h.Name)
	}
	return done(opts.F, map[string]any{"hosts": names, "operation": opts.Fault.op}, opts.Fault.allDone, strings.Join(names, ", "))
}
