package orchestrate

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/backoff"
	"github.com/kvmctl/kvmctl/pkg/clock"
	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/hooks"
)

// stageVerdict is what a stage's end means for the run.
type stageVerdict int

const (
	stageOK        stageVerdict = iota // go on
	stageNotNeeded                     // exit 70 in PreFlight or PreMaintenance: skip the host
	stageFailed                        // stop the run, or skip the host with --forced
)

// classify is the one place that turns a stage's end (or the error that kept it from ending)
// into what the run does. Exit 70 means "no maintenance needed" only in PreFlight and
// PreMaintenance (seed 001); in Maintenance and PostMaintenance the script had nothing to do,
// which is done.
func classify(stage events.Stage, st api.StageStatus, err error) (stageVerdict, string) {
	switch {
	case err != nil:
		return stageFailed, string(stage) + ": " + err.Error()
	case st.Outcome == events.OutcomeSkipped && (stage == events.PreFlight || stage == events.PreMaintenance):
		return stageNotNeeded, fmt.Sprintf("no maintenance needed (%s exit %d)", stage, events.ExitNoMaintenance)
	case st.Outcome == events.OutcomeSucceeded, st.Outcome == events.OutcomeSkipped:
		return stageOK, ""
	}
	return stageFailed, stageFailure(stage, st)
}

