package orchestrate

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/backoff"
	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/hooks"
	"github.com/kvmctl/kvmctl/pkg/inventory"
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

// Rolling runs rolling maintenance, CloudStack's algorithm: PreFlight on every host first, then
// cluster by cluster, host by host (or N at a time): disable the cluster, check the Maintenance
// script, PreMaintenance, recheck capacity, enter maintenance, Maintenance, cancel maintenance,
// PostMaintenance; re-enable the cluster after its last host and on any error. Every step is
// journaled in the store before and after it happens, so a killed run is resumed where it
// stopped, and never leaves a cluster disabled or a host in maintenance that it put there.
type Rolling struct {
	Store  Store
	Dial   RollingDialer
	Events events.Sink
	Now    func() time.Time
	// Maint carries out maintenance enter and cancel; its Dial, Store and Events are set from
	// Rolling's when nil.
	Maint *Maintenance
	// StageGrace is how long past a stage's timeout kvmctl still waits for its result.
	StageGrace time.Duration

	mu        sync.Mutex // guards run and serialises journal writes
	run       *Run
	maintOnce sync.Once
}

// ErrRunFailed is returned when a run ends without success; the result says why.
var ErrRunFailed = errors.New("rolling maintenance failed")

// ErrInterrupted is returned when the context ends mid-run: the run is left resumable.
var ErrInterrupted = errors.New("interrupted")

func (r *Rolling) now() time.Time {
	if r.Now == nil {
		return time.Now()
	}
	return r.Now()
}

func (r *Rolling) maint() *Maintenance {
	r.maintOnce.Do(func() {
		if r.Maint == nil {
			r.Maint = &Maintenance{}
		}
		m := r.Maint
		if m.Store == nil {
			m.Store = r.Store
		}
		if m.Dial == nil {
			m.Dial = func(h state.Host) (MaintenanceAgent, error) { return r.Dial(h) }
		}
		if m.Now == nil {
			m.Now = r.Now
		}
		// The run refreshes statuses itself before each plan; the engine need not after.
		m.SkipFinalRefresh = true
		// The run's own clusters are locked by it; its maintenance steps may act there.
		m.RunID = r.run.ID
		// The engine's events (VM moves, maintenance entered and cancelled) go to the journal.
		m.Events = r.journalSink()
	})
	return r.Maint
}

// rollPlan is a validated request: the hosts in order, grouped by cluster.
type rollPlan struct {
	clusters     []string
	hosts        []state.Host // cluster by cluster, in inventory (natural) order
	pingInterval time.Duration
	timeout      time.Duration
	waitTimeout  time.Duration
}

// Validate resolves the request to hosts and checks everything that can be checked before
// any action; every problem is a refusal (exit 2) and nothing is changed.
func (r *Rolling) validate(req *RollingRequest) (rollPlan, error) {
	var p rollPlan
	scopes := 0
	for _, s := range [][]string{req.Zones, req.Pods, req.Clusters, req.Hosts} {
		if len(s) > 0 {
			scopes++
		}
	}
	if scopes != 1 {
		return p, errs.Refusedf("give exactly one of --zone, --pod, --cluster or --host")
	}
	if req.MaxUnavailable == 0 {
		req.MaxUnavailable = 1
	}
	if req.MaxUnavailable < 1 {
		return p, errs.Refusedf("--max-unavailable %d: must be at least 1", req.MaxUnavailable)
	}
	if _, err := hooks.SplitPayload(req.Payload); err != nil {
		return p, errs.Refusedf("--payload: %v", err)
	}
	err := r.Store.View(func(tx state.Tx) error {
		ping, err := settings.GetInt(tx, settings.PingInterval)
		if err != nil {
			return err
		}
		p.pingInterval = time.Duration(ping) * time.Second
		if req.Timeout == 0 {
			st, err := settings.GetInt(tx, settings.StageTimeout)
			if err != nil {
				return err
			}
			req.Timeout = time.Duration(st) * time.Second
		}
		if req.Timeout < p.pingInterval {
			return errs.Refusedf("the stage timeout (%s) is below kvm.rolling.maintenance.ping.interval (%s): raise --timeout to at least %d, or lower the ping interval",
				req.Timeout, p.pingInterval, ping)
		}
		p.timeout = req.Timeout
		wait, err := settings.GetInt(tx, settings.WaitMaintenanceTimeout)
		if err != nil {
			return err
		}
		p.waitTimeout = time.Duration(wait) * time.Second
		hosts, err := state.Hosts(tx)
		if err != nil {
			return err
		}
		clusters, err := state.Clusters(tx)
		if err != nil {
			return err
		}
		pods, err := state.Pods(tx)
		if err != nil {
			return err
		}
		zones, err := state.Zones(tx)
		if err != nil {
			return err
		}
		known := func(kind string, ids []string, names []string) error {
			have := map[string]bool{}
			for _, n := range names {
				have[n] = true
			}
			var missing []string
			for _, id := range ids {
				if !have[id] {
					missing = append(missing, id)
				}
			}
			if len(missing) > 0 {
				return errs.Refusedf("unknown %s %s: `kvmctl %s list` shows them", kind, strings.Join(missing, ", "), kind)
			}
			return nil
		}
		names := func(f func(int) string, n int) []string {
			out := make([]string, n)
			for i := range out {
				out[i] = f(i)
			}
			return out
		}
		in := func(set []string, v string) bool {
			for _, s := range set {
				if s == v {
					return true
				}
			}
			return false
		}
		var pick func(h state.Host) bool
		switch {
		case len(req.Zones) > 0:
			if err := known("zone", req.Zones, names(func(i int) string { return zones[i].Name }, len(zones))); err != nil {
				return err
			}
			pick = func(h state.Host) bool { return in(req.Zones, h.Zone) }
		case len(req.Pods) > 0:
			if err := known("pod", req.Pods, names(func(i int) string { return pods[i].Name }, len(pods))); err != nil {
				return err
			}
			pick = func(h state.Host) bool { return in(req.Pods, h.Pod) }
		case len(req.Clusters) > 0:
			if err := known("cluster", req.Clusters, names(func(i int) string { return clusters[i].Name }, len(clusters))); err != nil {
				return err
			}
			pick = func(h state.Host) bool { return in(req.Clusters, h.Cluster) }
		default:
			if err := known("host", req.Hosts, names(func(i int) string { return hosts[i].Name }, len(hosts))); err != nil {
				return err
			}
			pick = func(h state.Host) bool { return in(req.Hosts, h.Name) }
		}
		for _, h := range hosts {
			if pick(h) {
				p.hosts = append(p.hosts, h)
			}
		}
		if len(p.hosts) == 0 {
			return errs.Refusedf("the scope has no hosts")
		}
		sort.SliceStable(p.hosts, func(i, j int) bool {
			if p.hosts[i].Cluster != p.hosts[j].Cluster {
				return NaturalLess(p.hosts[i].Cluster, p.hosts[j].Cluster)
			}
			return NaturalLess(p.hosts[i].Name, p.hosts[j].Name)
		})
		for _, h := range p.hosts {
			if len(p.clusters) == 0 || p.clusters[len(p.clusters)-1] != h.Cluster {
				p.clusters = append(p.clusters, h.Cluster)
			}
		}
		// A run that overlaps a running one is refused naming it, before the host states
		// below, which that run is changing.
		if err := lockConflict(tx, p.clusters); err != nil {
			return err
		}
		for _, h := range p.hosts {
			switch h.ResourceState {
			case state.PrepareForMaintenance, state.Maintenance, state.ErrorInMaintenance:
				return errs.Refusedf("host %s is in %s: cancel its maintenance first (kvmctl maintenance cancel %s)", h.Name, h.ResourceState, h.Name)
			}
		}
		return nil
	})
	return p, err
}

