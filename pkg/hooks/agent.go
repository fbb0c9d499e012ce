package hooks

import (
	"context"
	"errors"
	"os"
	"sync"

	"github.com/kvmctl/kvmctl/pkg/events"
)

// AgentExecutor runs stage scripts as children of the agent
// (rolling.maintenance.service.executor.disabled=true). A "started" record is written before the
// script runs, its process group as soon as it runs (<id>.pid) and the result after it ends. A
// script outlives the agent: its output goes to <id>.log, not to a pipe that would die with the
// agent. After an agent restart a stage whose script still runs is reported running, its script
// watched until nothing of its process group lives; only then does it count as completed, as the
// management server assumes when the agent reconnects (outcome succeeded, exit status unknown,
// output from its log).
type AgentExecutor struct {
	cfg   Config
	store store

	mu   sync.Mutex
	runs map[string]*agentRun
}

type agentRun struct {
	done   chan struct{}
	status Status // guarded by AgentExecutor.mu
}

var _ Executor = (*AgentExecutor)(nil)

// NewAgentExecutor returns an AgentExecutor on cfg.StateDir, after settling the stages a previous
// agent left running.
func NewAgentExecutor(cfg Config) (*AgentExecutor, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	s, err := openStore(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	e := &AgentExecutor{cfg: cfg, store: s, runs: map[string]*agentRun{}}
	// An entry that cannot be settled now is logged and settled when asked about.
	_, _ = e.Recover()
	return e, nil
}

// Start implements Executor.
func (e *AgentExecutor) Start(_ context.Context, req Request) (string, error) {
	p, err := validate(req)
	if err != nil {
		return "", err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.runs[p.id] != nil || e.store.exists(p.id) {
		return p.id, nil
	}
	spec, rec, err := e.cfg.newRun(p, kindAgent)
	if err != nil {
		return "", err
	}
	rec.PID = os.Getpid()
	rec.PIDStart, _ = procStart(rec.PID)
	if err := e.store.create(rec); err != nil {
		if errors.Is(err, os.ErrExist) {
			return p.id, nil
		}
		return "", err
	}
	run := &agentRun{done: make(chan struct{}), status: rec.Status}
	e.runs[p.id] = run
	go e.run(run, rec, spec)
	return p.id, nil
}

func (e *AgentExecutor) run(run *agentRun, rec record, spec runSpec) {
	var res runResult
	if err := Verify(spec.Dir, rec.Stage, spec.Script); err != nil {
		res = refusedResult(err, e.cfg.Now())
	} else {
		res = runScript(context.Background(), spec, e.store.logPath(rec.ID),
			func(p stageProcs) error { return e.store.writeProcs(rec.ID, p) }, e.cfg.Now)
	}
	rec.State, rec.Outcome, rec.ExitCode, rec.Output, rec.Note = events.StageCompleted, res.Outcome, res.ExitCode, res.Output, res.Note
	rec.StartedAt, rec.EndedAt = res.StartedAt, res.EndedAt
	saved := true
	if err := e.store.write(rec); err != nil {
		// The result is still reported from memory; after a restart the stage would count as
		// completed, which is the agent executor's rule anyway.
		rec.Note = joinNote(rec.Note, "result not saved: "+err.Error())
		saved = false
	} else {
		e.store.removeLeftovers(rec.ID)
	}
	e.done(run, rec.Status, saved)
}

// done publishes the final status of run; once it is saved, the record answers from then on
// and runs must not grow with every stage ever run.
func (e *AgentExecutor) done(run *agentRun, st Status, saved bool) {
	e.mu.Lock()
	run.status = st
	if saved {
		delete(e.runs, st.ID)
	}
	e.mu.Unlock()
	close(run.done)
}

// Get implements Executor.
func (e *AgentExecutor) Get(id string) (Status, error) {
	if !validID(id) {
		return Status{}, ErrUnknownID
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if run := e.runs[id]; run != nil {
		return run.status, nil
	}
	rec, err := e.cfg.readRecord(e.store, id)
	if err != nil || rec.State == events.StageCompleted {
		return rec.Status, err
	}
	// Running, but not in this agent: it was started by a previous one.
	if e.cfg.rebooted(rec) {
		return settle(e.store, rec, events.OutcomeSucceeded, 0, NoteRebooted, e.cfg.Now())
	}
	if p, ok := e.store.watchedGroup(id); ok {
		e.watch(rec, p)
		return rec.Status, nil
	}
	if p, ok := e.store.procs(id); ok && p.PGID > 0 && p.PGIDStart > 0 {
		return settle(e.store, rec, events.OutcomeSucceeded, -1, NoteAgentRestartScriptEnded, e.cfg.Now())
	}
	// No script group was recorded (the agent died before the script ran, or as it started), or
	// one without its leader's start time, which cannot be told from a reused pid.
	return settle(e.store, rec, events.OutcomeSucceeded, 0, NoteAgentRestart, e.cfg.Now())
}

// watch follows the script of rec, which outlived the agent that started it, until nothing of
// its process group p lives; the stage is running until then. e.mu is held.
func (e *AgentExecutor) watch(rec record, p stageProcs) {
	run := &agentRun{done: make(chan struct{}), status: rec.Status}
	e.runs[rec.ID] = run
	go func() {
		st, err := e.cfg.watchOrphan(e.store, rec.ID, p, events.OutcomeSucceeded, NoteAgentRestartScriptEnded)
		if err != nil {
			e.cfg.Log.Error("stage result not saved", "exec_id", rec.ID, "err", err)
		}
		e.done(run, st, err == nil)
	}()
}

// Wait implements Executor.
func (e *AgentExecutor) Wait(ctx context.Context, id string) (Status, error) {
	// Get starts watching a script that outlived an earlier agent.
	st, err := e.Get(id)
	if err != nil || st.State == events.StageCompleted {
		return st, err
	}
	e.mu.Lock()
	run := e.runs[id]
	e.mu.Unlock()
	if run == nil {
		return e.Get(id)
	}
	select {
	case <-run.done:
		return e.Get(id)
	case <-ctx.Done():
		return Status{}, context.Cause(ctx)
	}
}

// Recover settles every recorded execution and returns their statuses: a stage left running by
// a previous agent is watched while its script's process group lives, and otherwise becomes
// completed with outcome succeeded and the note NoteAgentRestartScriptEnded (NoteAgentRestart
// when its script never ran, NoteRebooted when the host rebooted).
func (e *AgentExecutor) Recover() ([]Status, error) {
	return recoverAll(e.store, e.cfg.Log, e.Get)
}
