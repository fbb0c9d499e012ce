package orchestrate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/kvmctl/kvmctl/pkg/backoff"
	"github.com/kvmctl/kvmctl/pkg/clock"
	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/holds"
	"github.com/kvmctl/kvmctl/pkg/journal"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// Execution is one rolling run being carried out by this process: made by Begin or
// BeginResume, run by Execute. Its record and journal are written through record, which
// commits before it emits.
type Execution struct {
	r *Rolling
	// Events receives the run's events once they are recorded; it defaults to the Rolling's.
	// Set it before Execute (a live view attaches here).
	Events events.Sink
	waits  Waits
	clk    clock.Clock

	mu      sync.Mutex // guards run
	run     *Run
	maint   *Maintenance
	started bool // Begin made it: Execute emits run.started once more for a view attached late
}

func (r *Rolling) execution(run *Run) *Execution {
	x := &Execution{r: r, run: run, Events: r.Events, waits: r.Waits.withDefaults(), clk: r.clock()}
	return x
}

// Run returns the run as this execution knows it. Treat it as read-only.
func (x *Execution) Run() *Run {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.run
}

// snapshot is a deep copy of the run, for reading without the lock.
func (x *Execution) snapshot() *Run {
	x.mu.Lock()
	defer x.mu.Unlock()
	raw, _ := json.Marshal(x.run)
	var c Run
	_ = json.Unmarshal(raw, &c)
	return &c
}

// errRecord marks a failure to write the state: the run cannot record what it does, so it stops
// acting at once and stays resumable.
type errRecord struct{ err error }

func (e *errRecord) Error() string { return "could not write the state file: " + e.err.Error() }
func (e *errRecord) Unwrap() error { return e.err }

// record applies change to the run, writes the run and event e (and txChange, when given) in one
// transaction, and only then emits e: what the operator sees has been recorded. A failure to
// write is an *errRecord.
func (x *Execution) record(e events.Event, change func(*Run), txChange func(state.Tx) error) error {
	return x.recordAll([]events.Event{e}, change, txChange)
}

// recordAll is record with several events in the one transaction (a stage's end and the step it
// completes), each emitted once it committed.
func (x *Execution) recordAll(evs []events.Event, change func(*Run), txChange func(state.Tx) error) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if change != nil {
		change(x.run)
	}
	now := x.clk.Now().UTC()
	written := make([]events.Event, 0, len(evs))
	err := x.r.Store.Update(func(tx state.Tx) error {
		written = written[:0]
		// Another kvmctl may have written the record since (`rolling abort` sets the flag).
		x.run.AbortRequested = x.run.AbortRequested || abortFlag(tx, x.run.ID)
		if txChange != nil {
			if err := txChange(tx); err != nil {
				return err
			}
		}
		for _, e := range evs {
			e.RunID = x.run.ID
			w, _, err := journal.AppendTx(tx, x.run.ID, e, now)
			if err != nil {
				return err
			}
			written = append(written, w)
		}
		return state.PutJSON(tx, state.BucketRuns, x.run.ID, x.run)
	})
	if err != nil {
		return &errRecord{err}
	}
	for _, w := range written {
		x.emit(w)
	}
	return nil
}

// emit sends e to the execution's sink.
func (x *Execution) emit(e events.Event) {
	if x.Events != nil {
		_ = x.Events.Emit(e)
	}
}

// maintenance is this run's maintenance engine: the template's settings, the run's store,
// agents and clock, its events journaled in the run's stream, and the run's holds its own.
func (x *Execution) maintenance() *Maintenance {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.maint != nil {
		return x.maint
	}
	m := Maintenance{}
	if x.r.Maint != nil {
		m = *x.r.Maint
	}
	if m.Store == nil {
		m.Store = x.r.Store
	}
	if m.Dial == nil {
		m.Dial = func(h state.Host) (MaintenanceAgent, error) { return x.r.Dial(h) }
	}
	if m.Clock == nil {
		m.Clock = x.clk
	}
	m.Holds = x.r.table()
	m.Events = events.SinkFunc(func(e events.Event) error { x.emit(e); return nil })
	// The run refreshes statuses itself before each plan; the engine need not after.
	m.SkipFinalRefresh = true
	m.Under = &Under{Ref: x.run.ref(), Stream: x.run.ID}
	x.maint = &m
	return x.maint
}

