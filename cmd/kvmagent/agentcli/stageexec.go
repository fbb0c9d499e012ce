package agentcli

import (
	"github.com/spf13/cobra"

	"github.com/kvmctl/kvmctl/pkg/hooks"
)

// newStageExecCmd is the hidden subcommand the hooks service executor starts, detached from the
// agent, to run one stage script (see hooks.StageExecMain).
func newStageExecCmd() *cobra.Command {
	return &cobra.Command{
		Use:                hooks.StageExecCommand + " SPEC",
		Short:              "Run one stage script (started by the agent itself)",
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if code := hooks.StageExecMain(args); code != 0 {
				// StageExecMain printed why.
				return errSilent
			}
			return nil
		},
	}
}
