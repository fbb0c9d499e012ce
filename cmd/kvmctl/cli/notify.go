package cli

import (
	"context"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/kvmctl/kvmctl/pkg/cmdutil"
	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/notify"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// NotifyAddOptions are the inputs of `kvmctl notify add email|snmp|webhook`.
type NotifyAddOptions struct {
	F       *cmdutil.Factory
	Channel state.NotifyChannel
	To      []string
	// PasswordFile and SecretFile name the files the secrets are read from; only the secrets
	// themselves are stored.
	PasswordFile string
	SecretFile   string
}

// NotifyOptions are the inputs of `kvmctl notify list|rm|test`.
type NotifyOptions struct {
	F *cmdutil.Factory
	// Name is the channel of rm, or the one channel of test ("" for every channel).
	Name string
}

func newNotifyCmd(f *cmdutil.Factory) *cobra.Command {
	opts := &NotifyOptions{F: f}
	add := group("add", "Add a notification channel: email, snmp or webhook",
		newNotifyAddEmailCmd(f), newNotifyAddSNMPCmd(f), newNotifyAddWebhookCmd(f))
	list := &cobra.Command{
		Use:   "list",
		Short: "List the notification channels (secrets show as \"set\")",
		Args:  cmdutil.NoArgs,
		RunE:  func(cmd *cobra.Command, args []string) error { return runNotifyList(opts) },
	}
	rm := &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a notification channel",
		Args:  cmdutil.ExactArgs(1, "one channel NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Name = args[0]
			return runNotifyRm(opts)
		},
	}
	test := &cobra.Command{
		Use:   "test [NAME]",
		Short: "Send a test notice to every channel, or to one, and say what each did",
		Long: `Send a test notice to every notification channel, or to the one named, and say what each
did. Exit 1 when any channel failed. An SNMP trap is not acknowledged: "sent" means it left
this machine.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				opts.Name = args[0]
			}
			return runNotifyTest(cmd.Context(), opts)
		},
	}
	return group("notify", "Tell people about fences by email, SNMP trap and webhook", add, list, rm, test)
}

func newNotifyAddEmailCmd(f *cmdutil.Factory) *cobra.Command {
	return newNotifyAddCmd(f, state.NotifyEmail,
		"email --smtp HOST:PORT --from ADDR --to ADDR[,ADDR] [--name N] [--username U --password-file F] [--starttls] [--ca-file F]",
		"Add an email channel: a plain-text mail through an SMTP server",
		`  kvmctl notify add email --smtp smtp.example.net:587 --starttls --from kvmctl@example.net \
    --to ops@example.net,oncall@example.net --username kvmctl --password-file /etc/kvmctl/smtp.pw
  kvmctl notify add email --name local --smtp localhost:25 --from kvmctl@kvm01 --to root@localhost`,
		func(fl *pflag.FlagSet, opts *NotifyAddOptions) []string {
			fl.StringVar(&opts.Channel.SMTP, "smtp", "", "host:port of the mail server (required)")
			fl.StringVar(&opts.Channel.From, "from", "", "sender address (required)")
			fl.StringSliceVar(&opts.To, "to", nil, "recipient addresses, comma-separated (required)")
			fl.StringVar(&opts.Channel.Username, "username", "", "log in to the mail server as this user (AUTH PLAIN)")
			fl.StringVar(&opts.PasswordFile, "password-file", "", "file holding the SMTP password, readable by its owner only")
			fl.BoolVar(&opts.Channel.StartTLS, "starttls", false, "require STARTTLS before anything else is sent")
			caFileFlag(fl, opts)
			return []string{"smtp", "from", "to"}
		})
}

func newNotifyAddSNMPCmd(f *cmdutil.Factory) *cobra.Command {
	return newNotifyAddCmd(f, state.NotifySNMP,
		"snmp --target HOST:PORT --community C [--name N]",
		"Add an SNMP channel: an SNMPv2c trap (KVMCTL-MIB, docs/snmp.md)",
		`  kvmctl notify add snmp --name nms --target 10.0.0.5:162 --community kvm-traps`,
		func(fl *pflag.FlagSet, opts *NotifyAddOptions) []string {
			fl.StringVar(&opts.Channel.Target, "target", "", "host:port of the trap receiver, usually port 162 (required)")
			fl.StringVar(&opts.Channel.Community, "community", "", "SNMPv2c community the receiver accepts (required)")
			return []string{"target", "community"}
		})
}

func newNotifyAddWebhookCmd(f *cmdutil.Factory) *cobra.Command {
	return newNotifyAddCmd(f, state.NotifyWebhook,
		"webhook --url URL [--secret-file F] [--ca-file F] [--name N]",
		"Add a webhook channel: a JSON POST, signed with HMAC-SHA256 when it has a secret",
		`  openssl rand -hex 32 > /etc/kvmctl/hook.secret; chmod 600 /etc/kvmctl/hook.secret
  kvmctl notify add webhook --name chatops --url https://hooks.example.net/kvmctl --secret-file /etc/kvmctl/hook.secret`,
		func(fl *pflag.FlagSet, opts *NotifyAddOptions) []string {
			fl.StringVar(&opts.Channel.URL, "url", "", "http:// or https:// URL that receives the POST (required)")
			fl.StringVar(&opts.SecretFile, "secret-file", "", "file holding the signing secret (16 bytes or more), readable by its owner only")
			caFileFlag(fl, opts)
			return []string{"url"}
		})
}

