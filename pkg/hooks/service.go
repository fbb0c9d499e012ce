package hooks

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// ServiceExecutor runs each stage detached from the agent, through the agent binary's hidden
// stage-exec subcommand: as a transient systemd unit where systemd runs the host, otherwise as a
// child in a new session. stage-exec writes the stage record itself, so a restarted agent still
// reports the stage, first as running and then with its real result.
type ServiceExecutor struct {
	cfg   Config
	store store

	mu sync.Mutex
	// exited holds, for every stage-exec this executor started itself, a channel closed when
	// that process has exited: Wait then returns without polling.
	exited map[string]chan struct{}
}

var _ Executor = (*ServiceExecutor)(nil)

// pollInterval is how often Wait reads the record of a stage-exec that is not our child.
const pollInterval = 2 * time.Millisecond

// NewServiceExecutor returns a ServiceExecutor on cfg.StateDir, after settling the stages whose
// stage-exec died or whose host rebooted.
func NewServiceExecutor(cfg Config) (*ServiceExecutor, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if cfg.Binary == "" {
		if cfg.Binary, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("find agent binary: %w", err)
		}
	}
	s, err := openStore(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	e := &ServiceExecutor{cfg: cfg, store: s, exited: map[string]chan struct{}{}}
	if _, err := e.Recover(); err != nil {
		return nil, err
	}
	return e, nil
}

// execSpec is the file <id>.spec: everything stage-exec needs, so that its command line stays
// short and the script's environment survives systemd-run, which does not pass ours on.
type execSpec struct {
	ID     string  `json:"id"`
	RunID  string  `json:"run_id"`
	Stage  Stage   `json:"stage"`
	BootID string  `json:"boot_id"`
	Run    runSpec `json:"run"`
}

// Start implements Executor.
func (e *ServiceExecutor) Start(ctx context.Context, req Request) (string, error) {
	p, err := validate(req)
	if err != nil {
		return "", err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.store.exists(p.id) {
		return p.id, nil
	}
	spec, err := e.cfg.spec(p)
	if err != nil {
		return "", err
	}
	boot, err := e.cfg.BootID()
	if err != nil {
		return "", err
	}
	// The launch record (pid 0) claims the id before anything runs; stage-exec replaces it.
	rec := record{
		Status:   Status{ID: p.id, RunID: req.RunID, Stage: req.Stage, State: Running, StartedAt: e.cfg.Now()},
		Executor: kindService, Script: spec.Script, BootID: boot,
	}
	if err := e.store.create(rec); err != nil {
		if errors.Is(err, os.ErrExist) {
			return p.id, nil
		}
		return "", err
	}
	es := execSpec{ID: p.id, RunID: req.RunID, Stage: req.Stage, BootID: boot, Run: spec}
	if err := writeJSONAtomic(e.store.specPath(p.id), es); err != nil {
		e.store.remove(p.id)
		return "", err
	}
	if err := e.launch(ctx, p.id); err != nil {
		e.store.remove(p.id)
		return "", fmt.Errorf("start %s: %w", req.Stage, err)
	}
	return p.id, nil
}

// systemdRunning tells whether systemd manages this host and systemd-run is available.
func systemdRunning() bool {
	if _, err := os.Stat("/run/systemd/system"); err != nil {
		return false
	}
	_, err := exec.LookPath("systemd-run")
	return err == nil
}

// systemdRunArgs is the systemd-run command line that runs stage-exec as a transient unit.
func systemdRunArgs(id, binary, specPath string) []string {
	return []string{"systemd-run", "--unit", "kvmagent-stage-" + id, "--collect", "--quiet",
		"--service-type=exec", "--", binary, StageExecCommand, specPath}
}

func (e *ServiceExecutor) launch(ctx context.Context, id string) error {
	specPath := e.store.specPath(id)
	if !e.cfg.NoSystemd && systemdRunning() {
		args := systemdRunArgs(id, e.cfg.Binary, specPath)
		out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("systemd-run: %w: %s", err, out)
		}
		return nil
	}
	logf, err := os.OpenFile(e.store.logPath(id), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("stage-exec log: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(e.cfg.Binary, StageExecCommand, specPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	// A new session: neither the agent's death nor a signal to its process group reaches it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	e.exited[id] = done
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	return nil
}

// Get implements Executor. A running record is checked against the host and the process: a
// stage that started in an earlier boot is completed (succeeded, "host rebooted during stage"),
// one whose stage-exec died without a result is completed (failed, "stage runner died").
func (e *ServiceExecutor) Get(id string) (Status, error) {
	if !validID(id) {
		return Status{}, ErrUnknownID
	}
	rec, err := e.store.read(id)
	if err != nil || rec.State == Completed {
		return rec.Status, err
	}
	if e.cfg.rebooted(rec) {
		return complete(e.store, rec, Succeeded, 0, NoteRebooted, e.cfg.Now())
	}
	if rec.PID == 0 {
		// Still launching. Ours: it is dead once its process exited. Not ours (an earlier agent
		// started it): give it LaunchTimeout to write its first record.
		e.mu.Lock()
		done, ours := e.exited[id]
		e.mu.Unlock()
		switch {
		case ours && !isClosed(done):
			return rec.Status, nil
		case !ours && e.cfg.Now().Sub(rec.StartedAt) < e.cfg.LaunchTimeout:
			return rec.Status, nil
		}
		return e.runnerGone(id, ours)
	}
	if alive(rec.PID, rec.PIDStart) {
		return rec.Status, nil
	}
	return e.runnerGone(id, true)
}

// runnerGone settles a record whose stage-exec is gone: it may have written its result just
// before exiting, so the record is read again first.
func (e *ServiceExecutor) runnerGone(id string, started bool) (Status, error) {
	rec, err := e.store.read(id)
	if err != nil || rec.State == Completed {
		return rec.Status, err
	}
	note := NoteRunnerDied
	if rec.PID == 0 && !started {
		note = NoteRunnerMissing
	}
	if b, err := os.ReadFile(e.store.logPath(id)); err == nil && len(b) > 0 {
		rec.Output = string(b)
	}
	_ = os.Remove(e.store.specPath(id))
	return complete(e.store, rec, Failed, -1, note, e.cfg.Now())
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// Wait implements Executor. For a stage-exec this executor started, it wakes on the process's
// exit; otherwise (systemd, or started before an agent restart) it polls the record every 2 ms.
func (e *ServiceExecutor) Wait(ctx context.Context, id string) (Status, error) {
	st, err := e.Get(id)
	if err != nil || st.State == Completed {
		return st, err
	}
	e.mu.Lock()
	done := e.exited[id]
	e.mu.Unlock()
	if done != nil {
		select {
		case <-done:
			return e.Get(id)
		case <-ctx.Done():
			return Status{}, context.Cause(ctx)
		}
	}
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	path := e.store.recordPath(id)
	var last os.FileInfo
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return Status{}, context.Cause(ctx)
		case <-tick.C:
		}
		fi, err := os.Stat(path)
		changed := err == nil && (last == nil || !os.SameFile(fi, last) || fi.ModTime() != last.ModTime())
		if err == nil {
			last = fi
		}
		// A changed record may be the result; every 100 ms also check the process and boot id.
		if !changed && n%50 != 0 {
			continue
		}
		st, err := e.Get(id)
		if err != nil || st.State == Completed {
			return st, err
		}
	}
}

// Recover settles every recorded execution (see Get) and returns their statuses.
func (e *ServiceExecutor) Recover() ([]Status, error) {
	return recoverAll(e.store, e.Get)
}
