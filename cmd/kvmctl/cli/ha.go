package cli

import (
	"bufio"
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/clock"
	"github.com/kvmctl/kvmctl/pkg/cmdutil"
	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/ha"
	"github.com/kvmctl/kvmctl/pkg/holds"
	"github.com/kvmctl/kvmctl/pkg/inventory"
	"github.com/kvmctl/kvmctl/pkg/journal"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// HAOptions are the inputs of the `kvmctl ha` commands.
type HAOptions struct {
	F        *cmdutil.Factory
	Cluster  string
	Host     string
	Hosts    []string
	History  bool
	Yes      bool
	Reason   string
	Interval time.Duration
	Metrics  string
}

func newHACmd(f *cmdutil.Factory) *cobra.Command {
	switchCmd := func(on bool) *cobra.Command {
		opts := &HAOptions{F: f}
		verb := map[bool]string{true: "enable", false: "disable"}[on]
		c := &cobra.Command{
			Use:   verb + " (--cluster C | --host H)",
			Short: map[bool]string{true: "Protect a cluster's hosts (or one host) with HA", false: "Stop protecting a cluster's hosts (or one host)"}[on],
			Long: `A host's own switch wins over its cluster's; neither set is off. The running ha watch takes the
change at its next check (every kvm.ha.health.check.interval).`,
			Example: "  kvmctl ha " + verb + " --cluster c1\n  kvmctl ha " + verb + " --host h3",
			Args:    cmdutil.NoArgs,
			RunE:    func(cmd *cobra.Command, args []string) error { return runHASwitch(opts, on) },
		}
		c.Flags().StringVar(&opts.Cluster, "cluster", "", "the cluster")
		c.Flags().StringVar(&opts.Host, "host", "", "one host")
		c.MarkFlagsOneRequired("cluster", "host")
		c.MarkFlagsMutuallyExclusive("cluster", "host")
		return c
	}

	statusOpts := &HAOptions{F: f}
	status := &cobra.Command{
		Use:   "status [HOST...]",
		Short: "Each host's HA state, last health, heartbeat, last verdict and guards",
		Long: `Status shows what the running ha watch last wrote for each host (its live fields every few
seconds, its transitions at once), and whether a watch runs at all: without one, nothing is
protected.`,
		Example: "  kvmctl ha status\n  kvmctl ha status h2 --json",
		RunE: func(cmd *cobra.Command, args []string) error {
			statusOpts.Hosts = args
			return runHAStatus(statusOpts)
		},
	}

	showOpts := &HAOptions{F: f}
	show := &cobra.Command{
		Use:     "show HOST [--history]",
		Short:   "One host's HA record, and with --history every transition with its evidence",
		Example: "  kvmctl ha show h2 --history",
		Args:    cmdutil.ExactArgs(1, "one HOST"),
		RunE: func(cmd *cobra.Command, args []string) error {
			showOpts.Host = args[0]
			return runHAShow(showOpts)
		},
	}
	show.Flags().BoolVar(&showOpts.History, "history", false, "every transition and decision, oldest first")

	checkOpts := &HAOptions{F: f}
	check := &cobra.Command{
		Use:   "check HOST [--interval D]",
		Short: "Run one activity check of HOST now and print what each neighbour read",
		Long: `Check asks up to kvm.ha.activity.check.neighbours healthy hosts of HOST's cluster to read HOST's
heartbeat and its VMs' disks twice, --interval apart (default kvm.ha.activity.check.interval),
and prints each read and the verdict: ACTIVE (something advanced), INACTIVE (every file read,
nothing advanced) or UNKNOWN (a read failed: never taken as "no activity"). It changes nothing.`,
		Example: "  kvmctl ha check h2",
		Args:    cmdutil.ExactArgs(1, "one HOST"),
		RunE: func(cmd *cobra.Command, args []string) error {
			checkOpts.Host = args[0]
			return runHACheck(cmd.Context(), checkOpts)
		},
	}
	cmdutil.DurationVar(check.Flags(), &checkOpts.Interval, "interval", 0, "time between the two reads (default kvm.ha.activity.check.interval)")

	confirmOpts := &HAOptions{F: f}
	confirm := &cobra.Command{
		Use:   "confirm-down HOST [--yes] [--reason TEXT]",
		Short: "Say that HOST is off, so that HA starts its VMs elsewhere",
		Long: `For a host whose HA action is none or blink, or whose BMC cannot fence it: once you know it
is powered off (you pulled its power, its BMC console says so), confirm-down lets the ha watch
record it fenced, put it into Maintenance and start its VMs on other hosts. If the host is in
fact running, its VMs will run twice: the command refuses a host whose agent answers, and on a
terminal asks you to type the host's name. Audited.`,
		Example: "  kvmctl ha confirm-down h2 --reason 'power cables pulled, see ticket 4411'",
		Args:    cmdutil.ExactArgs(1, "one HOST"),
		RunE: func(cmd *cobra.Command, args []string) error {
			confirmOpts.Host = args[0]
			return runHARequest(cmd.Context(), confirmOpts, true)
		},
	}
	confirm.Flags().BoolVar(&confirmOpts.Yes, "yes", false, "do not ask for confirmation")
	confirm.Flags().StringVar(&confirmOpts.Reason, "reason", "", "why you know it is off, for the audit")

	clearOpts := &HAOptions{F: f}
	clearCmd := &cobra.Command{
		Use:   "clear HOST",
		Short: "Start HOST's HA over from Available (a recovery given up on, a fence retried for ever)",
		Long: `Clear asks the ha watch to forget HOST's HA state and start over from Available (or Ineligible,
if the host is in maintenance): a recovery whose VMs you started by hand, a fence you settled
yourself. It neither powers anything nor starts any VM.`,
		Example: "  kvmctl ha clear h2",
		Args:    cmdutil.ExactArgs(1, "one HOST"),
		RunE: func(cmd *cobra.Command, args []string) error {
			clearOpts.Host = args[0]
			return runHARequest(cmd.Context(), clearOpts, false)
		},
	}

	watchOpts := &HAOptions{F: f}
	watch := &cobra.Command{
		Use:   "watch [--metrics ADDR]",
		Short: "The HA monitor: detect dead hosts, confirm, fence and recover their VMs",
		Long: `Watch checks the health of every HA host every kvm.ha.health.check.interval. A host that does
not answer for kvm.ha.health.check.timeout is Suspect; up to kvm.ha.activity.check.neighbours
healthy hosts of its cluster then read its heartbeat and its VMs' disks on the shared storage
every kvm.ha.activity.check.interval. A host whose files advance is alive (Degraded: never
fenced). Only when every neighbour that answered read every file and nothing advanced,
kvm.ha.activity.check.max.attempts times in a row, and no guard objects (startup grace, storm,
rate cap, quiet time, maintenance), is the host fenced through its BMC with its HA action; once
its power is confirmed off, it is put into Maintenance and its VMs start on other hosts.

Every decision is journaled with its evidence before it is acted on (kvmctl ha show HOST
--history, kvmctl audit list). One watch per state file: a second is refused. Run it under
systemd (contrib/kvmctl-ha-watch.service); it stops on SIGINT or SIGTERM.`,
		Example: "  kvmctl ha watch\n  kvmctl ha watch --events | jq .",
		Args:    cmdutil.NoArgs,
		RunE:    func(cmd *cobra.Command, args []string) error { return runHAWatch(watchOpts) },
	}
	watch.Flags().StringVar(&watchOpts.Metrics, "metrics", "", "serve Prometheus metrics on ADDR (host:port)")

	return group("ha", "Host HA: detect a dead host, confirm, fence it, restart its VMs elsewhere",
		switchCmd(true), switchCmd(false), status, show, check, confirm, clearCmd, watch)
}

func runHASwitch(opts *HAOptions, on bool) error {
	kind, name := "cluster", opts.Cluster
	if opts.Host != "" {
		kind, name = "host", opts.Host
	}
	var warnings []string
	err := update(opts.F, func(tx state.Tx) error {
		var hosts []state.Host
		if kind == "cluster" {
			if _, err := state.GetCluster(tx, name); err != nil {
				return inventory.NotFound("cluster", name, "clusters")
			}
			hs, err := inventory.ClusterHosts(tx, name)
			if err != nil {
				return err
			}
			hosts = hs
		} else {
			h, err := state.GetHost(tx, name)
			if err != nil {
				return inventory.NotFound("host", name, "hosts")
			}
			hosts = []state.Host{h}
		}
		if on {
			for _, h := range hosts {
				action, missing, err := ha.Action(tx, h)
				if err != nil {
					return err
				}
				switch {
				case missing != "" && (action == "off" || action == "reboot"):
					warnings = append(warnings, fmt.Sprintf("%s cannot be fenced: %s; it stays Ineligible until then", h.Name, missing))
				case action == "none":
					warnings = append(warnings, fmt.Sprintf("%s's HA action is none: HA detects its death but powers nothing; its VMs start elsewhere after `kvmctl ha confirm-down %s` (`kvmctl bmc set --host %s --action off` to fence)", h.Name, h.Name, h.Name))
				}
			}
		}
		return state.PutHAEnabled(tx, kind, name, state.HAEnabled{Enabled: on, Since: opts.F.Now().UTC(), Who: watchWho()})
	})
	if err != nil {
		return err
	}
	for _, w := range warnings {
		fmt.Fprintf(opts.F.IO.ErrOut, "kvmctl: warning: %s\n", w)
	}
	verb := map[bool]string{true: "enabled", false: "disabled"}[on]
	return done(opts.F, map[string]any{"kind": kind, "name": name, "enabled": on}, "HA %s for %s %s", verb, kind, name)
}

// haStatusJSON is `ha status --json`.
type haStatusJSON struct {
	Watch *watchInfo    `json:"watch"`
	Hosts []ha.HostView `json:"hosts"`
}

type watchInfo struct {
	Who   string    `json:"who"`
	PID   int       `json:"pid"`
	Since time.Time `json:"since"`
	Alive bool      `json:"alive"`
}

// readHA reads the switches, records and actions of hosts (every host when names is empty) and
// the watch's lease.
func readHA(f *cmdutil.Factory, names []string) ([]ha.HostView, *watchInfo, error) {
	var views []ha.HostView
	var watch *watchInfo
	err := view(f, func(tx state.Tx) error {
		hosts, err := state.Hosts(tx)
		if err != nil {
			return err
		}
		want := map[string]bool{}
		for _, n := range names {
			if _, err := state.GetHost(tx, n); err != nil {
				return inventory.NotFound("host", n, "hosts")
			}
			want[n] = true
		}
		for _, h := range hosts {
			if len(want) > 0 && !want[h.Name] {
				continue
			}
			on, _, err := ha.Enabled(tx, h)
			if err != nil {
				return err
			}
			rec, ok, err := state.GetHAHost(tx, h.Name)
			if err != nil {
				return err
			}
			if !ok {
				rec.State = string(ha.Disabled)
				if on {
					rec.State, rec.Reason = "-", "no ha watch has seen it yet"
				}
			}
			action, _, err := ha.Action(tx, h)
			if err != nil {
				return err
			}
			views = append(views, ha.View(rec, h.Cluster, on, action))
		}
		hold, ok, err := holds.Get(tx, holds.HAWatchLease)
		if err != nil || !ok {
			return err
		}
		watch = &watchInfo{Who: hold.What, PID: hold.Owner.PID, Since: hold.Since, Alive: holds.Local().IsAlive(hold.Owner)}
		return nil
	})
	return views, watch, err
}

func runHAStatus(opts *HAOptions) error {
	views, watch, err := readHA(opts.F, opts.Hosts)
	if err != nil {
		return err
	}
	if opts.F.JSON {
		return opts.F.PrintJSON(haStatusJSON{Watch: watch, Hosts: views})
	}
	now := opts.F.Now()
	switch {
	case watch == nil:
		fmt.Fprintln(opts.F.IO.ErrOut, "no ha watch runs: no host is protected (`kvmctl ha watch`, or its systemd unit)")
	case !watch.Alive:
		fmt.Fprintf(opts.F.IO.ErrOut, "the ha watch (pid %d) is gone: no host is protected; start another (`kvmctl ha watch`)\n", watch.PID)
	default:
		fmt.Fprintf(opts.F.IO.ErrOut, "%s, since %s\n", watch.Who, opts.F.IO.Time(watch.Since, now))
	}
	t := opts.F.IO.NewTable("HOST", "CLUSTER", "HA", "STATE", "SINCE", "HEALTH", "HEARTBEAT", "VERDICT", "ACTION", "NOTE")
	for _, v := range views {
		ago := func(at time.Time) string {
			if at.IsZero() {
				return "-"
			}
			return opts.F.IO.Time(at, now)
		}
		verdict := v.Verdict
		if verdict == "" {
			verdict = "-"
		} else if v.Streak > 0 {
			verdict = fmt.Sprintf("%s x%d", verdict, v.Streak)
		}
		note := v.Reason
		if v.Guard != "" {
			note = "guard " + v.Guard + ": " + note
		}
		if v.HeartbeatError != "" {
			note += " (heartbeat: " + v.HeartbeatError + ")"
		}
		t.AddRow(v.Host, v.Cluster, map[bool]string{true: "on", false: "off"}[v.Enabled], v.State, ago(v.Since), ago(v.LastHealth),
			ago(v.HeartbeatOK), verdict, v.Action, orDash(note))
	}
	return t.Render()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func runHAShow(opts *HAOptions) error {
	views, _, err := readHA(opts.F, []string{opts.Host})
	if err != nil {
		return err
	}
	v := views[0]
	var hist []events.Event
	if opts.History {
		if err := view(opts.F, func(tx state.Tx) (err error) {
			hist, err = journal.Events(tx, ha.StreamID(opts.Host))
			if state.IsNotFound(err) {
				err = nil
			}
			return err
		}); err != nil {
			return err
		}
	}
	if opts.F.JSON {
		out := map[string]any{"host": v}
		if opts.History {
			out["history"] = hist
		}
		return opts.F.PrintJSON(out)
	}
	w := opts.F.IO.Out
	now := opts.F.Now()
	line := func(k, val string) { fmt.Fprintf(w, "%-13s %s\n", k+":", orDash(val)) }
	line("host", v.Host+" (cluster "+v.Cluster+")")
	line("ha", map[bool]string{true: "enabled", false: "disabled"}[v.Enabled])
	line("state", v.State)
	if !v.Since.IsZero() {
		line("since", opts.F.IO.Time(v.Since, now))
	}
	line("reason", v.Reason)
	line("action", v.Action)
	if !v.LastHealth.IsZero() {
		line("last health", opts.F.IO.Time(v.LastHealth, now))
	}
	if !v.HeartbeatOK.IsZero() {
		line("heartbeat", fmt.Sprintf("seq %d written %s", v.HeartbeatSeq, opts.F.IO.Time(v.HeartbeatOK, now)))
	}
	line("verdict", v.Verdict)
	line("evidence", v.Evidence)
	line("guard", v.Guard)
	for _, r := range v.Recovery {
		where := r.To
		if r.Error != "" {
			where += " (" + r.Error + ")"
		}
		line("vm "+r.Name, r.State+" "+where)
	}
	if !opts.History {
		return nil
	}
	fmt.Fprintln(w)
	t := opts.F.IO.NewTable("TIME", "EVENT", "FROM", "TO", "VERDICT", "DETAIL")
	for _, e := range hist {
		detail := e.Message
		if len(e.Reads) > 0 {
			detail = strings.TrimSpace(detail + " [" + events.ReadsSummary(e.Reads) + "]")
		}
		if e.Evidence != "" {
			detail += " evidence: " + e.Evidence
		}
		if e.VM != "" {
			detail = e.VM + ": " + detail
		}
		t.AddRow(opts.F.IO.Time(e.Time, now), string(e.Type), orDash(e.FromState), orDash(e.HAState), orDash(e.Verdict), orDash(detail))
	}
	return t.Render()
}

func runHACheck(ctx context.Context, opts *HAOptions) error {
	if ctx == nil {
		ctx = context.Background()
	}
	var h state.Host
	var cluster []state.Host
	var rec state.HAHost
	var st state.HostStatus
	var cfg ha.Config
	var elsewhere = map[string]bool{}
	err := view(opts.F, func(tx state.Tx) (err error) {
		if h, err = state.GetHost(tx, opts.Host); err != nil {
			return inventory.NotFound("host", opts.Host, "hosts")
		}
		if cluster, err = inventory.ClusterHosts(tx, h.Cluster); err != nil {
			return err
		}
		if rec, _, err = state.GetHAHost(tx, h.Name); err != nil {
			return err
		}
		if st, err = state.GetHostStatus(tx, h.Name); err != nil {
			return err
		}
		for _, o := range cluster {
			if o.Name == h.Name {
				continue
			}
			os, err := state.GetHostStatus(tx, o.Name)
			if err != nil {
				return err
			}
			for _, vm := range os.VMs {
				if vm.State == "running" {
					elsewhere[vm.UUID] = true
				}
			}
		}
		cfg, err = ha.LoadConfig(tx)
		return err
	})
	if err != nil {
		return err
	}
	interval := opts.Interval
	if interval <= 0 {
		interval = cfg.CheckInterval
	}
	clients, err := agentClients(opts.F)
	if err != nil {
		return err
	}
	agents := haAgents{clients: clients}
	clk := clock.OrReal(opts.F.Clock)
	// Where its heartbeat is: its own agent says, if it answers; else what the watch last heard.
	hctx, cancel := clock.WithTimeout(ctx, clk, 2*time.Second)
	if rep, err := agents.Health(hctx, h); err == nil && rep.Heartbeat != nil {
		rec.HeartbeatFile = rep.Heartbeat.File
		fmt.Fprintf(opts.F.IO.ErrOut, "%s answers its health check: this check can only show it alive\n", h.Name)
	}
	cancel()
	rec.Host = h.Name
	req := ha.CheckRequest(rec, st, elsewhere)
	if req.HeartbeatFile == "" && len(req.Disks) == 0 {
		return errs.Refusedf("nothing to read of %s: its agent never said where its heartbeat is (no ha watch saw it) and it ran no VM with disks when last seen", h.Name)
	}
	// Healthy neighbours, in the inventory's order.
	var nbs []state.Host
	for _, o := range cluster {
		if o.Name == h.Name || len(nbs) >= cfg.Neighbours {
			continue
		}
		cctx, cancel := clock.WithTimeout(ctx, clk, 2*time.Second)
		_, err := agents.Health(cctx, o)
		cancel()
		if err == nil {
			nbs = append(nbs, o)
		}
	}
	if len(nbs) == 0 {
		return fmt.Errorf("no host of cluster %s answers its health check: no neighbour can read %s's files", h.Cluster, h.Name)
	}
	first := ha.Ask(ctx, clk, agents, nbs, req, 5*time.Second)
	_, _, base := ha.Judge(req, nil, first)
	if err := clock.Sleep(ctx, clk, interval); err != nil {
		return err
	}
	second := ha.Ask(ctx, clk, agents, nbs, req, 5*time.Second)
	v, reads, _ := ha.Judge(req, base, second)
	if opts.F.JSON {
		return opts.F.PrintJSON(map[string]any{"host": h.Name, "verdict": v, "interval_seconds": interval.Seconds(), "reads": reads})
	}
	t := opts.F.IO.NewTable("CHECKER", "FILE", "READ", "RESULT")
	for _, r := range reads {
		what := fmt.Sprintf("mtime %s size %d", r.MTime.UTC().Format("15:04:05.000"), r.Size)
		if r.Path == req.HeartbeatFile {
			what = fmt.Sprintf("seq %d boot %s", r.Seq, r.BootID)
		}
		result := "same"
		switch {
		case r.Error != "":
			what, result = "-", "error: "+r.Error
		case r.Baseline:
			result = "no earlier read"
		case r.Advanced:
			result = "advanced"
		}
		t.AddRow(r.Checker, orDash(r.Path), what, result)
	}
	if err := t.Render(); err != nil {
		return err
	}
	fmt.Fprintf(opts.F.IO.Out, "verdict: %s (two reads %s apart)\n", v, interval)
	return nil
}

// runHARequest stores an operator's word (confirm-down, or clear) for the ha watch.
func runHARequest(ctx context.Context, opts *HAOptions, confirmDown bool) error {
	if ctx == nil {
		ctx = context.Background()
	}
	if len(opts.Reason) > 1000 {
		return errs.Refusedf("--reason is %d bytes: keep it under 1000", len(opts.Reason))
	}
	h, err := getHost(opts.F, opts.Host)
	if err != nil {
		return err
	}
	views, watch, err := readHA(opts.F, []string{h.Name})
	if err != nil {
		return err
	}
	st := ha.State(views[0].State)
	if confirmDown {
		switch st {
		case ha.Suspect, ha.Checking, ha.Fencing:
		default:
			return errs.Refusedf("%s is %s in HA: confirm-down is for a host HA suspects or is fencing (`kvmctl ha status %s`)", h.Name, orDash(string(st)), h.Name)
		}
		// Its agent answering means it is not down: refuse.
		clients, err := agentClients(opts.F)
		if err != nil {
			return err
		}
		hctx, cancel := clock.WithTimeout(ctx, clock.OrReal(opts.F.Clock), 3*time.Second)
		_, herr := haAgents{clients: clients}.Health(hctx, h)
		cancel()
		if herr == nil {
			return errs.Refusedf("%s's agent answers: the host is not down, and its VMs would run twice; nothing was done", h.Name)
		}
		if !api.IsUnreachable(herr) {
			fmt.Fprintf(opts.F.IO.ErrOut, "kvmctl: %s's agent: %v\n", h.Name, firstLine(herr.Error()))
		}
		if !opts.Yes {
			if err := confirmDownPrompt(opts, h); err != nil {
				return err
			}
		}
	}
	req := state.HARequest{ConfirmDown: confirmDown, Clear: !confirmDown, Who: watchWho(), At: opts.F.Now().UTC(), Reason: opts.Reason}
	req.Who = strings.Replace(req.Who, "ha watch", "kvmctl", 1)
	if err := update(opts.F, func(tx state.Tx) error { return state.PutHARequest(tx, h.Name, req) }); err != nil {
		return err
	}
	what := map[bool]string{true: "confirm-down", false: "clear"}[confirmDown]
	switch {
	case watch != nil && watch.Alive:
		return done(opts.F, req, "%s of %s stored: the ha watch (pid %d) applies it within a second (`kvmctl ha show %s --history`)", what, h.Name, watch.PID, h.Name)
	default:
		return done(opts.F, req, "%s of %s stored: no ha watch runs; the next one applies it when it starts", what, h.Name)
	}
}

func confirmDownPrompt(opts *HAOptions, h state.Host) error {
	f := opts.F
	if !f.IO.IsStdinTTY() || !f.IO.IsStdoutTTY() {
		return errs.Refusedf("confirm-down starts %s's VMs on other hosts: give --yes when kvmctl is not on a terminal", h.Name)
	}
	fmt.Fprintf(f.IO.Out, "%s's VMs will start on other hosts: if %s still runs, they run twice.\nType the host's name to confirm it is powered off: ", h.Name, h.Name)
	line, err := bufio.NewReader(f.IO.In).ReadString('\n')
	if strings.TrimSpace(line) != h.Name {
		if err != nil && line == "" {
			return errs.Refusedf("no confirmation read: nothing was done")
		}
		return errs.Refusedf("%q is not %s: nothing was done", strings.TrimSpace(line), h.Name)
	}
	return nil
}

func runHAWatch(opts *HAOptions) error {
	m, err := newMonitor(opts.F)
	if err != nil {
		return err
	}
	if opts.F.Events {
		m.Events = events.NewNDJSON(opts.F.IO.Out)
	} else {
		m.Events = events.NewPlain(opts.F.IO.Out)
	}
	if opts.Metrics != "" {
		stop, err := serveMetrics(opts.Metrics, m)
		if err != nil {
			return err
		}
		defer stop()
	}
	ctx, stop := interruptible()
	defer stop()
	return m.Run(ctx)
}
