package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/cmdutil"
	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/hooks"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// HooksListOptions are the inputs of `kvmctl hooks list`.
type HooksListOptions struct {
	F       *cmdutil.Factory
	Host    string
	Timeout time.Duration
}

// HooksRunOptions are the inputs of `kvmctl hooks run`.
type HooksRunOptions struct {
	F     *cmdutil.Factory
	Host  string
	Stage string
	// Payload is passed to the script as arguments, split by shell quoting rules.
	Payload string
	// TimeoutS bounds the script's run time on the agent, in seconds.
	TimeoutS int
	// Force runs a maintenance stage on a host that is not in maintenance and runs VMs.
	Force bool
}

// hooksRunMargin is how long past the stage timeout kvmctl keeps waiting: the agent's grace
// period between SIGTERM and SIGKILL, and the result's way back.
const hooksRunMargin = 30 * time.Second

// hooksRetryDelay is the pause before asking again when the agent did not answer mid-stage
// (an agent restart does not lose a stage).
const hooksRetryDelay = time.Second

func newHooksCmd(f *cmdutil.Factory) *cobra.Command {
	return group("hooks", "List and try the rolling-maintenance stage scripts of a host",
		newHooksListCmd(f), newHooksRunCmd(f))
}

func newHooksListCmd(f *cmdutil.Factory) *cobra.Command {
	opts := &HooksListOptions{F: f, Timeout: 10 * time.Second}
	c := &cobra.Command{
		Use:   "list HOST",
		Short: "Show which stages have a script on a host, and why a script would be refused",
		Long: `List asks the host's agent for the script of each stage (PreFlight, PreMaintenance,
Maintenance, PostMaintenance): present, missing, or refused with the reason (outside the hooks
dir, writable by group or others, not executable, two scripts for one stage).`,
		Args: cmdutil.ExactArgs(1, "HOST"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Host = args[0]
			return runHooksList(opts)
		},
	}
	cmdutil.DurationVar(c.Flags(), &opts.Timeout, "timeout", opts.Timeout, "how long to wait for the agent")
	return c
}

func newHooksRunCmd(f *cmdutil.Factory) *cobra.Command {
	opts := &HooksRunOptions{F: f, TimeoutS: api.DefaultStageTimeoutS}
	c := &cobra.Command{
		Use:   "run HOST STAGE",
		Short: "Run one stage script on a host now and wait for its result",
		Long: `Run starts STAGE's script on HOST under a fresh run id and waits until it ends, then prints
its outcome, exit code, note and output. Nothing else happens to the host: no maintenance mode,
no VM moves. --payload is passed as arguments, split by shell quoting rules without a shell.

PreMaintenance, Maintenance and PostMaintenance are refused on a host that runs VMs and is not
in maintenance (a Maintenance script may reboot it under them), unless --force: put the host in
maintenance first (kvmctl maintenance enable HOST). PreFlight changes nothing and always runs.

Exit codes: 0 when the outcome is succeeded or skipped (exit 70, no maintenance needed); 1 when
it failed, timed out or was terminated, or the stage has no script; 2 for an unknown host or
stage, a script the agent refuses to run, or a maintenance stage refused as above.`,
		Args: cmdutil.ExactArgs(2, "HOST and STAGE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Host, opts.Stage = args[0], args[1]
			return runHooksRun(cmd.Context(), opts)
		},
	}
	c.Flags().StringVar(&opts.Payload, "payload", "", "arguments for the script, e.g. '--kernel \"6.1 lts\"'")
	c.Flags().BoolVar(&opts.Force, "force", false, "run a maintenance stage although the host runs VMs and is not in maintenance")
	cmdutil.SecondsVar(c.Flags(), &opts.TimeoutS, "timeout", opts.TimeoutS, "how long the script may run before it is killed")
	return c
}