// abortRequested rereads the run: `rolling abort` from another shell sets the flag.
func (x *Execution) abortRequested() bool {
	var stop bool
	_ = x.r.Store.View(func(tx state.Tx) error {
		stop = abortFlag(tx, x.run.ID)
		return nil
	})
	return stop
}

// abortFlag reports whether `rolling abort` asked run id to stop; it is read before every write
// of the run, so it is kept apart from the run's record.
func abortFlag(tx state.Tx, id string) bool {
	_, err := tx.Get(state.BucketAborts, id)
	return err == nil
}

// fatal ends a run that cannot go on: it restores what the run changed and records why.
type fatal struct{ reason string }

func (f *fatal) Error() string { return f.reason }

var errAborted = &fatal{"aborted"}

func (x *Execution) hostRecord(tx state.Tx, name string) (state.Host, error) {
	h, err := state.GetHost(tx, name)
	if state.IsNotFound(err) {
		return h, fmt.Errorf("host %s was removed from the inventory during the run", name)
	}
	return h, err
}

func (x *Execution) dialHost(name string) (RollingAgent, error) {
	var h state.Host
	if err := x.r.Store.View(func(tx state.Tx) (err error) { h, err = x.hostRecord(tx, name); return err }); err != nil {
		return nil, err
	}
	return x.r.Dial(h)
}

// Execute carries the run from wherever its record says it is to the end.
func (x *Execution) Execute(ctx context.Context) (RunResult, error) {
	run := x.snapshot()
	if x.started {
		// The view may have attached after Begin recorded run.started.
		x.emit(events.Event{Type: events.RunStarted, Time: run.CreatedAt, RunID: run.ID, HostCount: len(run.Hosts), ClusterCount: len(run.Clusters),
			Forced: run.Request.Forced, MaxUnavailable: run.Request.MaxUnavailable})
	} else {
		x.emit(events.Event{Type: events.RunResumed, Time: x.clk.Now().UTC(), RunID: run.ID})
	}
	err := x.capacityCheck(ctx)
	if err == nil {
		err = x.preflight(ctx)
	}
	if err == nil && ctx.Err() == nil {
		for _, c := range run.Clusters {
			if c.Done {
				continue
			}
			if err = x.doCluster(ctx, x.cluster(c.Name)); err != nil {
				break
			}
		}
	}
	var rec *errRecord
	if ctx.Err() != nil || errors.As(err, &rec) {
		// kvmctl is going away (interrupt, detach) or cannot write its state: leave the run as
		// it is, resumable, rather than half-restore it.
		why := ErrInterrupted
		if rec != nil {
			why = fmt.Errorf("%w: %w", ErrInterrupted, rec)
		}
		return x.snapshot().Result(), fmt.Errorf("%w: run %s stays resumable: kvmctl rolling resume %s", why, run.ID, run.ID)
	}
	if err != nil {
		left := x.restore(ctx)
		var ferr error
		if errors.Is(err, errAborted) {
			ferr = x.finish(events.RunAborted, "aborted by the operator"+left)
		} else {
			ferr = x.finish(events.RunFailed, err.Error()+left)
		}
		if ferr != nil {
			return x.snapshot().Result(), ferr
		}
		return x.snapshot().Result(), fmt.Errorf("%w: %w", ErrRunFailed, err)
	}
	if err := x.finish(events.RunSucceeded, x.summary()); err != nil {
		return x.snapshot().Result(), err
	}
	return x.snapshot().Result(), nil
}

