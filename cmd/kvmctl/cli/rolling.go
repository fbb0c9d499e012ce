package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvmctl/kvmctl/pkg/cmdutil"
	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/holds"
	"github.com/kvmctl/kvmctl/pkg/orchestrate"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// RollingOptions are the inputs of the `kvmctl rolling` subcommands.
type RollingOptions struct {
	F        *cmdutil.Factory
	Req      orchestrate.RollingRequest
	TimeoutS int
	RunID    string
}

func newRollingCmd(f *cmdutil.Factory) *cobra.Command {
	opts := &RollingOptions{F: f}
	start := &cobra.Command{
		Use:   "start (--zone|--pod|--cluster|--host IDS) [--forced] [--timeout S] [--payload \"...\"] [--dry-run] [--max-unavailable N]",
		Short: "Patch hosts one by one (or N at a time) through the four hook-script stages",
		Long: `Start runs CloudStack's rolling maintenance over the hosts of the given zones, pods, clusters
or hosts (IDS is a comma-separated list; the flag may repeat; exactly one kind):

  1. PreFlight on every host; any failure stops the run before anything changed (--forced: that
     host is skipped); exit 70 means "no maintenance needed" and skips the host.
  2. Cluster by cluster, host by host in inventory order: disable the cluster; skip a host with
     no Maintenance script; PreMaintenance (70 skips); recheck capacity; enter maintenance (VMs
     move away); Maintenance; cancel maintenance; PostMaintenance. The cluster is enabled again
     after its last host, and on any error.

Every step is journaled in the state file before and after it happens: if kvmctl is killed,
` + "`kvmctl rolling resume RUN`" + ` finishes the run. Exit 0 on success, 1 otherwise.`,
		Args: cmdutil.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Req.Timeout = time.Duration(opts.TimeoutS) * time.Second
			if opts.TimeoutS < 0 {
				return errs.Refusedf("--timeout %d: must be positive", opts.TimeoutS)
			}
			if opts.Req.MaxUnavailable < 1 {
				return errs.Refusedf("--max-unavailable %d: must be at least 1", opts.Req.MaxUnavailable)
			}
			opts.Req.Zones, opts.Req.Pods = splitList(opts.Req.Zones), splitList(opts.Req.Pods)
			opts.Req.Clusters, opts.Req.Hosts = splitList(opts.Req.Clusters), splitList(opts.Req.Hosts)
			return runRollingStart(opts)
		},
	}
	fl := start.Flags()
	fl.StringSliceVar(&opts.Req.Zones, "zone", nil, "zones to maintain")
	fl.StringSliceVar(&opts.Req.Pods, "pod", nil, "pods to maintain")
	fl.StringSliceVar(&opts.Req.Clusters, "cluster", nil, "clusters to maintain")
	fl.StringSliceVar(&opts.Req.Hosts, "host", nil, "hosts to maintain")
	fl.BoolVar(&opts.Req.Forced, "forced", false, "skip a failing host and go on instead of stopping")
	cmdutil.SecondsVar(fl, &opts.TimeoutS, "timeout", 0, "how long a stage may run on a host (default kvm.rolling.maintenance.stage.timeout)")
	fl.StringVar(&opts.Req.Payload, "payload", "", "extra arguments for every script, split by shell quoting rules (no shell runs them)")
	fl.BoolVar(&opts.Req.DryRun, "dry-run", false, "print the plan (order, scripts, capacity) and change nothing")
	fl.IntVar(&opts.Req.MaxUnavailable, "max-unavailable", 1, "hosts of a cluster in maintenance at the same time")
	start.MarkFlagsMutuallyExclusive("zone", "pod", "cluster", "host")
	start.MarkFlagsOneRequired("zone", "pod", "cluster", "host")

	status := &cobra.Command{
		Use:   "status [RUN]",
		Short: "Show a run's progress (the newest run without RUN); works while it runs",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				opts.RunID = args[0]
			}
			return runRollingStatus(opts)
		},
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List rolling-maintenance runs, newest first",
		Args:  cmdutil.NoArgs,
		RunE:  func(cmd *cobra.Command, args []string) error { return runRollingList(opts) },
	}
	resume := &cobra.Command{
		Use:   "resume RUN",
		Short: "Finish a run whose kvmctl was killed, from where it stopped",
		Args:  cmdutil.ExactArgs(1, "one RUN id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.RunID = args[0]
			return runRollingResume(opts)
		},
	}
	abort := &cobra.Command{
		Use:   "abort RUN",
		Short: "Stop a run after its current step and restore its clusters and hosts",
		Args:  cmdutil.ExactArgs(1, "one RUN id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.RunID = args[0]
			return runRollingAbort(opts)
		},
	}
	return group("rolling", "Rolling maintenance of zones, pods, clusters or hosts through hook scripts", start, status, list, resume, abort)
}

