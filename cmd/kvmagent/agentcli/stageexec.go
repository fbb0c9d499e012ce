package agentcli

import (
	"github.com/spf13/cobra"

	"github.com/kvmctl/kvmctl/pkg/hooks"
)

// newStageExecCmd is the hidden subcommand that runs one stage script detached from the agent
// (hooks.StageExecMain), as kvmagent-stage does: the service executor starts it where
// kvmagent-stage is missing, and an agent upgraded in place may find stages that its older
// binary started this way.
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
