package orchestrate

import (
	"context"
	"errors"
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/clock"
	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/holds"
	"github.com/kvmctl/kvmctl/pkg/hooks"
	"github.com/kvmctl/kvmctl/pkg/inventory"
	"github.com/kvmctl/kvmctl/pkg/journal"
	"github.com/kvmctl/kvmctl/pkg/settings"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// RollingAgent is what rolling maintenance needs of a host's agent: maintenance, and stages.
type RollingAgent interface {
	MaintenanceAgent
	Hooks(ctx context.Context) ([]api.HookScript, error)
	StartStage(ctx context.Context, req api.StageRequest) (string, error)
	WaitStage(ctx context.Context, id string, wait time.Duration) (api.StageStatus, error)
}

// RollingDialer returns a client for the agent of host h.
type RollingDialer func(h state.Host) (RollingAgent, error)

// Rolling is the rolling-maintenance service, CloudStack's algorithm: PreFlight on every host
// first, then cluster by cluster, host by host (or N at a time): disable the cluster, check the
// Maintenance script, PreMaintenance, recheck capacity, enter maintenance, Maintenance, cancel
// maintenance, PostMaintenance; re-enable the cluster after its last host and on any error.
//
// A Rolling is long-lived and holds no run: Begin and BeginResume return an Execution, one run,
// which carries itself to the end. Every step is journaled before and after it happens, so a
// killed run is resumed where it stopped (see StepTable) and never leaves a cluster disabled or
// a host in maintenance that it put there.
type Rolling struct {
	Store  Store
	Dial   RollingDialer
	Events events.Sink
	Clock  clock.Clock
	// Holds says who this process is and who is alive; the zero value is this process.
	Holds holds.Table
	// Maint is the template of the maintenance engine that enters and leaves maintenance for a
	// run; its Store, Dial and Clock default to the run's.
	Maint *Maintenance
	Waits Waits
}

// ErrRunFailed is returned when a run ends without success; the result says why.
var ErrRunFailed = errors.New("rolling maintenance failed")

// ErrInterrupted is returned when the context ends mid-run: the run is left resumable.
var ErrInterrupted = errors.New("interrupted")

func (r *Rolling) clock() clock.Clock { return clock.OrReal(r.Clock) }

func (r *Rolling) table() holds.Table { return r.Holds.OrLocal() }

// rollPlan is a validated request: the hosts in order, grouped by cluster.
type rollPlan struct {
	clusters     []string
	hosts        []state.Host // cluster by cluster, in natural order
	pingInterval time.Duration
	timeout      time.Duration
	waitTimeout  time.Duration
	retention    journal.Retention
}

// validate resolves the request to hosts and checks everything that can be checked before any
// action; every problem is a refusal (exit 2) and nothing is changed.
func (r *Rolling) validate(tx state.Tx, req *RollingRequest) (rollPlan, error) {
	var p rollPlan
	if req.MaxUnavailable == 0 {
		req.MaxUnavailable = 1
	}
	if req.MaxUnavailable < 1 {
		return p, errs.Refusedf("--max-unavailable %d: must be at least 1", req.MaxUnavailable)
	}
	if _, err := hooks.SplitPayload(req.Payload); err != nil {
		return p, errs.Refusedf("--payload: %v", err)
	}
	ping, err := settings.GetInt(tx, settings.PingInterval)
	if err != nil {
		return p, err
	}
	p.pingInterval = time.Duration(ping) * time.Second
	if req.Timeout == 0 {
		st, err := settings.GetInt(tx, settings.StageTimeout)
		if err != nil {
			return p, err
		}
		req.Timeout = time.Duration(st) * time.Second
	}
	if req.Timeout < p.pingInterval {
		return p, errs.Refusedf("the stage timeout (%s) is below kvm.rolling.maintenance.ping.interval (%s): raise --timeout to at least %d, or lower the ping interval",
			req.Timeout, p.pingInterval, ping)
	}
	p.timeout = req.Timeout
	wait, err := settings.GetInt(tx, settings.WaitMaintenanceTimeout)
	if err != nil {
		return p, err
	}
	p.waitTimeout = time.Duration(wait) * time.Second
	if p.retention, err = retention(tx); err != nil {
		return p, err
	}
	if p.hosts, p.clusters, err = inventory.Resolve(tx, req.Scope); err != nil {
		return p, err
	}
	// A run that overlaps another holder is refused naming it, before the host states below,
	// which that holder may be changing.
	if err := r.table().Check(tx, holds.Ref{}, runSubjects(p.clusters, p.hosts)); err != nil {
		return p, err
	}
	for _, h := range p.hosts {
		switch h.ResourceState {
		case state.PrepareForMaintenance, state.Maintenance, state.ErrorInMaintenance:
			return p, errs.Refusedf("host %s is in %s: cancel its maintenance first (kvmctl maintenance cancel %s)", h.Name, h.ResourceState, h.Name)
		}
	}
	return p, nil
}

// runSubjects are what a run must find free: its clusters and their hosts.
func runSubjects(clusters []string, hosts []state.Host) []holds.Subject {
	var s []holds.Subject
	for _, c := range clusters {
		s = append(s, holds.Cluster(c))
	}
	for _, h := range hosts {
		s = append(s, holds.Host(h.Name))
	}
	return s
}

// retention reads the journal's retention settings.
func retention(tx state.Tx) (journal.Retention, error) {
	keep, err := settings.GetInt(tx, settings.JournalKeep)
	if err != nil {
		return journal.Retention{}, err
	}
	days, err := settings.GetInt(tx, settings.JournalDays)
	return journal.Retention{Keep: int(keep), MaxAge: time.Duration(days) * 24 * time.Hour}, err
}

// clearStaleRunHolds drops holds of runs that are not running any more (a run's end releases
// them in its last record; these are left by an end that could not be written, or by a kvmctl
// from before holds).
func clearStaleRunHolds(tx state.Tx) error {
	all, err := holds.List(tx)
	if err != nil {
		return err
	}
	for _, h := range all {
		if h.Kind != holds.Rolling {
			continue
		}
		run, err := LoadRun(tx, h.ID)
		if state.IsNotFound(err) || (err == nil && run.State != events.RunRunning) {
			if err := holds.Release(tx, h.Ref(), h.Subject); err != nil {
				return err
			}
		}
	}
	return nil
}

// Start validates req, takes the clusters' holds and runs it to the end.
func (r *Rolling) Start(ctx context.Context, req RollingRequest) (RunResult, error) {
	x, err := r.Begin(req)
	if err != nil {
		return RunResult{}, err
	}
	return x.Execute(ctx)
}

// Begin validates req, records the run and takes its clusters' holds, all in one transaction,
// without acting yet: the caller learns the run (for a live view) and then calls Execute.
func (r *Rolling) Begin(req RollingRequest) (*Execution, error) {
	if req.DryRun {
		return nil, errors.New("use DryRun for a dry run")
	}
	now := r.clock().Now().UTC()
	run := &Run{ID: newID("r", now), State: events.RunRunning, CreatedAt: now, Owner: r.table().Self}
	err := r.Store.Update(func(tx state.Tx) error {
		if err := clearStaleRunHolds(tx); err != nil {
			return err
		}
		p, err := r.validate(tx, &req)
		if err != nil {
			return err
		}
		run.Request, run.PingInterval, run.WaitTimeout = req, p.pingInterval, p.waitTimeout
		for _, c := range p.clusters {
			run.Clusters = append(run.Clusters, &RunCluster{Name: c})
		}
		for _, h := range p.hosts {
			run.Hosts = append(run.Hosts, &RunHost{Name: h.Name, Cluster: h.Cluster, Step: events.StepPending, Stages: map[events.Stage]*StageRecord{}})
		}
		var subjects []holds.Subject
		for _, c := range p.clusters {
			subjects = append(subjects, holds.Cluster(c))
		}
		if _, err := r.table().Take(tx, holds.Hold{Kind: holds.Rolling, ID: run.ID, Since: now, What: "rolling run " + run.ID}, subjects); err != nil {
			return err
		}
		if _, err := journal.Prune(tx, p.retention, now); err != nil {
			return err
		}
		if err := journal.Open(tx, run.ID, journal.Rolling, "", state.BucketRuns, now); err != nil {
			return err
		}
		return r.appendRun(tx, run, events.Event{Type: events.RunStarted, RunID: run.ID, HostCount: len(run.Hosts),
			ClusterCount: len(run.Clusters), Forced: req.Forced, MaxUnavailable: req.MaxUnavailable}, now)
	})
	if err != nil {
		return nil, err
	}
	x := r.execution(run)
	x.started = true
	return x, nil
}

// appendRun writes run and one journal event of its stream in tx.
func (r *Rolling) appendRun(tx state.Tx, run *Run, e events.Event, now time.Time) error {
	e.RunID = run.ID
	if _, _, err := journal.AppendTx(tx, run.ID, e, now); err != nil {
		return err
	}
	return state.PutJSON(tx, state.BucketRuns, run.ID, run)
}

// loadRunning reads run id for a verb (resume, abort) that only applies to a running run.
func loadRunning(tx state.Tx, id, verb string) (*Run, error) {
	run, err := LoadRun(tx, id)
	if state.IsNotFound(err) {
		return nil, errs.Refusedf("no run %q: `kvmctl rolling list` shows the runs", id)
	}
	if err != nil {
		return nil, err
	}
	if verb == "abort" && run.NeedsRestore {
		// A finished run that could not restore everything may be aborted again to retry.
		run.State = events.RunRunning
		return run, nil
	}
	if run.State != events.RunRunning {
		return nil, errs.Refusedf("run %s has %s: nothing to %s", id, run.State, verb)
	}
	return run, nil
}

// takeOver makes this process the run's owner, with its holds, in tx: the run's kvmctl died.
func (r *Rolling) takeOver(tx state.Tx, run *Run, now time.Time) error {
	t := r.table()
	if err := t.TakeOver(tx, run.ref(), now); err != nil {
		return err
	}
	// Re-assert the holds of the clusters still to do (a run recorded before holds kept them
	// as locks, which TakeOver converted; a finished-but-unrestored run has none left).
	var subjects []holds.Subject
	for _, c := range run.Clusters {
		if !c.Done || c.Disabled {
			subjects = append(subjects, holds.Cluster(c.Name))
		}
	}
	run.Owner = t.Self
	_, err := t.Take(tx, holds.Hold{Kind: holds.Rolling, ID: run.ID, Since: now, What: "rolling run " + run.ID}, subjects)
	return err
}

// Resume takes over run id from a kvmctl that died and runs it to the end.
func (r *Rolling) Resume(ctx context.Context, id string) (RunResult, error) {
	x, err := r.BeginResume(id)
	if err != nil {
		return RunResult{}, err
	}
	return x.Execute(ctx)
}

// BeginResume takes over run id from a kvmctl that died, without acting yet; Execute goes on. It
// re-attaches to a stage still running by its execution id and never runs a finished stage again.
func (r *Rolling) BeginResume(id string) (*Execution, error) {
	var run *Run
	t := r.table()
	err := r.Store.Update(func(tx state.Tx) error {
		var err error
		if run, err = loadRunning(tx, id, "resume"); err != nil {
			return err
		}
		if run.Owner != t.Self && t.IsAlive(run.Owner) {
			return errs.Refusedf("run %s is still running (pid %d): only a run whose kvmctl died can be resumed; `kvmctl rolling status %s --follow` watches it", id, run.Owner.PID, id)
		}
		prev := run.Owner
		now := r.clock().Now().UTC()
		if err := r.takeOver(tx, run, now); err != nil {
			return err
		}
		return r.appendRun(tx, run, events.Event{Type: events.RunResumed, PreviousPID: prev.PID}, now)
	})
	if err != nil {
		return nil, err
	}
	return r.execution(run), nil
}

// Abort stops run id after its current step and restores its clusters and hosts. A run whose
// kvmctl still lives is asked to stop (it restores things itself, and asked is true); a run
// whose kvmctl died is restored here.
func (r *Rolling) Abort(ctx context.Context, id string) (res RunResult, asked bool, err error) {
	var run *Run
	t := r.table()
	err = r.Store.Update(func(tx state.Tx) error {
		var err error
		if run, err = loadRunning(tx, id, "abort"); err != nil {
			return err
		}
		now := r.clock().Now().UTC()
		run.AbortRequested = true
		if err := tx.Put(state.BucketAborts, run.ID, []byte("1")); err != nil {
			return err
		}
		if run.Owner != t.Self && t.IsAlive(run.Owner) {
			asked = true
			return r.appendRun(tx, run, events.Event{Type: events.RunAbortRequested}, now)
		}
		if err := r.takeOver(tx, run, now); err != nil {
			return err
		}
		return r.appendRun(tx, run, events.Event{Type: events.RunAbortRequested, Message: "its kvmctl died; restoring here"}, now)
	})
	if err != nil || asked {
		if run != nil {
			return run.Result(), asked, err
		}
		return RunResult{}, asked, err
	}
	x := r.execution(run)
	res, err = x.abortHere(ctx)
	return res, false, err
}

// Free refuses, naming the holder and what to do, when a rolling run, a maintenance action or
// any other holder holds one of subjects. The inventory commands (cluster enable|disable|rm,
// host set|rm, inventory apply) call it in the transaction of their change.
func Free(tx state.Tx, t holds.Table, subjects ...holds.Subject) error {
	if err := clearStaleRunHolds(tx); err != nil {
		return err
	}
	return t.Check(tx, holds.Ref{}, subjects)
}