// rollingEngine wires the rolling engine, and the maintenance engine it drives, to the state
// file and the agents; the run journals the maintenance engine's events itself.
func rollingEngine(f *cmdutil.Factory) (*orchestrate.Rolling, error) {
	m, clients, err := maintenanceEngine(f)
	if err != nil {
		return nil, err
	}
	m.Events = nil
	dial := func(h state.Host) (orchestrate.RollingAgent, error) { return clients(h) }
	return &orchestrate.Rolling{Store: m.Store, Dial: dial, Clock: f.Clock, Maint: m}, nil
}

// interruptible cancels ctx on SIGINT/SIGTERM; the run stays resumable.
func interruptible() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

func runRollingStart(opts *RollingOptions) error {
	r, err := rollingEngine(opts.F)
	if err != nil {
		return err
	}
	ctx, cancel := interruptible()
	defer cancel()
	if opts.Req.DryRun {
		plan, err := r.DryRun(ctx, opts.Req)
		if err != nil {
			return err
		}
		return printDryRun(opts.F, plan)
	}
	x, err := r.Begin(opts.Req)
	return followRun(opts, x, err)
}

func runRollingResume(opts *RollingOptions) error {
	r, err := rollingEngine(opts.F)
	if err != nil {
		return err
	}
	x, err := r.BeginResume(opts.RunID)
	return followRun(opts, x, err)
}

// followRun runs the engine with the output the operator asked for and maps the result to the
// exit code: 0 on success, 1 otherwise.
func followRun(opts *RollingOptions, x *orchestrate.Execution, err error) error {
	if err != nil {
		return err
	}
	f := opts.F
	ctx, cancel := interruptible()
	defer cancel()
	useTUI := f.IO.IsStdoutTTY() && f.IO.IsStdinTTY() && !f.JSON && !f.Events && !f.NoTUI
	run := x.Run()
	var res orchestrate.RunResult
	if useTUI {
		var detached bool
		res, detached, err = followRunTUI(ctx, f, x)
		if detached {
			// The run is not finished: it waits, hosts and clusters as they are, for resume.
			fmt.Fprintf(f.IO.ErrOut, "kvmctl: stopped following run %s; it is paused where it was (hosts and clusters as they are): `kvmctl rolling resume %s` goes on, `kvmctl rolling abort %s` restores\n", run.ID, run.ID, run.ID)
			return cmdutil.ErrSilent
		}
	} else {
		x.Events = progressSink(f)
		res, err = x.Execute(ctx)
	}
	if errors.Is(err, orchestrate.ErrInterrupted) {
		return err
	}
	if err != nil && !errors.Is(err, orchestrate.ErrRunFailed) {
		return err
	}
	if f.JSON {
		if perr := f.PrintJSON(res); perr != nil {
			return perr
		}
	} else if !f.Events {
		printRunSummary(f, res)
	}
	if !res.Success {
		return cmdutil.ErrSilent // the summary above says why
	}
	return nil
}

func printRunSummary(f *cmdutil.Factory, res orchestrate.RunResult) {
	w := f.IO.Out
	fmt.Fprintf(w, "run %s %s: %s\n", res.RunID, res.State, res.Details)
	for _, h := range res.HostsUpdated {
		fmt.Fprintf(w, "  updated  %-10s %-8s %s\n", h.Host, h.Cluster, h.EndedAt.Sub(h.StartedAt).Round(time.Millisecond))
	}
	for _, h := range res.HostsSkipped {
		fmt.Fprintf(w, "  skipped  %-10s %-8s %s\n", h.Host, h.Cluster, h.Reason)
	}
}

func printDryRun(f *cmdutil.Factory, plan orchestrate.DryRunPlan) error {
	if err := printDryRunPlan(f, plan); err != nil {
		return err
	}
	if len(plan.Problems) == 0 {
		if !f.JSON {
			fmt.Fprintln(f.IO.Out, "verdict: a real run would start")
		}
		return nil
	}
	if !plan.WouldStop {
		if !f.JSON {
			fmt.Fprintf(f.IO.Out, "verdict: with --forced a real run would skip: %s\n", strings.Join(plan.Problems, "; "))
		}
		return nil
	}
	if !f.JSON {
		fmt.Fprintf(f.IO.Out, "verdict: a real run would stop before any action: %s\n", strings.Join(plan.Problems, "; "))
	}
	// Exit 1: scripts can tell a plan that would fail from one that would run.
	return cmdutil.ErrSilent
}

func printDryRunPlan(f *cmdutil.Factory, plan orchestrate.DryRunPlan) error {
	if f.JSON {
		return f.PrintJSON(plan)
	}
	w := f.IO.Out
	fmt.Fprintf(w, "dry run: %d hosts in %d clusters (%s), stage timeout %s, ping interval %s, max unavailable %d, forced %v; nothing changed\n",
		len(plan.Hosts), len(plan.Clusters), strings.Join(plan.Clusters, ", "), plan.Timeout, plan.PingInterval, plan.MaxUnavailable, plan.Forced)
	t := f.IO.NewTable("#", "HOST", "CLUSTER", "BATCH", "AGENT", "PREFLIGHT", "PREMAINT", "MAINT", "POSTMAINT", "CAPACITY")
	for _, h := range plan.Hosts {
		t.AddRow(fmt.Sprint(h.Order), h.Host, h.Cluster, fmt.Sprint(h.Batch), h.Connection,
			h.Scripts["PreFlight"], h.Scripts["PreMaintenance"], h.Scripts["Maintenance"], h.Scripts["PostMaintenance"], h.Capacity)
	}
	return t.Render()
}

