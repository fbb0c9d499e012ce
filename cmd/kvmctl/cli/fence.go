package cli

import (
	"bufio"
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvmctl/kvmctl/pkg/cmdutil"
	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/fence"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// FenceOptions are the inputs of `kvmctl fence`.
type FenceOptions struct {
	F      *cmdutil.Factory
	Host   string
	Action string
	Yes    bool
	Force  bool
	Reason string
}

func newFenceCmd(f *cmdutil.Factory) *cobra.Command {
	opts := &FenceOptions{F: f}
	c := &cobra.Command{
		Use:   "fence HOST --action off|on|reboot|reset|soft|blink|status|test [--yes] [--reason TEXT] [--force]",
		Short: "Act on a host's power through its BMC: every action checked, capped and audited",
		Long: `Fence acts on HOST's chassis through its BMC (kvmctl bmc set), with fence_ipmilan's rules:
status first (an already-off host counts as off, nothing sent); off, then the power state read
until it shows off within kvm.ha.fence.timeout; reboot is off, confirmed off, then on. A BMC that
does not answer, or power that never shows the change, is a failure, never "fenced".

Every action but status and test is written to the audit (kvmctl audit list) with who and why
before the BMC is called, and its result after, and is notified (kvmctl notify). Power-downs
(off, reboot, reset, soft) are capped: kvm.ha.fence.max.count per kvm.ha.fence.window, per
cluster and fleet-wide (seed 002); past it, the action is refused and notified. A host whose
cluster a rolling run holds is refused unless --force. On a terminal, a power action asks you to
type the host's name; --yes skips that, and is needed when kvmctl is not on a terminal.

Exit codes: 0 done (for off and reboot: power confirmed off); 1 the BMC failed or did not confirm;
2 refused (unknown host or action, no BMC settings, the cap, a hold, no confirmation).`,
		Args: cmdutil.ExactArgs(1, "one HOST"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Host = args[0]
			return runFence(cmd.Context(), opts)
		},
	}
	c.Flags().StringVar(&opts.Action, "action", "", "off, on, reboot, reset, soft, blink, status or test")
	c.Flags().BoolVar(&opts.Yes, "yes", false, "do not ask for confirmation")
	c.Flags().BoolVar(&opts.Force, "force", false, "act on a host held by a rolling run or a maintenance action")
	c.Flags().StringVar(&opts.Reason, "reason", "", "why, for the audit and the notifications")
	_ = c.MarkFlagRequired("action")
	return c
}

// fenceService wires the fence path to the state file, the BMC drivers and the notifications.
func fenceService(f *cmdutil.Factory) (*fence.Service, error) {
	st, err := f.Store()
	if err != nil {
		return nil, err
	}
	return &fence.Service{Store: st, Clock: f.Clock, Open: bmcDriver, Notify: notifier(f)}, nil
}

func runFence(ctx context.Context, opts *FenceOptions) error {
	if ctx == nil {
		ctx = context.Background()
	}
	action, err := fence.ParseAction(opts.Action)
	if err != nil {
		return errs.Refusedf("--action: %v", err)
	}
	if len(opts.Reason) > 1000 {
		return errs.Refusedf("--reason is %d bytes: keep it under 1000", len(opts.Reason))
	}
	h, err := getHost(opts.F, opts.Host)
	if err != nil {
		return err
	}
	if action.ChangesPower() && !opts.Yes {
		if err := confirmPower(opts, h, action); err != nil {
			return err
		}
	}
	s, err := fenceService(opts.F)
	if err != nil {
		return err
	}
	if opts.F.Events {
		s.Events = progressSink(opts.F)
	}
	res, err := s.Do(ctx, fence.Request{Host: opts.Host, Action: action, Reason: opts.Reason, Force: opts.Force})
	if err != nil && errs.IsRefused(err) {
		return err
	}
	if opts.F.JSON {
		if perr := opts.F.PrintJSON(res); perr != nil {
			return perr
		}
		if err != nil {
			fmt.Fprintf(opts.F.IO.ErrOut, "kvmctl: %v\n", err)
			return cmdutil.ErrSilent
		}
		return nil
	}
	if err != nil {
		if action.PowersDown() && !res.Outcome.Fenced {
			return fmt.Errorf("%s %s: NOT fenced, treat %s as running: %w", action, opts.Host, opts.Host, err)
		}
		return fmt.Errorf("%s %s: %w", action, opts.Host, err)
	}
	w := opts.F.IO.Out
	o := res.Outcome
	switch {
	case action == fence.ActionStatus || action == fence.ActionTest:
		fmt.Fprintf(w, "%s: power %s (BMC answered)\n", opts.Host, o.After)
	case o.Fenced && action == fence.ActionReboot:
		fmt.Fprintf(w, "%s: power confirmed off, then on (%s)\n", opts.Host, strings.Join(o.Sent, ", "))
	case o.Fenced:
		fmt.Fprintf(w, "%s: power confirmed off (%s)\n", opts.Host, strings.Join(o.Sent, ", "))
	case action == fence.ActionBlink:
		fmt.Fprintf(w, "%s: identify sent: its chassis light blinks; the power is not touched\n", opts.Host)
	default:
		fmt.Fprintf(w, "%s: %s done, power %s (%s)\n", opts.Host, action, o.After, strings.Join(o.Sent, ", "))
	}
	if o.Note != "" {
		fmt.Fprintf(w, "note: %s\n", o.Note)
	}
	if res.AuditID != "" {
		fmt.Fprintf(w, "audit %s (kvmctl audit list --host %s)\n", res.AuditID, opts.Host)
	}
	for _, n := range res.NotifyErrors {
		fmt.Fprintf(opts.F.IO.ErrOut, "kvmctl: notification failed (audited): %s\n", n)
	}
	return nil
}

// confirmPower asks the operator on a terminal to type the host's name, naming the VMs that
// ran on it when kvmctl last asked; without a terminal it refuses: --yes says it on purpose.
func confirmPower(opts *FenceOptions, h state.Host, action fence.Action) error {
	f := opts.F
	if !f.IO.IsStdinTTY() || !f.IO.IsStdoutTTY() {
		return errs.Refusedf("fence --action %s changes the power of %s: give --yes when kvmctl is not on a terminal", action, h.Name)
	}
	var st state.HostStatus
	_ = view(f, func(tx state.Tx) (err error) { st, err = state.GetHostStatus(tx, h.Name); return err })
	var running []string
	for _, vm := range st.VMs {
		if vm.State == "running" {
			running = append(running, vm.Name)
		}
	}
	what := "no running VMs"
	if len(running) > 0 {
		what = plural(len(running), "running VM") + ": " + strings.Join(running, ", ")
	}
	seen := "never asked"
	if !st.CheckedAt.IsZero() {
		seen = "as last seen " + f.IO.Time(st.CheckedAt, f.Now())
	}
	fmt.Fprintf(f.IO.Out, "%s %s (cluster %s), which had %s (%s).\nType the host's name to go on: ", action, h.Name, h.Cluster, what, seen)
	line, err := bufio.NewReader(f.IO.In).ReadString('\n')
	if strings.TrimSpace(line) != h.Name {
		if err != nil && line == "" {
			return errs.Refusedf("no confirmation read: nothing was done")
		}
		return errs.Refusedf("%q is not %s: nothing was done", strings.TrimSpace(line), h.Name)
	}
	return nil
}

// AuditOptions are the inputs of `kvmctl audit list`.
type AuditOptions struct {
	F     *cmdutil.Factory
	Host  string
	Since time.Duration
}

func newAuditCmd(f *cmdutil.Factory) *cobra.Command {
	opts := &AuditOptions{F: f}
	list := &cobra.Command{
		Use:   "list [--host H] [--since D]",
		Short: "Every power action and decision: who, why, evidence and result",
		Long: `List prints the audit, oldest first: each power action's intent (written before the BMC was
called), its result (what was sent, the power before and after), refusals (the cap, a hold),
failed notifications, and reconciliations: an intent whose kvmctl died before the BMC answered
is settled here by asking the BMC for the power state.`,
		Args: cmdutil.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return runAuditList(cmd.Context(), opts) },
	}
	list.Flags().StringVar(&opts.Host, "host", "", "only this host's records")
	cmdutil.DurationVar(list.Flags(), &opts.Since, "since", 0, "only records of the last D (e.g. 24h)")
	return group("audit", "The record of every power action and decision", list)
}

