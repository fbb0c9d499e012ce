package cli

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/kvmctl/kvmctl/pkg/cmdutil"
	"github.com/kvmctl/kvmctl/pkg/pki"
)

// InitOptions are the inputs of `kvmctl init`.
type InitOptions struct {
	F *cmdutil.Factory
}

// InitResult is what `kvmctl init --json` prints.
type InitResult struct {
	StateFile string           `json:"state_file"`
	State     pki.Action       `json:"state"`
	PKIDir    string           `json:"pki_dir"`
	PKI       []pki.FileResult `json:"pki"`
}

func newInitCmd(f *cmdutil.Factory) *cobra.Command {
	opts := &InitOptions{F: f}
	return &cobra.Command{
		Use:   "init",
		Short: "Create the state file, the fleet CA and the operator certificate",
		Long: `Init creates the state file (mode 0600) and, in pki/ beside it, the fleet CA and the
operator's client certificate that every kvmagent requires. Run again, it overwrites nothing
and says what it kept.`,
		Args: cmdutil.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return runInit(opts) },
	}
}

func runInit(opts *InitOptions) error {
	st, err := opts.F.Store()
	if err != nil {
		return err
	}
	created, err := st.Create()
	if err != nil {
		return err
	}
	res := InitResult{StateFile: st.Path, State: pki.Kept, PKIDir: filepath.Join(filepath.Dir(st.Path), "pki")}
	if created {
		res.State = pki.Created
	}
	pr, err := pki.InitCA(res.PKIDir, opts.F.Now())
	if err != nil {
		return err
	}
	res.PKI = pr.Files
	if opts.F.JSON {
		return opts.F.PrintJSON(res)
	}
	w := opts.F.IO.Out
	fmt.Fprintf(w, "%-8s %s\n", res.State, res.StateFile)
	for _, f := range res.PKI {
		fmt.Fprintf(w, "%-8s %s\n", f.Action, f.Path)
	}
	if !created {
		fmt.Fprintln(w, "kvmctl was already initialized here; nothing was overwritten")
	}
	return nil
}