// lockConflict refuses clusters that a running run holds, naming that run. A lock of a run
// that finished is stale and ignored; one of a run whose kvmctl died is taken over only by
// `rolling resume`.
func lockConflict(tx state.Tx, clusters []string) error {
	return lockConflictExcept(tx, clusters, "")
}

// lockConflictExcept is lockConflict ignoring the locks of run self (a run's own maintenance
// steps pass their run id).
func lockConflictExcept(tx state.Tx, clusters []string, self string) error {
	for _, c := range clusters {
		raw, err := tx.Get(state.BucketLocks, c)
		if state.IsNotFound(err) {
			continue
		}
		if err != nil {
			return err
		}
		if string(raw) == self && self != "" {
			continue
		}
		other, err := LoadRun(tx, string(raw))
		if err != nil || other.State != RunRunning {
			continue // a stale lock of a finished run
		}
		if other.Owner.Alive() {
			return errs.Refusedf("cluster %s is in run %s, which is still running (pid %d): wait for it, or `kvmctl rolling abort %s`", c, other.ID, other.Owner.PID, other.ID)
		}
		return errs.Refusedf("cluster %s is held by run %s, whose kvmctl died: `kvmctl rolling resume %s` to finish it, or `kvmctl rolling abort %s`", c, other.ID, other.ID, other.ID)
	}
	return nil
}

// NaturalLess orders names with numbers as people do: h2 before h10.
func NaturalLess(a, b string) bool {
	for a != "" && b != "" {
		da, db := digitsPrefix(a), digitsPrefix(b)
		if da != "" && db != "" {
			if len(strings.TrimLeft(da, "0")) != len(strings.TrimLeft(db, "0")) {
				return len(strings.TrimLeft(da, "0")) < len(strings.TrimLeft(db, "0"))
			}
			if da != db {
				return strings.TrimLeft(da, "0") < strings.TrimLeft(db, "0")
			}
			a, b = a[len(da):], b[len(db):]
			continue
		}
		if a[0] != b[0] {
			return a[0] < b[0]
		}
		a, b = a[1:], b[1:]
	}
	return len(a) < len(b)
}

func digitsPrefix(s string) string {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return s[:i]
}

// Start validates req, takes the clusters' locks and runs it to the end.
func (r *Rolling) Start(ctx context.Context, req RollingRequest) (RunResult, error) {
	if _, err := r.Begin(req); err != nil {
		return RunResult{}, err
	}
	return r.Execute(ctx)
}

// Begin validates req, records the run and takes its clusters' locks, without acting yet: the
// caller learns the run id and hosts (for a live view) and then calls Execute.
func (r *Rolling) Begin(req RollingRequest) (*Run, error) {
	if req.DryRun {
		return nil, errors.New("use DryRun for a dry run")
	}
	p, err := r.validate(&req)
	if err != nil {
		return nil, err
	}
	run := &Run{ID: newRunID(r.now()), State: RunRunning, Request: req, PingInterval: p.pingInterval, WaitTimeout: p.waitTimeout,
		CreatedAt: r.now().UTC(), Owner: SelfOwner()}
	for _, c := range p.clusters {
		run.Clusters = append(run.Clusters, &RunCluster{Name: c})
	}
	for _, h := range p.hosts {
		run.Hosts = append(run.Hosts, &RunHost{Name: h.Name, Cluster: h.Cluster, Step: StepPending, Stages: map[string]*StageRecord{}})
	}
	err = r.Store.Update(func(tx state.Tx) error {
		// Checked again here, in the transaction that takes the locks: validate's check was
		// in an earlier one.
		if err := lockConflict(tx, p.clusters); err != nil {
			return err
		}
		for _, c := range p.clusters {
			if err := tx.Put(state.BucketLocks, c, []byte(run.ID)); err != nil {
				return err
			}
		}
		return r.appendLocked(tx, run, events.Event{Type: events.RunStarted, RunID: run.ID,
			Fields: map[string]any{"hosts": len(run.Hosts), "clusters": len(run.Clusters), "forced": req.Forced, "max_unavailable": req.MaxUnavailable}})
	})
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.run = run
	r.mu.Unlock()
	return run, nil
}

// Execute runs the run that Begin or BeginResume set up, to the end.
func (r *Rolling) Execute(ctx context.Context) (RunResult, error) {
	run := r.snapshot()
	if run == nil {
		return RunResult{}, errors.New("no run to execute: call Begin or BeginResume first")
	}
	r.emitNow(events.Event{Type: events.RunStarted, RunID: run.ID, Fields: map[string]any{"hosts": len(run.Hosts), "clusters": len(run.Clusters)}})
	return r.execute(ctx)
}