// cluster returns the execution's own record of cluster name.
func (x *Execution) cluster(name string) *RunCluster {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, c := range x.run.Clusters {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// abortHere restores a run whose kvmctl died, after the stages it left running have ended.
func (x *Execution) abortHere(ctx context.Context) (RunResult, error) {
	// A stage the dead kvmctl started may still run on its host (a Maintenance script
	// installing a kernel): wait for its result before taking the host out of maintenance.
	// A stage whose start was recorded but not its execution id may have started too (the kvmctl
	// died between asking the agent and recording its answer): it is asked for by the id the
	// agent derives from the run and the stage, and never started here.
	for _, h := range x.Run().Hosts {
		for _, stage := range events.Stages() {
			if rec := x.stageRecord(h, stage); rec != nil && rec.State != events.StageCompleted {
				x.emit(events.Event{Type: events.HostStep, Time: x.clk.Now().UTC(), RunID: x.run.ID, Host: h.Name, Cluster: h.Cluster, Stage: stage, Step: events.StepWaitingStage,
					Message: "waiting for the stage the dead kvmctl started before restoring"})
				if _, err := x.awaitStage(ctx, h, stage); err != nil && ctx.Err() != nil {
					return x.snapshot().Result(), ctx.Err()
				}
			}
		}
	}
	err := x.finish(events.RunAborted, "aborted by the operator"+x.restore(ctx))
	return x.snapshot().Result(), err
}

func (x *Execution) summary() string {
	run := x.snapshot()
	done, skipped := 0, 0
	for _, h := range run.Hosts {
		switch h.Step {
		case events.StepDone:
			done++
		case events.StepSkipped:
			skipped++
		}
	}
	hosts := "hosts"
	if done == 1 {
		hosts = "host"
	}
	return fmt.Sprintf("%d %s updated, %d skipped", done, hosts, skipped)
}

// finish records the end of the run and releases its holds, in one transaction (retried: it is
// the record that tells the next kvmctl the run is over). Hosts the run never reached are
// journaled as such, so a view shows what the engine decided. When the end cannot be recorded
// the run stays "running" with a dead owner once this process exits, and the error says how to
// settle it: no caller may report the run as ended.
func (x *Execution) finish(st events.RunState, details string) error {
	if st != events.RunSucceeded {
		for _, h := range x.Run().Hosts {
			if h.Active() && h.StartedAt.IsZero() {
				_ = x.record(events.Event{Type: events.HostNotReached, Host: h.Name, Cluster: h.Cluster, Message: "the run ended before this host"}, nil, nil)
			}
		}
	}
	var err error
	for attempt := 0; attempt < x.waits.FinishAttempts; attempt++ {
		if attempt > 0 {
			_ = clock.Sleep(context.Background(), x.clk, backoff.Delay(attempt-1, x.waits.FinishRetryFirst, x.waits.FinishRetryMax))
		}
		err = x.record(events.Event{Type: events.RunFinished, RunState: st, Message: details}, func(run *Run) {
			run.State, run.Details, run.EndedAt = st, details, x.clk.Now().UTC()
		}, func(tx state.Tx) error {
			if err := holds.Release(tx, x.run.ref()); err != nil {
				return err
			}
			if err := tx.Delete(state.BucketAborts, x.run.ID); err != nil {
				return err
			}
			return journal.End(tx, x.run.ID, x.clk.Now())
		})
		if err == nil {
			return nil
		}
	}
	return fmt.Errorf("%w: run %s %s (%s) but %w; `kvmctl rolling resume %s` records its end, `kvmctl rolling abort %s` restores it",
		ErrInterrupted, x.run.ID, st, details, err, x.run.ID, x.run.ID)
}

// restore cancels maintenance on every host the run put there and restores every cluster it
// disabled. It goes on past errors: each is journaled, and the next resume or abort retries.
// It returns what it could not restore, as a sentence for the run's details ("" when all is
// restored); such a run stays open to `rolling abort`, which tries again.
func (x *Execution) restore(ctx context.Context) string {
	run := x.snapshot()
	var left []string
	for _, rh := range run.Hosts {
		if !rh.InMaint {
			continue
		}
		h := x.host(rh.Name)
		if !x.cancelMaintenance(ctx, h) {
			left = append(left, fmt.Sprintf("host %s is still in maintenance: `kvmctl maintenance cancel %s` once its agent answers, or `kvmctl rolling abort %s`", h.Name, h.Name, run.ID))
			continue
		}
		if h.Active() && h.Reason == "" {
			_ = x.record(events.Event{Type: events.HostStep, Host: h.Name, Cluster: h.Cluster, Step: events.StepRestored}, func(*Run) {
				h.Reason = "the run ended before this host was done; its maintenance was cancelled"
			}, nil)
		}
	}
	for _, c := range run.Clusters {
		if c.Disabled && x.restoreCluster(x.cluster(c.Name)) != nil {
			left = append(left, fmt.Sprintf("cluster %s is still Disabled: `kvmctl cluster enable %s`", c.Name, c.Name))
		}
	}
	x.mu.Lock()
	x.run.NeedsRestore = len(left) > 0
	x.mu.Unlock()
	if len(left) == 0 {
		return ""
	}
	return "; NOT RESTORED: " + strings.Join(left, "; ")
}

// host returns the execution's own record of host name.
func (x *Execution) host(name string) *RunHost {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.run.Host(name)
}
