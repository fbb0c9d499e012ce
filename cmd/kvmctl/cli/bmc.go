package cli

import (
	"fmt"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kvmctl/kvmctl/pkg/bmcconf"
	"github.com/kvmctl/kvmctl/pkg/cmdutil"
	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/fence"
	"github.com/kvmctl/kvmctl/pkg/inventory"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// BMCOptions are the inputs of the `kvmctl bmc` subcommands.
type BMCOptions struct {
	F       *cmdutil.Factory
	Cluster string
	Host    string
	// Values are the fields `bmc set` was given, by field name (bmcconf.FieldNames), as text.
	Values map[string]string
	// PasswordFile and PasswordStdin say where `bmc set` reads a new password.
	PasswordFile  string
	PasswordStdin bool
	// Fields are the fields `bmc unset` clears; none means all.
	Fields []string
}

// kind and name of the settings a set or unset changes.
func (o *BMCOptions) subject() (kind, name string) {
	if o.Host != "" {
		return "host", o.Host
	}
	return "cluster", o.Cluster
}

func newBMCCmd(f *cmdutil.Factory) *cobra.Command {
	opts := &BMCOptions{F: f}
	scope := func(c *cobra.Command) {
		c.Flags().StringVar(&opts.Cluster, "cluster", "", "the cluster's settings: the defaults of its hosts")
		c.Flags().StringVar(&opts.Host, "host", "", "the host's own settings, over its cluster's")
		c.MarkFlagsMutuallyExclusive("cluster", "host")
		c.MarkFlagsOneRequired("cluster", "host")
	}
	set := &cobra.Command{
		Use:   "set (--cluster C | --host H) [--driver D] [--address A] [--port N] [--username U] [--password-file F | --password-stdin] [--interface I] [--action A] [--exec PROGRAM] [--action-off T ...]",
		Short: "Set BMC settings of a cluster (its hosts' defaults) or a host; only the flags given change",
		Long: `Set changes the BMC settings of a cluster, which its hosts inherit, or of one host, whose
settings override its cluster's field by field (see ` + "`kvmctl bmc show HOST`" + `). Only the flags given
change; ` + "`kvmctl bmc unset`" + ` clears fields.

The password is read from a file (mode 0600, --password-file) or from standard input
(--password-stdin, a pipe), never from the command line, and is never printed.

Drivers: ipmi (default: kvmctl speaks IPMI itself, RMCP+ with --interface lanplus, the default,
or IPMI v1.5 with lan), ipmitool (Debian's ipmitool; the password reaches it through its
environment), exec (your program). The exec driver runs, for an action without a template of
its own, the template of seed 002:

  ` + bmcconf.DefaultTemplate + `

which passes the password among the program's arguments, where every local user can read it.
A template of your own (--action-off, --action-on, --action-reboot, --action-blink,
--action-status, --action-test) can pass $IPMI_PASSWORD_FILE instead: a file of mode 0600 that
holds the password while the program runs. Templates are split into words by shell quoting
rules, once, and run without a shell; the variables ($IPMI_EXEC, $IPMI_USERNAME, $IPMI_PASSWORD,
$IPMI_PASSWORD_FILE, $IPMI_ACTION, $IPMI_HOST, $IPMI_PORT, $IPMI_INTERFACE) are substituted
inside the words. The status template's last line of output says the power state: "on", "off",
"power is on", "Power: off", "Chassis Power is on" and the like.

--action is what HA does to a dead host (seed 002): none (the default), off, reboot or blink.`,
		Example: `  kvmctl bmc set --cluster c1 --username admin --password-file ~/.config/kvmctl/c1.pw --action off
  kvmctl bmc set --host kvm01 --address 10.0.1.11
  printf '%s' "$PW" | kvmctl bmc set --host kvm02 --address bmc-kvm02.example --password-stdin --interface lan
  kvmctl bmc set --cluster c2 --driver exec --exec /usr/local/sbin/fence-ilo \
    --action-status '$IPMI_EXEC --password-file $IPMI_PASSWORD_FILE --host $IPMI_HOST --command status'`,
		Args: cmdutil.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Values = map[string]string{}
			for _, name := range bmcconf.FieldNames() {
				if fl := cmd.Flags().Lookup(name); fl != nil && fl.Changed {
					opts.Values[name] = fl.Value.String()
				}
			}
			if len(opts.Values) == 0 && opts.PasswordFile == "" && !opts.PasswordStdin {
				return errs.Refusedf("give at least one field to set: `kvmctl bmc set --help` lists them")
			}
			return runBMCSet(opts)
		},
	}
	scope(set)
	fl := set.Flags()
	fl.String(bmcconf.FieldDriver, "", "driver: "+strings.Join(bmcconf.Drivers, ", ")+" (default ipmi)")
	fl.String(bmcconf.FieldAddress, "", "the BMC's host name or IP address")
	fl.Int(bmcconf.FieldPort, 0, "the BMC's UDP port (default 623)")
	fl.String(bmcconf.FieldUsername, "", "the BMC user")
	fl.StringVar(&opts.PasswordFile, "password-file", "", "read the password from this file (mode 0600; one line)")
	fl.BoolVar(&opts.PasswordStdin, "password-stdin", false, "read the password from standard input (a pipe)")
	set.MarkFlagsMutuallyExclusive("password-file", "password-stdin")
	fl.String(bmcconf.FieldInterface, "", "IPMI interface: lanplus (IPMI v2.0 RMCP+, default) or lan (IPMI v1.5)")
	fl.String(bmcconf.FieldAction, "", "what HA does to a dead host: "+strings.Join(bmcconf.HAActions, ", ")+" (default none)")
	fl.String(bmcconf.FieldExec, "", "the exec driver's program: an absolute path")
	for _, a := range bmcconf.TemplateActions {
		fl.String(bmcconf.TemplateField(a), "", "the exec driver's command line for "+a)
	}

	unset := &cobra.Command{
		Use:   "unset (--cluster C | --host H) [FIELD...]",
		Short: "Clear BMC settings of a cluster or a host (all of them when no FIELD is named)",
		Long: "Unset clears the named fields, or all the settings when none is named; a host then inherits its\ncluster's. Fields: " +
			strings.Join(bmcconf.FieldNames(), ", ") + ".",
		Example: `  kvmctl bmc unset --host kvm01 address port
  kvmctl bmc unset --cluster c1`,
		ValidArgs: bmcconf.FieldNames(),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Fields = args
			return runBMCUnset(opts)
		},
	}
	scope(unset)

	show := &cobra.Command{
		Use:   "show HOST",
		Short: "Show a host's effective BMC settings and where each comes from",
		Args:  cmdutil.ExactArgs(1, "one HOST"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Host = args[0]
			return runBMCShow(opts)
		},
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List every cluster and host that has BMC settings",
		Args:  cmdutil.NoArgs,
		RunE:  func(cmd *cobra.Command, args []string) error { return runBMCList(opts) },
	}
	return group("bmc", "Set, clear, show and list how kvmctl reaches hosts' BMCs (seed 002's IPMI settings)", set, unset, show, list)
}