// Resume takes over run id from a kvmctl that died and runs it to the end. It re-attaches to a
// stage still running by its execution id and never runs a finished stage again.
func (r *Rolling) Resume(ctx context.Context, id string) (RunResult, error) {
	if _, err := r.BeginResume(id); err != nil {
		return RunResult{}, err
	}
	return r.execute(ctx)
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
		run.State = RunRunning
		return run, nil
	}
	if run.State != RunRunning {
		return nil, errs.Refusedf("run %s has %s: nothing to %s", id, run.State, verb)
	}
	return run, nil
}

// BeginResume takes over run id from a kvmctl that died, without acting yet; Execute goes on.
func (r *Rolling) BeginResume(id string) (*Run, error) {
	var run *Run
	err := r.Store.Update(func(tx state.Tx) error {
		var err error
		if run, err = loadRunning(tx, id, "resume"); err != nil {
			return err
		}
		if run.Owner.Alive() && run.Owner != SelfOwner() {
			return errs.Refusedf("run %s is still running (pid %d): only a run whose kvmctl died can be resumed", id, run.Owner.PID)
		}
		prev := run.Owner
		run.Owner = SelfOwner()
		return r.appendLocked(tx, run, events.Event{Type: events.RunResumed, RunID: run.ID, Fields: map[string]any{"previous_pid": prev.PID}})
	})
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.run = run
	r.mu.Unlock()
	r.emitNow(events.Event{Type: events.RunResumed, RunID: run.ID})
	return run, nil
}

// Abort stops run id after its current step and restores its clusters and hosts. A run whose
// kvmctl still lives is asked to stop (it restores things itself); a run whose kvmctl died is
// restored here.
func (r *Rolling) Abort(ctx context.Context, id string) (RunResult, bool, error) {
	var run *Run
	var asked bool
	err := r.Store.Update(func(tx state.Tx) error {
		var err error
		if run, err = loadRunning(tx, id, "abort"); err != nil {
			return err
		}
		if run.Owner.Alive() {
			run.AbortRequested = true
			asked = true
			return r.appendLocked(tx, run, events.Event{Type: events.RunAbortRequested, RunID: run.ID})
		}
		run.Owner = SelfOwner()
		run.AbortRequested = true
		return r.appendLocked(tx, run, events.Event{Type: events.RunAbortRequested, RunID: run.ID, Message: "its kvmctl died; restoring here"})
	})
	if err != nil || asked {
		if run != nil {
			return run.Result(), asked, err
		}
		return RunResult{}, asked, err
	}
	r.mu.Lock()
	r.run = run
	r.mu.Unlock()
	// A stage the dead kvmctl started may still run on its host (a Maintenance script
	// installing a kernel): wait for its result before taking the host out of maintenance.
	for _, h := range run.Hosts {
		for _, stage := range hooks.Stages() {
			if rec := r.stageRecord(h, string(stage)); rec != nil && rec.ExecID != "" && rec.State != api.StageCompleted {
				r.emitNow(events.Event{Type: events.HostStep, Host: h.Name, Cluster: h.Cluster, Stage: string(stage), Message: "waiting for the stage the dead kvmctl started before restoring"})
				if _, err := r.runStage(ctx, h, stage); err != nil && ctx.Err() != nil {
					return r.snapshot().Result(), false, ctx.Err()
				}
			}
		}
	}
	r.finish(RunAborted, "aborted by the operator"+r.restore(ctx))
	return r.snapshot().Result(), false, nil
}

// appendLocked writes run and one journal event in tx. The caller holds r.mu or owns run.
func (r *Rolling) appendLocked(tx state.Tx, run *Run, e events.Event) error {
	// Another kvmctl may have written the record since we read it (`rolling abort` sets the
	// flag and journals): keep its flag and never reuse its journal sequence.
	if cur, err := LoadRun(tx, run.ID); err == nil {
		run.AbortRequested = run.AbortRequested || cur.AbortRequested
		run.Seq = max(run.Seq, cur.Seq)
	}
	run.Seq++
	if e.Time.IsZero() {
		e.Time = r.now().UTC()
	}
	e.RunID = run.ID
	if err := state.PutJSON(tx, state.BucketJournal, journalKey(run.ID, run.Seq), e); err != nil {
		return err
	}
	return state.PutJSON(tx, state.BucketRuns, run.ID, run)
}

// journal applies change to the run, writes it with event e in one transaction, and only then
// emits e: what the operator sees has been recorded.
func (r *Rolling) journal(e events.Event, change func(*Run)) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if change != nil {
		change(r.run)
	}
	e.Time = r.now().UTC()
	err := r.Store.Update(func(tx state.Tx) error { return r.appendLocked(tx, r.run, e) })
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	if r.Events != nil {
		_ = r.Events.Emit(e)
	}
	return nil
}

// journalSink records the maintenance engine's events (VM moves, maintenance entered and
// cancelled) in the run's journal, so `rolling status` and the live view see them too.
func (r *Rolling) journalSink() events.Sink {
	return events.SinkFunc(func(e events.Event) error { return r.journal(e, nil) })
}

func (r *Rolling) emitNow(e events.Event) {
	if r.Events != nil {
		e.Time = r.now().UTC()
		_ = r.Events.Emit(e)
	}
}

func (r *Rolling) snapshot() *Run {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.run
}

// abortRequested rereads the run: `rolling abort` from another shell sets the flag.
func (r *Rolling) abortRequested() bool {
	var stop bool
	_ = r.Store.View(func(tx state.Tx) error {
		run, err := LoadRun(tx, r.run.ID)
		if err == nil {
			stop = run.AbortRequested
		}
		return nil
	})
	return stop
}

// fatal ends a run that cannot go on: it restores what the run changed and records why.
type fatal struct{ reason string }

func (f *fatal) Error() string { return f.reason }

func (r *Rolling) hostRecord(tx state.Tx, name string) (state.Host, error) {
	h, err := state.GetHost(tx, name)
	if state.IsNotFound(err) {
		return h, fmt.Errorf("host %s was removed from the inventory during the run", name)
	}
	return h, err
}

func (r *Rolling) dialHost(name string) (RollingAgent, state.Host, error) {
	var h state.Host
	if err := r.Store.View(func(tx state.Tx) (err error) { h, err = r.hostRecord(tx, name); return err }); err != nil {
		return nil, h, err
	}
	a, err := r.Dial(h)
	return a, h, err
}