func runAuditList(ctx context.Context, opts *AuditOptions) error {
	if ctx == nil {
		ctx = context.Background()
	}
	if opts.Host != "" {
		if _, err := getHost(opts.F, opts.Host); err != nil {
			return err
		}
	}
	s, err := fenceService(opts.F)
	if err != nil {
		return err
	}
	if _, err := s.Reconcile(ctx, opts.Host); err != nil {
		return err
	}
	var since time.Time
	if opts.Since > 0 {
		since = opts.F.Clock.Now().Add(-opts.Since)
	}
	var evs []events.Event
	if err := view(opts.F, func(tx state.Tx) (err error) { evs, err = fence.Audit(tx, opts.Host, since); return err }); err != nil {
		return err
	}
	if opts.F.JSON {
		return opts.F.PrintJSON(evs)
	}
	now := opts.F.Now()
	t := opts.F.IO.NewTable("TIME", "AUDIT", "RECORD", "HOST", "ACTION", "WHO", "RESULT")
	for _, e := range evs {
		result := e.Message
		switch e.Type {
		case events.FenceIntent:
			result = "intent"
			if e.Reason != "" {
				result += ": " + e.Reason
			}
			if e.Evidence != "" {
				result += " (evidence: " + e.Evidence + ")"
			}
		case events.FenceResult:
			result = fmt.Sprintf("power %s -> %s, sent %s", e.PowerBefore, e.PowerAfter, strings.Join(e.Sent, ","))
			if e.Action == string(fence.ActionBlink) {
				result = "sent " + strings.Join(e.Sent, ",")
			}
			if e.Fenced {
				result += ", fenced"
			}
			if e.Message != "" {
				result += ": " + e.Message
			}
		case events.FenceReconciled:
			result = "power " + e.PowerAfter + ": " + e.Message
		}
		t.AddRow(opts.F.IO.Time(e.Time, now), e.AuditID, strings.TrimPrefix(string(e.Type), "fence."), e.Host, e.Action, e.Who, result)
	}
	return t.Render()
}