// bmcChange is the result of `bmc set` and `bmc unset`.
type bmcChange struct {
	Kind    string   `json:"kind"`
	Name    string   `json:"name"`
	Changed []string `json:"changed"`
	// Settings are the cluster's or host's own settings after the change, the password "set".
	Settings map[string]string `json:"settings"`
}

func runBMCSet(opts *BMCOptions) error {
	// Everything is read and checked before the state file is opened: a refusal changes nothing.
	given := state.BMC{}
	for name, v := range opts.Values {
		if v == "" {
			return errs.Refusedf("--%s needs a value: `kvmctl bmc unset` clears a field", name)
		}
		if name == bmcconf.FieldPort && v == "0" {
			return errs.Refusedf("invalid BMC port 0: use 1 to 65535 (`kvmctl bmc unset` returns the port to %d)", bmcconf.DefaultPort)
		}
		if err := bmcconf.Set(&given, name, v); err != nil {
			return errs.Refused(err)
		}
	}
	switch {
	case opts.PasswordFile != "":
		pw, err := inventory.ReadPasswordFile(opts.PasswordFile)
		if err != nil {
			return errs.Refused(err)
		}
		given.Password = pw
	case opts.PasswordStdin:
		pw, err := readPasswordStdin(opts.F)
		if err != nil {
			return err
		}
		given.Password = pw
	}
	if err := inventory.ValidBMC(given); err != nil {
		return errs.Refused(err)
	}
	kind, name := opts.subject()
	res := bmcChange{Kind: kind, Name: name}
	var effective state.BMC
	err := update(opts.F, func(tx state.Tx) error {
		cluster, err := bmcFree(tx, kind, name)
		if err != nil {
			return err
		}
		cur, err := state.GetBMC(tx, kind, name)
		if err != nil {
			return err
		}
		next := cur
		for _, f := range bmcconf.FieldNames() {
			if v, _ := bmcconf.Get(given, f); v != "" {
				_ = bmcconf.Set(&next, f, v)
			}
		}
		res.Changed, res.Settings = nonNil(bmcconf.Changed(cur, next)), bmcFields(next)
		if kind == "host" {
			cb, err := state.GetBMC(tx, "cluster", cluster)
			if err != nil {
				return err
			}
			effective, _ = fence.Effective(cb, next)
		} else {
			effective = next
		}
		return state.PutBMC(tx, kind, name, next)
	})
	if err != nil {
		return err
	}
	warnPasswordInArgs(opts.F, kind, name, effective)
	if len(res.Changed) == 0 {
		return done(opts.F, res, "the BMC settings of %s %s were already so", kind, name)
	}
	return done(opts.F, res, "set %s of %s %s", strings.Join(res.Changed, ", "), kind, name)
}