// execute carries the run from wherever its record says it is to the end.
func (r *Rolling) execute(ctx context.Context) (RunResult, error) {
	run := r.snapshot()
	err := r.capacityCheck(ctx)
	if err == nil {
		err = r.preflight(ctx)
	}
	if err == nil && ctx.Err() == nil {
		for _, c := range run.Clusters {
			if c.Done {
				continue
			}
			if err = r.doCluster(ctx, c); err != nil {
				break
			}
		}
	}
	if ctx.Err() != nil {
		// kvmctl is going away (interrupt, detach): leave the run as it is, resumable, rather
		// than half-restore it with a cancelled context.
		return r.snapshot().Result(), fmt.Errorf("%w: run %s stays resumable: kvmctl rolling resume %s", ErrInterrupted, run.ID, run.ID)
	}
	if err != nil {
		left := r.restore(ctx)
		var f *fatal
		switch {
		case errors.As(err, &f) && f.reason == "aborted":
			r.finish(RunAborted, "aborted by the operator"+left)
		default:
			r.finish(RunFailed, err.Error()+left)
		}
		return r.snapshot().Result(), fmt.Errorf("%w: %v", ErrRunFailed, err)
	}
	r.finish(RunSucceeded, r.summary())
	return r.snapshot().Result(), nil
}

func (r *Rolling) summary() string {
	run := r.snapshot()
	done, skipped := 0, 0
	for _, h := range run.Hosts {
		switch h.Step {
		case StepDone:
			done++
		case StepSkipped:
			skipped++
		}
	}
	hosts := "hosts"
	if done == 1 {
		hosts = "host"
	}
	return fmt.Sprintf("%d %s updated, %d skipped", done, hosts, skipped)
}

// finish records the end of the run and releases its locks.
func (r *Rolling) finish(st, details string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.run.State, r.run.Details, r.run.EndedAt = st, details, r.now().UTC()
	e := events.Event{Type: events.RunFinished, RunID: r.run.ID, Outcome: st, Message: details, Time: r.now().UTC()}
	write := func() error {
		return r.Store.Update(func(tx state.Tx) error {
			for _, c := range r.run.Clusters {
				if raw, err := tx.Get(state.BucketLocks, c.Name); err == nil && string(raw) == r.run.ID {
					if err := tx.Delete(state.BucketLocks, c.Name); err != nil {
						return err
					}
				}
			}
			return r.appendLocked(tx, r.run, e)
		})
	}
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		if err = write(); err == nil {
			break
		}
		time.Sleep(backoff.Delay(attempt, 200*time.Millisecond, 2*time.Second))
	}
	if err != nil {
		// The run stays "running" with a dead owner once we exit: resume or abort settles it.
		e.Message += fmt.Sprintf(" (could not record the end of the run: %v; `kvmctl rolling abort %s` settles it)", err, r.run.ID)
	}
	if r.Events != nil {
		_ = r.Events.Emit(e)
	}
}

// restore cancels maintenance on every host the run put there and restores every cluster it
// disabled. It goes on past errors: each is journaled, and the next resume or abort retries.
// It returns what it could not restore, as a sentence for the run's details ("" when all is
// restored); such a run stays open to `rolling abort`, which tries again.
func (r *Rolling) restore(ctx context.Context) string {
	run := r.snapshot()
	var left []string
	for _, h := range run.Hosts {
		if !h.InMaint {
			continue
		}
		if !r.cancelMaintenance(ctx, h) {
			left = append(left, fmt.Sprintf("host %s is still in maintenance: `kvmctl maintenance cancel %s` once its agent answers, or `kvmctl rolling abort %s`", h.Name, h.Name, run.ID))
			continue
		}
		if h.Active() && h.Reason == "" {
			_ = r.journal(events.Event{Type: events.HostStep, Host: h.Name, Cluster: h.Cluster, Stage: "restored"}, func(*Run) {
				h.Reason = "the run ended before this host was done; its maintenance was cancelled"
			})
		}
	}
	for _, c := range run.Clusters {
		if c.Disabled && r.restoreCluster(c) != nil {
			left = append(left, fmt.Sprintf("cluster %s is still Disabled: `kvmctl cluster enable %s`", c.Name, c.Name))
		}
	}
	r.mu.Lock()
	r.run.NeedsRestore = len(left) > 0
	r.mu.Unlock()
	if len(left) == 0 {
		return ""
	}
	return "; NOT RESTORED: " + strings.Join(left, "; ")
}

// capacityCheck is the seed's check before any action: could every host's VMs (every batch's,
// with --max-unavailable) be placed on the rest of its cluster right now? A host that fails it
// stops the run with nothing changed, or is skipped with --forced. It is checked again, with
// fresh statuses, just before each batch enters maintenance.
func (r *Rolling) capacityCheck(ctx context.Context) error {
	run := r.snapshot()
	if run.PreFlightDone {
		return nil
	}
	m := r.maint()
	var failures []string
	for _, c := range run.Clusters {
		var hosts []*RunHost
		for _, h := range run.Hosts {
			if h.Cluster == c.Name && h.Active() {
				hosts = append(hosts, h)
			}
		}
		if len(hosts) == 0 {
			continue
		}
		mc, err := m.load(hosts[0].Name)
		if err != nil {
			return err
		}
		if err := m.refresh(ctx, &mc); err != nil {
			return err
		}
		n := run.Request.MaxUnavailable
		for i := 0; i < len(hosts); i += n {
			batch := hosts[i:min(i+n, len(hosts))]
			names := make([]string, len(batch))
			for k, h := range batch {
				names[k] = h.Name
			}
			plan, err := PlanCapacity(CapacityInput{Hosts: capacityHosts(mc.cluster, mc.prev), Empty: names, CPUFactor: mc.cpuF, MemFactor: mc.memF})
			if err != nil {
				return err
			}
			reasons := map[string]string{}
			for _, u := range plan.Unplaced {
				if _, ok := reasons[u.From]; !ok {
					reasons[u.From] = fmt.Sprintf("capacity: VM %s fits nowhere: %s", u.VM, u.Reason)
				}
			}
			for _, h := range batch {
				if reason, ok := reasons[h.Name]; ok {
					failures = append(failures, h.Name+": "+reason)
					if run.Request.Forced {
						r.skip(h, reason)
					}
				}
			}
		}
	}
	// A script the agent would refuse (wrong owner or mode) is found now, not after its host
	// was emptied and patched.
	for _, h := range run.Hosts {
		if !h.Active() {
			continue
		}
		if reason := r.refusedScript(ctx, h); reason != "" {
			failures = append(failures, h.Name+": "+reason)
			if run.Request.Forced {
				r.skip(h, reason)
			}
		}
	}
	if len(failures) > 0 && !run.Request.Forced {
		return &fatal{"checks before any action failed, no action taken: " + strings.Join(failures, "; ")}
	}
	return r.journal(events.Event{Type: events.RunCapacityChecked, Message: fmt.Sprintf("%d hosts can be emptied", countActive(run))}, nil)
}

