package agentcli

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/kvmctl/kvmctl/pkg/buildinfo"
)

func newVersionCmd(stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print kvmagent's version",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			_, err := fmt.Fprintf(stdout, "kvmagent %s\n", buildinfo.String())
			return err
		},
	}
}
