package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kvmctl/kvmctl/pkg/cmdutil"
	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/inventory"
	"github.com/kvmctl/kvmctl/pkg/state"
)

func refusedUsage(cmd *cobra.Command) error {
	var names []string
	for _, c := range cmd.Commands() {
		if c.IsAvailableCommand() {
			names = append(names, c.Name())
		}
	}
	return errs.Refusedf("%s needs a subcommand: one of %s (run `%s --help`)", cmd.CommandPath(), strings.Join(names, ", "), cmd.CommandPath())
}

// view runs fn in a read transaction of the state file, opened for this call only.
func view(f *cmdutil.Factory, fn func(state.Tx) error) error {
	st, err := f.Store()
	if err != nil {
		return err
	}
	return st.View(fn)
}

// update runs fn in a write transaction of the state file, opened for this call only.
func update(f *cmdutil.Factory, fn func(state.Tx) error) error {
	st, err := f.Store()
	if err != nil {
		return err
	}
	return st.Update(fn)
}

// done prints the JSON form of v, or the human line, depending on --json.
func done(f *cmdutil.Factory, v any, format string, args ...any) error {
	if f.JSON {
		return f.PrintJSON(v)
	}
	_, err := fmt.Fprintf(f.IO.Out, format+"\n", args...)
	return err
}

func splitList(values []string) []string {
	var out []string
	for _, v := range values {
		for _, p := range strings.Split(v, ",") {
			// Spaces only: a tab or another control character is refused where the value is
			// checked, never dropped unseen.
			if p = strings.Trim(p, " "); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}

// getHost reads host name from the state file, or refuses naming the way to list the hosts.
func getHost(f *cmdutil.Factory, name string) (state.Host, error) {
	var h state.Host
	err := view(f, func(tx state.Tx) (err error) {
		h, err = state.GetHost(tx, name)
		if state.IsNotFound(err) {
			return inventory.NotFound("host", name, "hosts")
		}
		return err
	})
	return h, err
}

// plural renders "1 VM", "3 VMs".
func plural(n int, noun string) string {
	if n == 1 {
		return fmt.Sprintf("1 %s", noun)
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