// refusedScript names a stage script of h that its agent refuses, or "" (an agent that does not
// answer is left to PreFlight, which fails it at once).
func (r *Rolling) refusedScript(ctx context.Context, h *RunHost) string {
	a, _, err := r.dialHost(h.Name)
	if err != nil {
		return ""
	}
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	scripts, err := a.Hooks(hctx)
	if err != nil {
		return ""
	}
	for _, s := range scripts {
		if s.Refused != "" {
			return fmt.Sprintf("%s script refused: %s", s.Stage, s.Refused)
		}
	}
	return ""
}

func (r *Rolling) preflight(ctx context.Context) error {
	run := r.snapshot()
	if run.PreFlightDone {
		return nil
	}
	var (
		mu       sync.Mutex
		failures []string
		pending  []*RunHost
	)
	for _, h := range run.Hosts {
		if h.Active() && !h.At(StepPreFlight) {
			pending = append(pending, h)
		}
	}
	if r.abortRequested() {
		return &fatal{"aborted"}
	}
	// PreFlight changes nothing on a host, so every host runs it at once (a few at a time).
	if err := r.parallel(pending, preflightParallelism, func(h *RunHost) error {
		st, err := r.runStage(ctx, h, hooks.PreFlight)
		reason := ""
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case err != nil:
			reason = "PreFlight: " + err.Error()
		case st.Outcome == api.OutcomeSkipped:
			r.skip(h, "no maintenance needed (PreFlight exit 70)")
			return nil
		case st.Outcome != api.OutcomeSucceeded:
			reason = stageFailure("PreFlight", st)
		default:
			return r.journal(events.Event{Type: events.HostStep, Host: h.Name, Cluster: h.Cluster, Stage: StepPreFlight}, func(*Run) { h.Step = StepPreFlight })
		}
		mu.Lock()
		failures = append(failures, h.Name+": "+reason)
		mu.Unlock()
		if run.Request.Forced {
			r.skip(h, reason)
		}
		return nil
	}); err != nil {
		return err
	}
	sort.Strings(failures)
	if len(failures) > 0 && !run.Request.Forced {
		return &fatal{"PreFlight failed, no action taken: " + strings.Join(failures, "; ")}
	}
	return r.journal(events.Event{Type: events.RunPreFlightDone, Message: fmt.Sprintf("%d hosts to maintain", countActive(run))}, func(rr *Run) { rr.PreFlightDone = true })
}

// preflightParallelism bounds how many hosts run PreFlight at the same time.
const preflightParallelism = 8