// hooksClient reads host from the state file, lets go of the file, and returns a client for its
// agent: nothing holds the state file while we talk to the agent.
func hooksClient(f *cmdutil.Factory, name string) (*api.Client, error) {
	h, err := getHost(f, name)
	if err != nil {
		return nil, err
	}
	clients, err := agentClients(f)
	if err != nil {
		return nil, err
	}
	return clients(h)
}

// hookListItem is one line of `hooks list`.
type hookListItem struct {
	api.HookScript
	// Status is present, missing or refused.
	Status string `json:"status"`
}

func runHooksList(opts *HooksListOptions) error {
	if opts.Timeout <= 0 {
		return errs.Refusedf("--timeout %s: must be positive, e.g. 10s", opts.Timeout)
	}
	c, err := hooksClient(opts.F, opts.Host)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), opts.Timeout)
	defer cancel()
	scripts, err := c.Hooks(ctx)
	if err != nil {
		return err
	}
	items := make([]hookListItem, 0, len(scripts))
	for _, s := range scripts {
		it := hookListItem{HookScript: s, Status: "present"}
		switch {
		case !s.Present:
			it.Status = "missing"
		case s.Refused != "":
			it.Status = "refused"
		}
		items = append(items, it)
	}
	if opts.F.JSON {
		return opts.F.PrintJSON(items)
	}
	t := opts.F.IO.NewTable("STAGE", "SCRIPT", "STATUS")
	for _, it := range items {
		status := it.Status
		if it.Refused != "" {
			status += ": " + it.Refused
		}
		t.AddRow(string(it.Stage), it.Path, status)
	}
	return t.Render()
}

// hookRunResult is what `hooks run --json` prints.
type hookRunResult struct {
	Host      string         `json:"host"`
	Stage     events.Stage   `json:"stage"`
	RunID     string         `json:"run_id"`
	ExecID    string         `json:"exec_id,omitempty"`
	Outcome   events.Outcome `json:"outcome"`
	ExitCode  int            `json:"exit_code"`
	Output    string         `json:"output"`
	StartedAt time.Time      `json:"started_at,omitzero"`
	EndedAt   time.Time      `json:"ended_at,omitzero"`
	Note      string         `json:"note,omitempty"`
}

func runHooksRun(ctx context.Context, opts *HooksRunOptions) error {
	if ctx == nil {
		ctx = context.Background()
	}
	stage, err := events.ParseStage(opts.Stage)
	if err != nil {
		return errs.Refused(err)
	}
	if opts.TimeoutS <= 0 {
		return errs.Refusedf("--timeout %d: must be a positive number of seconds", opts.TimeoutS)
	}
	if _, err := hooks.SplitPayload(opts.Payload); err != nil {
		return errs.Refusedf("--payload: %w", err)
	}
	h, err := getHost(opts.F, opts.Host)
	if err != nil {
		return err
	}
	clients, err := agentClients(opts.F)
	if err != nil {
		return err
	}
	c, err := clients(h)
	if err != nil {
		return err
	}
	defer c.Close()
	if stage != events.PreFlight && !opts.Force {
		if err := maintenanceStageAllowed(ctx, c, h, stage); err != nil {
			return err
		}
	}

	timeout := time.Duration(opts.TimeoutS) * time.Second
	ctx, cancel := context.WithTimeout(ctx, timeout+hooksRunMargin)
	defer cancel()
	res := hookRunResult{Host: opts.Host, Stage: stage, RunID: fmt.Sprintf("manual-%d", opts.F.Now().UnixNano())}
	id, err := c.StartStage(ctx, api.StageRequest{RunID: res.RunID, Stage: stage, Payload: opts.Payload, TimeoutS: opts.TimeoutS})
	switch {
	case api.IsCode(err, api.CodeNoScript):
		res.Outcome, res.ExitCode, res.Note = events.OutcomeNotFound, -1, firstLine(agentMessage(err))
		return printHookRun(opts.F, res)
	case api.IsCode(err, api.CodeScriptRefused):
		return errs.Refusedf("%s: fix the script on %s, then check with `kvmctl hooks list %s`", agentMessage(err), opts.Host, opts.Host)
	case err != nil:
		return err
	}
	res.ExecID = id
	fmt.Fprintf(opts.F.IO.ErrOut, "running %s on %s (run %s)...\n", stage, opts.Host, res.RunID)

	st, err := waitStage(ctx, c, id)
	if err != nil {
		return fmt.Errorf("wait for %s on %s (exec %s): %w", stage, opts.Host, id, err)
	}
	res.Outcome, res.ExitCode, res.Output, res.Note = st.Outcome, st.ExitCode, st.Output, st.Note
	res.StartedAt, res.EndedAt = st.StartedAt, st.EndedAt
	return printHookRun(opts.F, res)
}

