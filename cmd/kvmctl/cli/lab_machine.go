package cli

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/kvmctl/kvmctl/pkg/cmdutil"
	"github.com/kvmctl/kvmctl/pkg/lab"
)

// LabMachineOptions are the inputs of the hidden `kvmctl lab machine DIR HOST`, the process that
// simulates one lab host: `lab up` (and `lab start-agent` on a lab that is down) starts it.
type LabMachineOptions struct {
	F    *cmdutil.Factory
	Dir  string
	Host string
}

func newLabMachineCmd(f *cmdutil.Factory) *cobra.Command {
	opts := &LabMachineOptions{F: f}
	return &cobra.Command{
		Use:    "machine DIR HOST",
		Short:  "Run one lab host's simulated machine: its power, agent, VM disk writes, BMC and proxy (started by `lab up`)",
		Hidden: true,
		Args:   cmdutil.ExactArgs(2, "the lab's DIR and one HOST"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Dir, opts.Host = args[0], args[1]
			return runLabMachine(opts)
		},
	}
}

// runLabMachine runs until SIGTERM or SIGINT (`lab down`). Its log is its stderr, which `lab up`
// points at DIR/hosts/HOST/machine.log: a daemon's, unbuffered, not the command's output streams.
func runLabMachine(opts *LabMachineOptions) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return lab.RunMachine(ctx, opts.Dir, opts.Host, os.Stderr)
}