// readPasswordStdin reads a password piped to kvmctl: a terminal would show it as it is typed.
func readPasswordStdin(f *cmdutil.Factory) (string, error) {
	if f.IO.IsStdinTTY() {
		return "", errs.Refusedf("--password-stdin reads a pipe, not a terminal (it would show the password): pipe it in, or use --password-file F")
	}
	pw, err := inventory.ReadPassword(f.IO.In, "standard input")
	if err != nil {
		return "", errs.Refused(err)
	}
	return pw, nil
}

// warnPasswordInArgs says on stderr when the effective settings of kind name run a program
// with the password among its arguments.
func warnPasswordInArgs(f *cmdutil.Factory, kind, name string, effective state.BMC) {
	if actions := bmcconf.PasswordInArgs(effective); len(actions) > 0 {
		fmt.Fprintf(f.IO.ErrOut, "kvmctl: warning: the exec driver of %s %s passes the password among the program's arguments for %s, where every local user can read it: give those actions templates with $IPMI_PASSWORD_FILE instead (see `kvmctl bmc set --help`)\n",
			kind, name, strings.Join(actions, ", "))
	}
}

// bmcFree checks that kind name exists and that nothing holds what its settings reach: the
// host (and its cluster), or the cluster and every host of it. It returns the host's cluster.
func bmcFree(tx state.Tx, kind, name string) (cluster string, err error) {
	if kind == "host" {
		h, err := state.GetHost(tx, name)
		if err != nil {
			return "", inventory.NotFound("host", name, "hosts")
		}
		return h.Cluster, hostFree(tx, name)
	}
	if _, err := state.GetCluster(tx, name); err != nil {
		return "", inventory.NotFound("cluster", name, "clusters")
	}
	return name, clusterFree(tx, name)
}

func runBMCUnset(opts *BMCOptions) error {
	for _, f := range opts.Fields {
		if err := bmcconf.Unset(&state.BMC{}, f); err != nil {
			return errs.Refused(err)
		}
	}
	kind, name := opts.subject()
	res := bmcChange{Kind: kind, Name: name}
	err := update(opts.F, func(tx state.Tx) error {
		if _, err := bmcFree(tx, kind, name); err != nil {
			return err
		}
		cur, err := state.GetBMC(tx, kind, name)
		if err != nil {
			return err
		}
		next := state.BMC{}
		if len(opts.Fields) > 0 {
			next = cur
			for _, f := range opts.Fields {
				_ = bmcconf.Unset(&next, f)
			}
		}
		res.Changed, res.Settings = nonNil(bmcconf.Changed(cur, next)), bmcFields(next)
		return state.PutBMC(tx, kind, name, next)
	})
	if err != nil {
		return err
	}
	if len(res.Changed) == 0 {
		return done(opts.F, res, "%s %s had none of those BMC settings", kind, name)
	}
	return done(opts.F, res, "unset %s of %s %s", strings.Join(res.Changed, ", "), kind, name)
}

// bmcFields are the fields b sets, by name, the password as "set".
func bmcFields(b state.BMC) map[string]string {
	out := map[string]string{}
	b = bmcconf.Redacted(b)
	for _, f := range bmcconf.FieldNames() {
		if v, _ := bmcconf.Get(b, f); v != "" {
			out[f] = v
		}
	}
	return out
}

// bmcShowView is what `bmc show` prints.
type bmcShowView struct {
	Host    string `json:"host"`
	Cluster string `json:"cluster"`
	// Settings has every field: its effective value ("" when unset and without a default),
	// the password "set" or "unset".
	Settings map[string]string `json:"settings"`
	// Sources says where each value comes from: host, cluster, default, or "".
	Sources map[string]string `json:"sources"`
	// Missing lists the fields the driver needs and nothing sets.
	Missing []string `json:"missing"`
	// Unusable says why the driver cannot use complete settings (a password too long for IPMI).
	Unusable string `json:"unusable,omitempty"`
	// PasswordInArgs lists the exec driver's actions that pass the password as an argument.
	PasswordInArgs []string `json:"password_in_args,omitempty"`
}

