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
// script runs and the result after it ends; a stage whose record still says running after an
// agent restart was lost with the agent and counts as completed, as the management server
// assumes when the agent reconnects.
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
		res = runScript(context.Background(), spec, e.cfg.Now)
	}
	rec.State, rec.Outcome, rec.ExitCode, rec.Output, rec.Note = events.StageCompleted, res.Outcome, res.ExitCode, res.Output, res.Note
	rec.StartedAt, rec.EndedAt = res.StartedAt, res.EndedAt
	saved := true
	if err := e.store.write(rec); err != nil {
		// The result is still reported from memory; after a restart the stage would count as
		// completed, which is the agent executor's rule anyway.
		rec.Note = joinNote(rec.Note, "result not saved: "+err.Error())
		saved = false
	}
	e.mu.Lock()
	run.status = rec.Status
	if saved {
		// The record answers from now on; runs must not grow with every stage ever run.
		delete(e.runs, rec.ID)
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
	// Running, but not in this agent: it was lost with a previous one.
	note := NoteAgentRestart
	if e.cfg.rebooted(rec) {
		note = NoteRebooted
	}
	return complete(e.store, rec, events.OutcomeSucceeded, 0, note, e.cfg.Now())
}

// Wait implements Executor.
func (e *AgentExecutor) Wait(ctx context.Context, id string) (Status, error) {
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
// a previous agent becomes completed with outcome succeeded and the note "agent restarted" (or
// "host rebooted during stage").
func (e *AgentExecutor) Recover() ([]Status, error) {
	return recoverAll(e.store, e.cfg.Log, e.Get)
}
