package cli

import (
	"context"

	"github.com/kvmctl/kvmctl/pkg/orchestrate"
)

func followRunTUI(ctx context.Context, opts *RollingOptions, r *orchestrate.Rolling, do func(context.Context) (orchestrate.RunResult, error)) error {
	opts.NoTUI = true
	return followRun(opts, r, do)
}