func stageFailure(stage events.Stage, st api.StageStatus) string {
	s := fmt.Sprintf("%s %s", stage, st.Outcome)
	if st.Outcome == events.OutcomeFailed {
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

// runStage runs one stage on a host through its agent and waits for it with the long poll:
// the next step starts the moment the stage ends, and the ping interval is the longest gap
// between two checks. An agent that stops answering (its script may restart it, or reboot the
// host) is tolerated until the stage timeout. A stage with no script counts as succeeded.
func (x *Execution) runStage(ctx context.Context, h *RunHost, stage events.Stage) (api.StageStatus, error) {
	return x.stage(ctx, h, stage, true, nil)
}

// next is the step a stage completes when it ends well: recorded in the stage's last
// transaction, so a run pays one write, not two.
type next struct {
	event  events.Event
	change func(*Run)
}

// runStageThen runs a stage and, when classify says it went well, records then with its end.
// The caller records then itself when h has not reached step afterwards (the stage had ended in
// an earlier process, or went otherwise).
func (x *Execution) runStageThen(ctx context.Context, h *RunHost, stage events.Stage, then next) (api.StageStatus, error) {
	return x.stage(ctx, h, stage, true, &then)
}

// errNeverStarted says the agent has no execution of a stage that a dead kvmctl meant to start.
var errNeverStarted = errors.New("the stage never started")

// awaitStage waits for a stage that a dead kvmctl may have started, without ever starting it:
// when its execution id was not recorded, the id the agent derives from (run, stage) is asked.
func (x *Execution) awaitStage(ctx context.Context, h *RunHost, stage events.Stage) (api.StageStatus, error) {
	return x.stage(ctx, h, stage, false, nil)
}

func (x *Execution) stage(ctx context.Context, h *RunHost, stage events.Stage, start bool, then *next) (api.StageStatus, error) {
	run := x.Run()
	rec := x.stageRecord(h, stage)
	if rec != nil && rec.State == events.StageCompleted {
		return api.StageStatus{State: events.StageCompleted, Outcome: rec.Outcome, ExitCode: rec.ExitCode, Output: rec.Output, Note: rec.Note}, nil
	}
	if start && (rec == nil || rec.ExecID == "") {
		if err := x.record(events.Event{Type: events.HostStageStarted, Host: h.Name, Cluster: h.Cluster, Stage: stage}, func(*Run) {
			if h.Stages[stage] == nil {
				h.Stages[stage] = &StageRecord{State: events.StageStarting, StartedAt: x.clk.Now().UTC()}
			}
		}, nil); err != nil {
			return api.StageStatus{}, err
		}
	}
	timeout := run.Request.Timeout
	grace := x.waits.StageGrace
	if grace <= 0 {
		grace = run.PingInterval + x.waits.StageGraceExtra
	}
	// The agent enforces the script's timeout itself and reports timed_out; kvmctl's own
	// deadline only covers an agent that stops answering, counted from when this process
	// started waiting (a resume long after a crash still asks the agent first).
	deadline := x.clk.Now().Add(timeout + grace)
	req := api.StageRequest{RunID: run.ID, Stage: stage, Payload: run.Request.Payload, TimeoutS: int((timeout + time.Second - 1) / time.Second)}
	var lastErr error
	unreachable, failures := 0, 0
	for {
		if err := ctx.Err(); err != nil {
			return api.StageStatus{}, err
		}
		if !x.clk.Now().Before(deadline) {
			st := api.StageStatus{State: events.StageCompleted, Outcome: events.OutcomeTimedOut, ExitCode: -1,
				Note: fmt.Sprintf("no result from the agent within the stage timeout (%s)", timeout)}
			if lastErr != nil {
				st.Note += ": " + firstLine(lastErr.Error())
			}
			return st, x.recordStage(h, stage, st, then)
		}
		st, err := x.tryStage(ctx, h, req, run.PingInterval, deadline, start)
		if isRecordErr(err) || errors.Is(err, errNeverStarted) {
			return st, err
		}
		if err == nil && st.Done() {
			return st, x.recordStage(h, stage, st, then)
		}
		if err == nil {
			failures = 0
			continue
		}
		if api.IsCode(err, api.CodeNoScript) {
			st := api.StageStatus{State: events.StageCompleted, Outcome: events.OutcomeSucceeded, Note: "no script"}
			return st, x.recordStage(h, stage, st, then)
		}
		var ae *api.Error
		if errors.As(err, &ae) && !api.IsUnreachable(err) && ae.Status < 500 {
			return api.StageStatus{}, err // a refusal (bad payload, refused script): retrying cannot help
		}
		lastErr = err
		// A host not yet touched by the run whose agent does not answer fails PreFlight at
		// once: nothing it does could be the cause, and waiting out the stage timeout (30
		// minutes by default) helps nobody. Later stages wait: a reboot takes a while.
		if stage == events.PreFlight && x.stageRecord(h, stage).ExecID == "" && api.IsUnreachable(err) {
			if unreachable++; unreachable >= x.waits.PreflightUnreachable {
				return api.StageStatus{}, fmt.Errorf("agent unreachable: %s", firstLine(err.Error()))
			}
		}
		// Back off while the agent is away (a reboot takes minutes), but never wait longer than
		// the ping interval between two checks.
		if err := clock.Sleep(ctx, x.clk, backoff.Delay(failures, x.waits.AwayFirst, run.PingInterval)); err != nil {
			return api.StageStatus{}, err
		}
		failures++
	}
}

// tryStage (re)starts the stage, idempotently, and long-polls it once. Without start it only
// asks, by the execution id recorded or else by the one the agent derives from (run, stage).
func (x *Execution) tryStage(ctx context.Context, h *RunHost, req api.StageRequest, wait time.Duration, deadline time.Time, start bool) (api.StageStatus, error) {
	a, err := x.dialHost(h.Name)
	if err != nil {
		return api.StageStatus{}, err
	}
	id := ""
	if rec := x.stageRecord(h, req.Stage); rec != nil {
		id = rec.ExecID
	}
	if id == "" && !start {
		id = hooks.ExecID(req.RunID, req.Stage)
	}
	if id == "" {
		sctx, cancel := clock.WithTimeout(ctx, x.clk, x.waits.StageStart)
		id, err = a.StartStage(sctx, req)
		cancel()
		if err != nil {
			return api.StageStatus{}, err
		}
		if err := x.record(events.Event{Type: events.HostStageRunning, Host: h.Name, Cluster: h.Cluster, Stage: req.Stage, ExecID: id}, func(*Run) {
			rec := h.Stages[req.Stage]
			rec.ExecID, rec.State = id, events.StageRunning
		}, nil); err != nil {
			return api.StageStatus{}, err
		}
	}
	wait = min(wait, deadline.Sub(x.clk.Now()))
	wctx, cancel := clock.WithTimeout(ctx, x.clk, wait+x.waits.LongPollSlack)
	defer cancel()
	st, err := a.WaitStage(wctx, id, wait)
	if api.IsCode(err, api.CodeNotFound) && !start {
		return st, errNeverStarted
	}
	if api.IsCode(err, api.CodeNotFound) {
		// The agent lost the execution (its state dir was wiped): start it again; the (run,
		// stage) pair is still idempotent on the agent.
		x.mu.Lock()
		h.Stages[req.Stage].ExecID = ""
		x.mu.Unlock()
	}
	return st, err
}

// stageRecord returns a copy of h's record of stage (nil when there is none).
func (x *Execution) stageRecord(h *RunHost, stage events.Stage) *StageRecord {
	x.mu.Lock()
	defer x.mu.Unlock()
	if rec := h.Stages[stage]; rec != nil {
		c := *rec
		return &c
	}
	return nil
}

func (x *Execution) recordStage(h *RunHost, stage events.Stage, st api.StageStatus, then *next) error {
	evs := []events.Event{{Type: events.HostStageFinished, Host: h.Name, Cluster: h.Cluster, Stage: stage, Outcome: st.Outcome,
		ExitCode: events.Int(st.ExitCode), Note: st.Note, LastLine: lastLine(st.Output)}}
	ok := false
	if then != nil {
		if v, _ := classify(stage, st, nil); v == stageOK {
			ok = true
			evs = append(evs, then.event)
		}
	}
	return x.recordAll(evs, func(r *Run) {
		rec := h.Stages[stage]
		if rec == nil {
			rec = &StageRecord{StartedAt: x.clk.Now().UTC()}
			h.Stages[stage] = rec
		}
		rec.State, rec.Outcome, rec.ExitCode, rec.Output, rec.Note = events.StageCompleted, st.Outcome, st.ExitCode, st.Output, st.Note
		rec.EndedAt = x.clk.Now().UTC()
		if ok && then.change != nil {
			then.change(r)
		}
	}, nil)
}