// parallel runs fn for every host, at most limit at a time, and returns the first error (in
// host order) once all have finished: a batch never leaves a host half-handled.
func (r *Rolling) parallel(hosts []*RunHost, limit int, fn func(*RunHost) error) error {
	errs := make([]error, len(hosts))
	slots := make(chan struct{}, max(limit, 1))
	var wg sync.WaitGroup
	for i, h := range hosts {
		wg.Add(1)
		go func(i int, h *RunHost) {
			defer wg.Done()
			slots <- struct{}{}
			defer func() { <-slots }()
			errs[i] = fn(h)
		}(i, h)
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func countActive(run *Run) int {
	n := 0
	for _, h := range run.Hosts {
		if h.Active() {
			n++
		}
	}
	return n
}

func stageFailure(stage string, st api.StageStatus) string {
	s := fmt.Sprintf("%s %s", stage, st.Outcome)
	if st.Outcome == api.OutcomeFailed {
		s += fmt.Sprintf(" (exit %d)", st.ExitCode)
	}
	if st.Note != "" {
		s += ": " + st.Note
	}
	if line := lastLine(st.Output); line != "" {
		s += ": " + line
	}
	return s
}

func lastLine(s string) string {
	s = strings.TrimRight(s, "\n")
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

func (r *Rolling) skip(h *RunHost, reason string) {
	_ = r.journal(events.Event{Type: events.HostSkipped, Host: h.Name, Cluster: h.Cluster, Message: reason}, func(*Run) {
		h.Step, h.Reason = StepSkipped, reason
		if h.EndedAt.IsZero() && !h.StartedAt.IsZero() {
			h.EndedAt = r.now().UTC()
		}
	})
}

// fail handles a host-level failure: with --forced the host is skipped and the run goes on;
// without, the run stops.
func (r *Rolling) fail(ctx context.Context, h *RunHost, reason string) error {
	if ctx.Err() != nil {
		// kvmctl is going away: that is no failure of the host, and --forced must not skip it.
		return ctx.Err()
	}
	if r.snapshot().Request.Forced {
		r.skip(h, reason)
		return nil
	}
	return &fatal{fmt.Sprintf("host %s: %s", h.Name, reason)}
}

func (r *Rolling) disableCluster(c *RunCluster) error {
	var prior string
	err := r.Store.View(func(tx state.Tx) error {
		cl, err := state.GetCluster(tx, c.Name)
		prior = cl.ResourceState
		return err
	})
	if err != nil {
		return err
	}
	// Journal the state to restore before changing it.
	if err := r.journal(events.Event{Type: events.ClusterDisabling, Cluster: c.Name, Message: "was " + prior}, func(*Run) {
		c.PriorState, c.Disabled = prior, true
	}); err != nil {
		return err
	}
	if err := r.Store.Update(func(tx state.Tx) error {
		_, err := inventory.SetClusterState(tx, c.Name, state.Disabled)
		return err
	}); err != nil {
		return err
	}
	return r.journal(events.Event{Type: events.ClusterDisabled, Cluster: c.Name}, nil)
}

func (r *Rolling) restoreCluster(c *RunCluster) error {
	to := c.PriorState
	if to != state.Disabled {
		to = state.Enabled
	}
	if err := r.Store.Update(func(tx state.Tx) error {
		_, err := inventory.SetClusterState(tx, c.Name, to)
		return err
	}); err != nil {
		_ = r.journal(events.Event{Type: events.ClusterEnableFailed, Cluster: c.Name, Message: err.Error()}, nil)
		return err
	}
	return r.journal(events.Event{Type: events.ClusterEnabled, Cluster: c.Name, Message: "restored to " + to}, func(*Run) { c.Disabled = false })
}

func (r *Rolling) doCluster(ctx context.Context, c *RunCluster) error {
	run := r.snapshot()
	var pending []*RunHost
	for _, h := range run.Hosts {
		if h.Cluster == c.Name && h.Active() {
			pending = append(pending, h)
		}
	}
	if len(pending) > 0 && !c.Disabled {
		if err := r.disableCluster(c); err != nil {
			return err
		}
	}
	n := run.Request.MaxUnavailable
	for i := 0; i < len(pending); i += n {
		if err := r.doBatch(ctx, pending[i:min(i+n, len(pending))]); err != nil {
			return err
		}
	}
	if c.Disabled {
		if err := r.restoreCluster(c); err != nil {
			return err
		}
	}
	return r.journal(events.Event{Type: events.ClusterDone, Cluster: c.Name}, func(*Run) { c.Done = true })
}

// doBatch takes up to MaxUnavailable hosts of one cluster through maintenance together: they
// are emptied one after the other (each plan sees the VMs the previous moved) but are in
// maintenance, and run their Maintenance scripts, at the same time.
func (r *Rolling) doBatch(ctx context.Context, batch []*RunHost) error {
	active := func() []*RunHost {
		var out []*RunHost
		for _, h := range batch {
			if h.Active() {
				out = append(out, h)
			}
		}
		return out
	}
	// 1. The Maintenance script must exist; then PreMaintenance, on the batch's hosts at once.
	if r.abortRequested() {
		return &fatal{"aborted"}
	}
	if err := r.parallel(active(), len(batch), func(h *RunHost) error {
		if h.StartedAt.IsZero() {
			_ = r.journal(events.Event{Type: events.HostStarted, Host: h.Name, Cluster: h.Cluster}, func(*Run) { h.StartedAt = r.now().UTC() })
		}
		if !h.At(StepChecked) {
			ok, reason, err := r.checkMaintenanceScript(ctx, h)
			if err != nil {
				return r.fail(ctx, h, err.Error())
			}
			if !ok {
				r.skip(h, reason)
				return nil
			}
			_ = r.journal(events.Event{Type: events.HostStep, Host: h.Name, Cluster: h.Cluster, Stage: StepChecked}, func(*Run) { h.Step = StepChecked })
		}
		if h.At(StepPreMaint) {
			return nil
		}
		st, err := r.runStage(ctx, h, hooks.PreMaintenance)
		switch {
		case err != nil:
			return r.fail(ctx, h, "PreMaintenance: "+err.Error())
		case st.Outcome == api.OutcomeSkipped:
			r.skip(h, "no maintenance needed (PreMaintenance exit 70)")
			return nil
		case st.Outcome != api.OutcomeSucceeded:
			return r.fail(ctx, h, stageFailure("PreMaintenance", st))
		}
		return r.journal(events.Event{Type: events.HostStep, Host: h.Name, Cluster: h.Cluster, Stage: StepPreMaint}, func(*Run) { h.Step = StepPreMaint })
	}); err != nil {
		return err
	}
	// 2. Capacity, refreshed, for the batch together; then mark every host of the batch so
	// that none is a target for another.
	var toPrepare []*RunHost
	for _, h := range active() {
		if !h.At(StepPrepared) {
			toPrepare = append(toPrepare, h)
		}
	}
	if len(toPrepare) > 0 {
		if err := r.recheckCapacity(ctx, toPrepare); err != nil {
			return err
		}
	}
	for _, h := range active() {
		if h.At(StepPrepared) {
			continue
		}
		if err := r.journal(events.Event{Type: events.HostStep, Host: h.Name, Cluster: h.Cluster, Stage: StepPrepared}, func(*Run) {
			h.Step, h.InMaint = StepPrepared, true
		}); err != nil {
			return err
		}
		if err := r.Store.Update(func(tx state.Tx) error {
			sh, err := r.hostRecord(tx, h.Name)
			if err != nil {
				return err
			}
			if sh.ResourceState == state.PrepareForMaintenance {
				return nil
			}
			sh.ResourceState, sh.StateReason = state.PrepareForMaintenance, "rolling maintenance run "+r.run.ID+" (was "+sh.ResourceState+")"
			return state.PutHost(tx, sh)
		}); err != nil {
			return err
		}
	}
	// 3. Enter maintenance, one host after the other. The first plans with the statuses the
	// capacity check just read; each later one reads them again, with its predecessors' VMs moved.
	for i, h := range active() {
		if h.At(StepInMaint) {
			continue
		}
		if r.abortRequested() {
			return &fatal{"aborted"}
		}
		m := r.maint()
		wctx, cancel := context.WithTimeout(ctx, r.snapshot().WaitTimeout)
		res, err := m.Enable(wctx, h.Name, EnableOptions{Prepared: true, Fresh: i == 0 && len(toPrepare) > 0, Prefer: r.updatedHosts(h.Cluster)})
		timedOut := errors.Is(wctx.Err(), context.DeadlineExceeded)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			r.cancelMaintenance(ctx, h)
			if timedOut {
				// The seed: a host that does not reach maintenance within the wait timeout stops
				// the run, --forced or not; something is wrong beyond this host.
				return &fatal{fmt.Sprintf("host %s did not reach maintenance within kvm.rolling.maintenance.wait.maintenance.timeout (%s): %v", h.Name, r.snapshot().WaitTimeout, err)}
			}
			if ferr := r.fail(ctx, h, "entering maintenance: "+err.Error()); ferr != nil {
				return ferr
			}
			continue
		}
		_ = r.journal(events.Event{Type: events.HostStep, Host: h.Name, Cluster: h.Cluster, Stage: StepInMaint, Fields: map[string]any{"vms_moved": len(res.Migrated)}},
			func(*Run) { h.Step, h.VMsMoved = StepInMaint, len(res.Migrated) })
	}
	// 4. The Maintenance scripts, at the same time.
	if r.abortRequested() {
		return &fatal{"aborted"}
	}
	var maintain []*RunHost
	for _, h := range active() {
		if !h.At(StepMaintDone) {
			maintain = append(maintain, h)
		}
	}
	if err := r.parallel(maintain, len(batch), func(h *RunHost) error {
		st, err := r.runStage(ctx, h, hooks.Maintenance)
		reason := ""
		switch {
		case err != nil:
			reason = "Maintenance: " + err.Error()
		case st.Outcome == api.OutcomeSkipped:
			// Exit 70 only means "no maintenance needed" in PreFlight and PreMaintenance; here the
			// script says it had nothing to do, which is done.
		case st.Outcome != api.OutcomeSucceeded:
			reason = stageFailure("Maintenance", st)
		}
		if reason != "" {
			if ctx.Err() != nil {
				return ctx.Err() // interrupted, not failed: the host stays as it is, resumable
			}
			// The seed: a failed Maintenance script cancels maintenance, then stops unless forced.
			r.cancelMaintenance(ctx, h)
			return r.fail(ctx, h, reason)
		}
		return r.journal(events.Event{Type: events.HostStep, Host: h.Name, Cluster: h.Cluster, Stage: StepMaintDone}, func(*Run) { h.Step = StepMaintDone })
	}); err != nil {
		return err
	}
	// 5. Cancel maintenance, then PostMaintenance, on the batch's hosts at once. An abort asked
	// for now takes effect after this step: the hosts leave maintenance either way.
	return r.parallel(active(), len(batch), func(h *RunHost) error {
		if !h.At(StepCancelled) {
			if !r.cancelMaintenance(ctx, h) {
				return r.fail(ctx, h, "cancelling maintenance failed")
			}
			_ = r.journal(events.Event{Type: events.HostStep, Host: h.Name, Cluster: h.Cluster, Stage: StepCancelled}, func(*Run) { h.Step = StepCancelled })
		}
		st, err := r.runStage(ctx, h, hooks.PostMaintenance)
		switch {
		case err != nil:
			return r.fail(ctx, h, "PostMaintenance: "+err.Error())
		case st.Outcome == api.OutcomeSkipped: // exit 70: nothing to validate, which is done
		case st.Outcome != api.OutcomeSucceeded:
			return r.fail(ctx, h, stageFailure("PostMaintenance", st))
		}
		return r.journal(events.Event{Type: events.HostDone, Host: h.Name, Cluster: h.Cluster}, func(*Run) { h.Step, h.EndedAt = StepDone, r.now().UTC() })
	})
}

// updatedHosts names the hosts of cluster this run has already taken through maintenance: the
// best targets for the VMs of the next host, which then never move twice.
func (r *Rolling) updatedHosts(cluster string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, h := range r.run.Hosts {
		if h.Cluster == cluster && h.Step == StepDone {
			out = append(out, h.Name)
		}
	}
	return out
}

// cancelMaintenance takes a host the run put into maintenance out again; it reports success.
func (r *Rolling) cancelMaintenance(ctx context.Context, h *RunHost) bool {
	if !h.InMaint {
		return true
	}
	m := r.maint()
	var cur string
	_ = r.Store.View(func(tx state.Tx) error {
		sh, err := state.GetHost(tx, h.Name)
		cur = sh.ResourceState
		return err
	})
	switch cur {
	case state.PrepareForMaintenance, state.Maintenance, state.ErrorInMaintenance:
		if _, err := m.Cancel(ctx, h.Name); err != nil {
			_ = r.journal(events.Event{Type: events.HostMaintenanceError, Host: h.Name, Cluster: h.Cluster, Message: "cancel: " + err.Error()}, nil)
			return false
		}
	}
	_ = r.journal(events.Event{Type: events.HostStep, Host: h.Name, Cluster: h.Cluster, Stage: "left_maintenance"}, func(*Run) { h.InMaint = false })
	return true
}

func (r *Rolling) checkMaintenanceScript(ctx context.Context, h *RunHost) (bool, string, error) {
	a, _, err := r.dialHost(h.Name)
	if err != nil {
		return false, "", err
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	scripts, err := a.Hooks(cctx)
	if err != nil {
		return false, "", fmt.Errorf("list hook scripts: %w", err)
	}
	for _, s := range scripts {
		if s.Stage != string(hooks.Maintenance) {
			continue
		}
		if !s.Present {
			return false, "no Maintenance script", nil
		}
		if s.Refused != "" {
			return false, "", fmt.Errorf("Maintenance script refused: %s", s.Refused)
		}
		return true, "", nil
	}
	return false, "no Maintenance script", nil
}

// recheckCapacity refreshes the cluster's statuses and plans the batch's evacuation together.
func (r *Rolling) recheckCapacity(ctx context.Context, batch []*RunHost) error {
	m := r.maint()
	c, err := m.load(batch[0].Name)
	if err != nil {
		return err
	}
	if err := m.refresh(ctx, &c); err != nil {
		return err
	}
	names := make([]string, len(batch))
	for i, h := range batch {
		names[i] = h.Name
	}
	p, err := PlanCapacity(CapacityInput{Hosts: capacityHosts(c.cluster, c.prev), Empty: names, CPUFactor: c.cpuF, MemFactor: c.memF})
	if err != nil {
		return err
	}
	_ = r.journal(events.Event{Type: events.HostMaintenancePlan, Cluster: batch[0].Cluster, Message: strings.Join(names, ","),
		Fields: map[string]any{"vms": len(p.Placements), "unplaced": len(p.Unplaced)}}, nil)
	if p.OK() {
		return nil
	}
	bad := map[string]string{}
	for _, u := range p.Unplaced {
		if _, ok := bad[u.From]; !ok {
			bad[u.From] = fmt.Sprintf("capacity: VM %s fits nowhere: %s", u.VM, u.Reason)
		}
	}
	for _, h := range batch {
		if reason, ok := bad[h.Name]; ok {
			if ferr := r.fail(ctx, h, reason); ferr != nil {
				return ferr
			}
		}
	}
	return nil
}

// runStage runs one stage on a host through its agent and waits for it with the long poll:
// the next step starts the moment the stage ends, and the ping interval is the longest gap
// between two checks. An agent that stops answering (its script may restart it, or reboot the
// host) is tolerated until the stage timeout. A stage with no script counts as succeeded.
func (r *Rolling) runStage(ctx context.Context, h *RunHost, stage hooks.Stage) (api.StageStatus, error) {
	run := r.snapshot()
	name := string(stage)
	rec := h.Stages[name]
	if rec != nil && rec.State == api.StageCompleted {
		return api.StageStatus{State: api.StageCompleted, Outcome: rec.Outcome, ExitCode: rec.ExitCode, Output: rec.Output, Note: rec.Note}, nil
	}
	if rec == nil || rec.ExecID == "" {
		if err := r.journal(events.Event{Type: events.HostStageStarted, Host: h.Name, Cluster: h.Cluster, Stage: name}, func(*Run) {
			h.Stages[name] = &StageRecord{State: "starting", StartedAt: r.now().UTC()}
		}); err != nil {
			return api.StageStatus{}, err
		}
	}
	timeout := run.Request.Timeout
	grace := r.StageGrace
	if grace <= 0 {
		grace = run.PingInterval + 10*time.Second
	}
	// The agent enforces the script's timeout itself and reports timed_out; kvmctl's own
	// deadline only covers an agent that stops answering, counted from when this process
	// started waiting (a resume long after a crash still asks the agent first).
	deadline := time.Now().Add(timeout + grace)
	req := api.StageRequest{RunID: run.ID, Stage: name, Payload: run.Request.Payload, TimeoutS: int((timeout + time.Second - 1) / time.Second)}
	var lastErr error
	unreachable, failures := 0, 0
	for {
		if err := ctx.Err(); err != nil {
			return api.StageStatus{}, err
		}
		if !time.Now().Before(deadline) {
			st := api.StageStatus{State: api.StageCompleted, Outcome: api.OutcomeTimedOut, ExitCode: -1,
				Note: fmt.Sprintf("no result from the agent within the stage timeout (%s)", timeout)}
			if lastErr != nil {
				st.Note += ": " + firstLine(lastErr.Error())
			}
			return st, r.recordStage(h, name, st)
		}
		st, err := r.tryStage(ctx, h, req, run.PingInterval, deadline)
		if err == nil && st.Done() {
			return st, r.recordStage(h, name, st)
		}
		if err != nil {
			if api.IsCode(err, api.CodeNoScript) {
				st := api.StageStatus{State: api.StageCompleted, Outcome: api.OutcomeSucceeded, Note: "no script"}
				return st, r.recordStage(h, name, st)
			}
			var ae *api.Error
			if errors.As(err, &ae) && !api.IsUnreachable(err) && ae.Status < 500 {
				return api.StageStatus{}, err // a refusal (bad payload, refused script): retrying cannot help
			}
			lastErr = err
			// A host not yet touched by the run whose agent does not answer fails PreFlight at
			// once: nothing it does could be the cause, and waiting out the stage timeout (30
			// minutes by default) helps nobody. Later stages wait: a reboot takes a while.
			if stage == hooks.PreFlight && r.stageRecord(h, name).ExecID == "" && api.IsUnreachable(err) {
				if unreachable++; unreachable >= 3 {
					return api.StageStatus{}, fmt.Errorf("agent unreachable: %s", firstLine(err.Error()))
				}
			}
			// Back off while the agent is away (a reboot takes minutes), but never wait longer
			// than the ping interval between two checks.
			select {
			case <-ctx.Done():
				return api.StageStatus{}, ctx.Err()
			case <-time.After(backoff.Delay(failures, 200*time.Millisecond, run.PingInterval)):
			}
			failures++
		} else {
			failures = 0
		}
	}
}

// tryStage (re)starts the stage, idempotently, and long-polls it once.
func (r *Rolling) tryStage(ctx context.Context, h *RunHost, req api.StageRequest, wait time.Duration, deadline time.Time) (api.StageStatus, error) {
	a, _, err := r.dialHost(h.Name)
	if err != nil {
		return api.StageStatus{}, err
	}
	rec := r.stageRecord(h, req.Stage)
	id := rec.ExecID
	if id == "" {
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		id, err = a.StartStage(sctx, req)
		cancel()
		if err != nil {
			return api.StageStatus{}, err
		}
		if err := r.journal(events.Event{Type: events.HostStageRunning, Host: h.Name, Cluster: h.Cluster, Stage: req.Stage, Fields: map[string]any{"exec_id": id}}, func(*Run) {
			rec.ExecID, rec.State = id, api.StageRunning
		}); err != nil {
			return api.StageStatus{}, err
		}
	}
	wait = min(wait, time.Until(deadline))
	wctx, cancel := context.WithTimeout(ctx, wait+15*time.Second)
	defer cancel()
	st, err := a.WaitStage(wctx, id, wait)
	if api.IsCode(err, api.CodeNotFound) {
		// The agent lost the execution (its state dir was wiped): start it again; the
		// (run, stage) pair is still idempotent on the agent.
		r.mu.Lock()
		rec.ExecID = ""
		r.mu.Unlock()
	}
	return st, err
}

func (r *Rolling) stageRecord(h *RunHost, stage string) *StageRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	return h.Stages[stage]
}

func (r *Rolling) recordStage(h *RunHost, stage string, st api.StageStatus) error {
	fields := map[string]any{"exit_code": st.ExitCode}
	if st.Note != "" {
		fields["note"] = st.Note
	}
	if line := lastLine(st.Output); line != "" {
		fields["last_line"] = line
	}
	return r.journal(events.Event{Type: events.HostStageFinished, Host: h.Name, Cluster: h.Cluster, Stage: stage, Outcome: st.Outcome, Fields: fields}, func(*Run) {
		rec := h.Stages[stage]
		if rec == nil {
			rec = &StageRecord{StartedAt: r.now().UTC()}
			h.Stages[stage] = rec
		}
		rec.State, rec.Outcome, rec.ExitCode, rec.Output, rec.Note = api.StageCompleted, st.Outcome, st.ExitCode, st.Output, st.Note
		rec.EndedAt = r.now().UTC()
	})
}