func runBMCShow(opts *BMCOptions) error {
	v := bmcShowView{Host: opts.Host, Settings: map[string]string{}}
	var eff state.BMC
	if err := view(opts.F, func(tx state.Tx) error {
		h, err := state.GetHost(tx, opts.Host)
		if err != nil {
			return inventory.NotFound("host", opts.Host, "hosts")
		}
		v.Cluster = h.Cluster
		cb, err := state.GetBMC(tx, "cluster", h.Cluster)
		if err != nil {
			return err
		}
		hb, err := state.GetBMC(tx, "host", h.Name)
		if err != nil {
			return err
		}
		eff, v.Sources = fence.Effective(cb, hb)
		return nil
	}); err != nil {
		return err
	}
	v.Missing, v.PasswordInArgs = nonNil(fence.Missing(eff)), bmcconf.PasswordInArgs(eff)
	if len(v.Missing) == 0 {
		// Open sends nothing: it builds the driver, or says why it cannot.
		if d, err := fence.Open(eff, opts.Host, fence.Options{}); err != nil {
			v.Unusable = err.Error()
		} else {
			_ = d.Close()
		}
	}
	for _, f := range bmcconf.FieldNames() {
		val, _ := bmcconf.Get(bmcconf.Redacted(eff), f)
		switch {
		case f == bmcconf.FieldPassword && val == "":
			val = "unset"
		case val == "" && bmcconf.Default(f) != "":
			val, v.Sources[f] = bmcconf.Default(f), "default"
		}
		v.Settings[f] = val
	}
	if opts.F.JSON {
		return opts.F.PrintJSON(v)
	}
	w := opts.F.IO.Out
	fmt.Fprintf(w, "%-15s %s (cluster %s)\n", "host:", v.Host, v.Cluster)
	for _, f := range bmcconf.FieldNames() {
		val := v.Settings[f]
		if val == "" {
			val = "-"
		}
		if src := v.Sources[f]; src != "" {
			val += " (" + src + ")"
		}
		fmt.Fprintf(w, "%-15s %s\n", f+":", val)
	}
	if len(v.Missing) > 0 {
		fmt.Fprintf(w, "%-15s %s: kvmctl cannot reach this BMC until `kvmctl bmc set` sets them\n", "missing:", strings.Join(v.Missing, ", "))
	} else {
		fmt.Fprintf(w, "%-15s -\n", "missing:")
	}
	if v.Unusable != "" {
		fmt.Fprintf(w, "%-15s %s\n", "unusable:", v.Unusable)
	}
	if len(v.PasswordInArgs) > 0 {
		fmt.Fprintf(w, "%-15s %s (the password is among the program's arguments)\n", "warning:", strings.Join(v.PasswordInArgs, ", "))
	}
	return nil
}

// bmcListEntry is one cluster's or host's own BMC settings, the password "set".
type bmcListEntry struct {
	Kind     string            `json:"kind"`
	Name     string            `json:"name"`
	Settings map[string]string `json:"settings"`
}

func runBMCList(opts *BMCOptions) error {
	var entries []bmcListEntry
	if err := view(opts.F, func(tx state.Tx) error {
		all, err := state.ListBMC(tx)
		for key, b := range all {
			kind, name := state.SplitBMCKey(key)
			entries = append(entries, bmcListEntry{Kind: kind, Name: name, Settings: bmcFields(b)})
		}
		return err
	}); err != nil {
		return err
	}
	// Clusters first, as their hosts inherit from them.
	sort.Slice(entries, func(i, j int) bool {
		if entries[i].Kind != entries[j].Kind {
			return entries[i].Kind == "cluster"
		}
		return entries[i].Name < entries[j].Name
	})
	if opts.F.JSON {
		return opts.F.PrintJSON(nonNil(entries))
	}
	t := opts.F.IO.NewTable("KIND", "NAME", "DRIVER", "ADDRESS", "PORT", "USERNAME", "PASSWORD", "INTERFACE", "ACTION", "EXEC", "TEMPLATES")
	for _, e := range entries {
		s := e.Settings
		var tmpls []string
		for _, a := range bmcconf.TemplateActions {
			if s[bmcconf.TemplateField(a)] != "" {
				tmpls = append(tmpls, a)
			}
		}
		t.AddRow(e.Kind, e.Name, s[bmcconf.FieldDriver], s[bmcconf.FieldAddress], s[bmcconf.FieldPort], s[bmcconf.FieldUsername],
			s[bmcconf.FieldPassword], s[bmcconf.FieldInterface], s[bmcconf.FieldAction], s[bmcconf.FieldExec], strings.Join(tmpls, ","))
	}
	return t.Render()
}
