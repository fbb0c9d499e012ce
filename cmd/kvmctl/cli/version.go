package cli

import (
	"runtime"

	"github.com/spf13/cobra"

	"github.com/kvmctl/kvmctl/pkg/buildinfo"
	"github.com/kvmctl/kvmctl/pkg/cmdutil"
)

// VersionOptions are the inputs of `kvmctl version`.
type VersionOptions struct {
	F *cmdutil.Factory
}

func newVersionCmd(f *cmdutil.Factory) *cobra.Command {
	opts := &VersionOptions{F: f}
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of kvmctl",
		Args:  cmdutil.NoArgs,
		RunE:  func(cmd *cobra.Command, args []string) error { return runVersion(opts) },
	}
}

func runVersion(opts *VersionOptions) error {
	v := map[string]string{"version": buildinfo.String(), "go": runtime.Version(), "os": runtime.GOOS, "arch": runtime.GOARCH}
	return done(opts.F, v, "kvmctl %s (%s %s/%s)", v["version"], v["go"], v["os"], v["arch"])
}