// maintenanceStageAllowed refuses a maintenance stage on a host that runs VMs and is not in
// maintenance: the agent's own status says both (the state file may be behind).
func maintenanceStageAllowed(ctx context.Context, c *api.Client, h state.Host, stage events.Stage) error {
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := c.Status(sctx)
	if err != nil {
		return fmt.Errorf("ask %s whether it runs VMs before its %s: %w (--force runs it without asking)", h.Name, stage, err)
	}
	running := 0
	for _, vm := range st.VMs {
		if vm.State == "running" {
			running++
		}
	}
	inMaint := st.AgentState == api.AgentStateInMaintenance || h.ResourceState == state.Maintenance
	if running == 0 || inMaint {
		return nil
	}
	return errs.Refusedf("%s on %s, which runs %s and is not in maintenance: a %s script may reboot it under them; "+
		"`kvmctl maintenance enable %s` first, or --force", stage, h.Name, plural(running, "VM"), stage, h.Name)
}

// waitStage long-polls until the stage completes or ctx ends. An agent that does not answer is
// asked again: the stage survives an agent restart.
func waitStage(ctx context.Context, c *api.Client, id string) (api.StageStatus, error) {
	for {
		wait := api.MaxStageWait
		if dl, ok := ctx.Deadline(); ok {
			wait = min(wait, time.Until(dl))
		}
		st, err := c.WaitStage(ctx, id, wait)
		switch {
		case err == nil && st.Done():
			return st, nil
		case err == nil:
			if wait < time.Second {
				// Near the deadline the agent answers at once; do not spin.
				time.Sleep(100 * time.Millisecond)
			}
		case api.IsUnreachable(err):
			select {
			case <-ctx.Done():
				return st, fmt.Errorf("%w (last: %w)", ctx.Err(), err)
			case <-time.After(hooksRetryDelay):
			}
		default:
			return st, err
		}
		if ctx.Err() != nil {
			return st, fmt.Errorf("stage still %s when kvmctl stopped waiting: %w", st.State, ctx.Err())
		}
	}
}

// agentMessage is the agent's own message of an *api.Error, without the "agent h1:" wrapping.
func agentMessage(err error) string {
	var e *api.Error
	if errors.As(err, &e) {
		return e.Message
	}
	return err.Error()
}

func printHookRun(f *cmdutil.Factory, res hookRunResult) error {
	if f.JSON {
		if err := f.PrintJSON(res); err != nil {
			return err
		}
	} else {
		out := f.IO.Out
		line := fmt.Sprintf("%s %s: %s (exit code %d)", res.Host, res.Stage, res.Outcome, res.ExitCode)
		if !res.EndedAt.IsZero() && !res.StartedAt.IsZero() {
			line += fmt.Sprintf(" in %s", res.EndedAt.Sub(res.StartedAt).Round(time.Millisecond))
		}
		fmt.Fprintln(out, line)
		if res.Note != "" {
			fmt.Fprintf(out, "note: %s\n", res.Note)
		}
		if res.Output != "" {
			fmt.Fprintln(out, "output:")
			fmt.Fprint(out, res.Output)
			if !strings.HasSuffix(res.Output, "\n") {
				fmt.Fprintln(out)
			}
		}
	}
	switch res.Outcome {
	case events.OutcomeSucceeded, events.OutcomeSkipped:
		return nil
	}
	return cmdutil.ErrSilent
}
