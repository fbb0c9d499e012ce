package cli

import (
	"fmt"
	"net"

	"github.com/spf13/cobra"

	"github.com/kvmctl/kvmctl/pkg/cmdutil"
	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/pki"
)

// PKIOptions are the inputs of `kvmctl pki issue-agent`.
type PKIOptions struct {
	F    *cmdutil.Factory
	Host string
	Out  string
}

func newPKICmd(f *cmdutil.Factory) *cobra.Command {
	opts := &PKIOptions{F: f}
	issue := &cobra.Command{
		Use:   "issue-agent HOST --out DIR",
		Short: "Write agent.crt, agent.key and ca.crt for a host of the inventory",
		Long: `Issue-agent signs a server certificate for the host's kvmagent with the fleet CA. Its SANs
are the host's name and the host part of its address, so kvmctl can check it is talking to the
right host. Copy DIR to the host (e.g. /etc/kvmagent/tls) and point agent.properties at it.
Run again to renew: the agent's files in DIR are replaced, the CA never is.`,
		Args: cmdutil.ExactArgs(1, "one HOST"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Host = args[0]
			return runPKIIssueAgent(opts)
		},
	}
	issue.Flags().StringVar(&opts.Out, "out", "", "directory to write the files into (required)")
	_ = issue.MarkFlagRequired("out")
	return group("pki", "Manage the fleet's certificates", issue)
}

func runPKIIssueAgent(opts *PKIOptions) error {
	h, err := getHost(opts.F, opts.Host)
	if err != nil {
		return err
	}
	addrHost, _, err := net.SplitHostPort(h.Address)
	if err != nil {
		return errs.Refusedf("host %s has an invalid address %q: fix it with `kvmctl inventory apply`", h.Name, h.Address)
	}
	caDir, err := opts.F.PKIDir()
	if err != nil {
		return err
	}
	res, err := pki.IssueAgent(caDir, opts.Out, h.Name, []string{addrHost}, opts.F.Now())
	if err != nil {
		return err
	}
	if opts.F.JSON {
		return opts.F.PrintJSON(map[string]any{"host": h.Name, "sans": []string{h.Name, addrHost}, "files": res.Files})
	}
	for _, f := range res.Files {
		fmt.Fprintf(opts.F.IO.Out, "%-8s %s\n", f.Action, f.Path)
	}
	return nil
}
