package cli

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kvmctl/kvmctl/pkg/cmdutil"
	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/inventory"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// InventoryOptions are the inputs of `kvmctl inventory apply|export`.
type InventoryOptions struct {
	F    *cmdutil.Factory
	File string
	Out  string
}

func newInventoryCmd(f *cmdutil.Factory) *cobra.Command {
	opts := &InventoryOptions{F: f}
	apply := &cobra.Command{
		Use:   "apply -f FILE.yaml",
		Short: "Create or update zones, pods, clusters and hosts from a YAML file, all or nothing",
		Long: `Apply validates the whole file first and writes it in one transaction: either everything
is applied or nothing is. Entities missing from the state are created (Enabled), hosts get the
file's address, tags and ssh settings, clusters and hosts with a bmc block get its BMC settings,
and nothing absent from the file is removed. Applying the same file twice changes nothing. Use
-f - to read standard input.

A bmc block never holds the password: password_file names a file that does (mode 0600; a
relative path is read from the YAML file's directory). A block without password_file keeps the
password kvmctl has; export writes no password.`,
		Args: cmdutil.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return runInventoryApply(opts) },
	}
	apply.Flags().StringVarP(&opts.File, "file", "f", "", "inventory YAML file, or - for standard input (required)")
	_ = apply.MarkFlagRequired("file")
	export := &cobra.Command{
		Use:   "export [-o FILE]",
		Short: "Write the inventory as YAML that `inventory apply` takes back unchanged",
		Args:  cmdutil.NoArgs,
		RunE:  func(cmd *cobra.Command, args []string) error { return runInventoryExport(opts) },
	}
	export.Flags().StringVarP(&opts.Out, "output", "o", "", "write to FILE instead of standard output")
	return group("inventory", "Apply or export the whole inventory as YAML", apply, export)
}

func runInventoryApply(opts *InventoryOptions) error {
	var (
		data []byte
		err  error
		name = opts.File
	)
	if opts.File == "-" {
		name = "<stdin>"
		data, err = io.ReadAll(opts.F.IO.In)
	} else {
		data, err = os.ReadFile(opts.File)
	}
	if err != nil {
		return errs.Refusedf("read inventory: %w", err)
	}
	parsed, err := inventory.Parse(name, data)
	if err != nil {
		return err
	}
	var sum inventory.Summary
	if err := update(opts.F, func(tx state.Tx) (err error) {
		if sum, err = inventory.Apply(tx, parsed); err != nil {
			return err
		}
		// Hosts the file changes must not be held: checked in the same transaction, so a
		// refusal rolls the whole file back.
		for _, h := range sum.UpdatedHosts {
			if err := hostFree(tx, h); err != nil {
				return fmt.Errorf("%s changes host %s: %w", name, h, err)
			}
		}
		for _, c := range sum.UpdatedClusters {
			if err := clusterFree(tx, c); err != nil {
				return fmt.Errorf("%s changes the BMC settings of cluster %s: %w", name, c, err)
			}
		}
		return nil
	}); err != nil {
		return err
	}
	if opts.F.JSON {
		return opts.F.PrintJSON(sum)
	}
	_, err = fmt.Fprintf(opts.F.IO.Out, "applied %s: %s\n", name, summaryLine(sum))
	return err
}

func summaryLine(s inventory.Summary) string {
	var parts []string
	for _, kind := range []string{"zones", "pods", "clusters", "hosts"} {
		var p []string
		if n := s.Created[kind]; n > 0 {
			p = append(p, fmt.Sprintf("%d created", n))
		}
		if n := s.Updated[kind]; n > 0 {
			p = append(p, fmt.Sprintf("%d updated", n))
		}
		if n := s.Unchanged[kind]; n > 0 {
			p = append(p, fmt.Sprintf("%d unchanged", n))
		}
		if len(p) > 0 {
			parts = append(parts, kind+" "+strings.Join(p, ", "))
		}
	}
	if len(parts) == 0 {
		return "nothing to do"
	}
	return strings.Join(parts, "; ")
}

func runInventoryExport(opts *InventoryOptions) error {
	var out []byte
	if err := view(opts.F, func(tx state.Tx) error {
		doc, err := inventory.Export(tx)
		if err != nil {
			return err
		}
		if opts.F.JSON {
			out = nil
			return opts.F.PrintJSON(doc)
		}
		out, err = inventory.Marshal(doc)
		return err
	}); err != nil || out == nil {
		return err
	}
	if opts.Out == "" || opts.Out == "-" {
		_, err := opts.F.IO.Out.Write(out)
		return err
	}
	return os.WriteFile(opts.Out, out, 0o644)
}