func loadRun(f *cmdutil.Factory, id string) (*orchestrate.Run, error) {
	var run *orchestrate.Run
	err := view(f, func(tx state.Tx) error {
		if id == "" {
			runs, err := orchestrate.ListRuns(tx)
			if err != nil {
				return err
			}
			if len(runs) == 0 {
				return errs.Refusedf("no rolling-maintenance run yet: `kvmctl rolling start --help`")
			}
			run = runs[0]
			return nil
		}
		var err error
		run, err = orchestrate.LoadRun(tx, id)
		if state.IsNotFound(err) {
			return errs.Refusedf("no run %q: `kvmctl rolling list` shows the runs", id)
		}
		return err
	})
	return run, err
}

func runRollingStatus(opts *RollingOptions) error {
	run, err := loadRun(opts.F, opts.RunID)
	if err != nil {
		return err
	}
	alive := holds.ProcessAlive(run.Owner)
	if opts.F.JSON {
		return opts.F.PrintJSON(map[string]any{"run": run, "result": run.Result(), "owner_alive": alive})
	}
	w := opts.F.IO.Out
	now := opts.F.Now()
	state := string(run.State)
	dead := run.State == events.RunRunning && !alive
	if dead {
		state += fmt.Sprintf(" (its kvmctl, pid %d, is gone: `kvmctl rolling resume %s`)", run.Owner.PID, run.ID)
	}
	fmt.Fprintf(w, "run %s: %s, started %s\n", run.ID, state, opts.F.IO.Time(run.CreatedAt, now))
	if run.Details != "" {
		fmt.Fprintf(w, "details: %s\n", run.Details)
	}
	t := opts.F.IO.NewTable("HOST", "CLUSTER", "STEP", "PREFLIGHT", "PREMAINT", "MAINT", "POSTMAINT", "VMS MOVED", "REASON")
	for _, h := range run.Hosts {
		cell := func(stage events.Stage) string {
			rec := h.Stages[stage]
			if rec == nil {
				return ""
			}
			if rec.Outcome != "" {
				return string(rec.Outcome)
			}
			return string(rec.State)
		}
		t.AddRow(h.Name, h.Cluster, string(h.Step), cell(events.PreFlight), cell(events.PreMaintenance), cell(events.Maintenance), cell(events.PostMaintenance), fmt.Sprint(h.VMsMoved), h.Reason)
	}
	if err := t.Render(); err != nil {
		return err
	}
	if !dead {
		return nil
	}
	// What each verb would do with each unfinished host: the engine's step table.
	fmt.Fprintln(w, "\nhosts left unfinished, and what resume or abort does with each:")
	n := opts.F.IO.NewTable("HOST", "STEP", "RESUME", "ABORT")
	for _, h := range run.Hosts {
		if h.Active() {
			rule := orchestrate.RuleFor(h.Step)
			n.AddRow(h.Name, string(h.Step), rule.Resume, rule.Abort)
		}
	}
	return n.Render()
}

func runRollingList(opts *RollingOptions) error {
	var runs []*orchestrate.Run
	if err := view(opts.F, func(tx state.Tx) (err error) { runs, err = orchestrate.ListRuns(tx); return err }); err != nil {
		return err
	}
	if opts.F.JSON {
		out := make([]orchestrate.RunResult, 0, len(runs))
		for _, r := range runs {
			out = append(out, r.Result())
		}
		return opts.F.PrintJSON(out)
	}
	now := opts.F.Now()
	t := opts.F.IO.NewTable("RUN", "STATE", "STARTED", "HOSTS", "UPDATED", "SKIPPED", "DETAILS")
	for _, r := range runs {
		res := r.Result()
		t.AddRow(r.ID, string(r.State), opts.F.IO.Time(r.CreatedAt, now), fmt.Sprint(len(r.Hosts)), fmt.Sprint(len(res.HostsUpdated)), fmt.Sprint(len(res.HostsSkipped)), firstLine(r.Details))
	}
	return t.Render()
}

func runRollingAbort(opts *RollingOptions) error {
	r, err := rollingEngine(opts.F)
	if err != nil {
		return err
	}
	r.Events = progressSink(opts.F)
	res, asked, err := r.Abort(context.Background(), opts.RunID)
	if err != nil {
		return err
	}
	if asked {
		return done(opts.F, map[string]any{"run_id": opts.RunID, "abort_requested": true},
			"asked run %s to stop after its current step; it restores its clusters and hosts itself (`kvmctl rolling status %s`)", opts.RunID, opts.RunID)
	}
	return done(opts.F, res, "run %s aborted: its clusters and hosts are restored", opts.RunID)
}