// newNotifyAddCmd is `notify add TYPE`: flags adds the type's flags and returns those required.
func newNotifyAddCmd(f *cmdutil.Factory, typ, use, short, example string, flags func(*pflag.FlagSet, *NotifyAddOptions) []string) *cobra.Command {
	opts := &NotifyAddOptions{F: f, Channel: state.NotifyChannel{Type: typ}}
	c := &cobra.Command{
		Use:     use,
		Short:   short,
		Example: example,
		Args:    cmdutil.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Channel.To = splitList(opts.To)
			return runNotifyAdd(opts)
		},
	}
	c.Flags().StringVar(&opts.Channel.Name, "name", "", "channel name (default: the type, then TYPE-2, ...)")
	for _, name := range flags(c.Flags(), opts) {
		_ = c.MarkFlagRequired(name)
	}
	return c
}

func caFileFlag(fl *pflag.FlagSet, opts *NotifyAddOptions) {
	fl.StringVar(&opts.Channel.CAFile, "ca-file", "", "PEM file of the CAs the server's certificate must chain to (default: the system's)")
}

func runNotifyAdd(opts *NotifyAddOptions) error {
	ch := opts.Channel
	var err error
	if opts.PasswordFile != "" {
		if ch.Password, err = notify.ReadSecretFile("SMTP password", opts.PasswordFile); err != nil {
			return err
		}
	}
	if opts.SecretFile != "" {
		if ch.Secret, err = notify.ReadSecretFile("webhook secret", opts.SecretFile); err != nil {
			return err
		}
	}
	// Checked before the state file is opened, so a typo never touches it (a default name
	// stands in until the stored names are read).
	checked := ch
	if checked.Name == "" {
		checked.Name = checked.Type
	}
	if err := notify.Check(checked); err != nil {
		return err
	}
	err = update(opts.F, func(tx state.Tx) (err error) {
		ch, err = notify.AddChannel(tx, ch)
		return err
	})
	if err != nil {
		return err
	}
	return done(opts.F, notify.Redact(ch), "added %s channel %s: %s", ch.Type, ch.Name, notify.Destination(ch))
}

func runNotifyList(opts *NotifyOptions) error {
	var chans []state.NotifyChannel
	if err := view(opts.F, func(tx state.Tx) (err error) { chans, err = state.NotifyChannels(tx); return err }); err != nil {
		return err
	}
	shown := make([]state.NotifyChannel, 0, len(chans))
	for _, c := range chans {
		shown = append(shown, notify.Redact(c))
	}
	if opts.F.JSON {
		return opts.F.PrintJSON(shown)
	}
	t := opts.F.IO.NewTable("NAME", "TYPE", "DESTINATION", "DETAILS", "SECRET")
	for _, c := range shown {
		t.AddRow(c.Name, c.Type, notify.Destination(c), channelDetails(c), c.Password+c.Secret)
	}
	return t.Render()
}

// channelDetails says how a channel sends, without its secret.
func channelDetails(c state.NotifyChannel) string {
	var d []string
	switch c.Type {
	case state.NotifyEmail:
		d = append(d, "from "+c.From)
		if c.StartTLS {
			d = append(d, "STARTTLS")
		}
		if c.Username != "" {
			d = append(d, "login "+c.Username)
		}
	case state.NotifySNMP:
		d = append(d, "SNMPv2c trap, community "+c.Community)
	case state.NotifyWebhook:
		if c.Secret != "" {
			d = append(d, "signed JSON POST")
		} else {
			d = append(d, "unsigned JSON POST")
		}
	}
	if c.CAFile != "" {
		d = append(d, "CA file "+c.CAFile)
	}
	return strings.Join(d, ", ")
}

func runNotifyRm(opts *NotifyOptions) error {
	if err := update(opts.F, func(tx state.Tx) error { _, err := notify.RemoveChannel(tx, opts.Name); return err }); err != nil {
		return err
	}
	return done(opts.F, map[string]string{"removed": opts.Name, "kind": "notification channel"}, "removed notification channel %s", opts.Name)
}

// notifyTestResult is one channel's line of `notify test --json`.
type notifyTestResult struct {
	Channel     string `json:"channel"`
	Type        string `json:"type"`
	Destination string `json:"destination"`
	OK          bool   `json:"ok"`
	Attempts    int    `json:"attempts"`
	Error       string `json:"error,omitempty"`
}

func runNotifyTest(ctx context.Context, opts *NotifyOptions) error {
	var chans []state.NotifyChannel
	err := view(opts.F, func(tx state.Tx) error {
		if opts.Name != "" {
			c, err := notify.GetChannel(tx, opts.Name)
			chans = append(chans, c)
			return err
		}
		var err error
		chans, err = state.NotifyChannels(tx)
		return err
	})
	if err != nil {
		return err
	}
	if len(chans) == 0 {
		return errs.Refusedf("no notification channel to test: add one with `kvmctl notify add email|snmp|webhook`")
	}
	// The state file is closed by now: the sends may take their time (notify.DefaultLimits).
	nf := notify.New(chans, notify.Options{Clock: opts.F.Clock})
	n := notify.Notice{Kind: notify.KindTest, Message: "Sent by `kvmctl notify test` to check this channel: nothing happened to any host."}
	var out []notifyTestResult
	failed := 0
	for _, r := range nf.Start(ctx, n).Wait() {
		tr := notifyTestResult{Channel: r.Channel, Type: r.Type, Destination: r.Destination, OK: r.Err == nil, Attempts: r.Attempts}
		if r.Err != nil {
			tr.Error = r.Err.Error()
			failed++
		}
		out = append(out, tr)
	}
	if opts.F.JSON {
		if err := opts.F.PrintJSON(out); err != nil {
			return err
		}
	} else {
		t := opts.F.IO.NewTable("CHANNEL", "TYPE", "RESULT", "DETAIL")
		for _, r := range out {
			t.AddRow(r.Channel, r.Type, testVerdict(r), testDetail(r))
		}
		if err := t.Render(); err != nil {
			return err
		}
	}
	if failed > 0 {
		return cmdutil.Failf("%d of %s failed", failed, plural(len(out), "notification channel"))
	}
	return nil
}

func testVerdict(r notifyTestResult) string {
	switch {
	case !r.OK:
		return "FAILED"
	case r.Type == state.NotifySNMP:
		return "sent"
	}
	return "delivered"
}

func testDetail(r notifyTestResult) string {
	if !r.OK {
		return r.Error
	}
	d := r.Destination
	if r.Type == state.NotifySNMP {
		d = "trap to " + d + " (not acknowledged: check the receiver)"
	}
	if r.Attempts > 1 {
		d += " (attempt " + strconv.Itoa(r.Attempts) + ")"
	}
	return d
}
