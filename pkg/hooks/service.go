package hooks

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/kvmctl/kvmctl/pkg/events"
)

// ServiceExecutor runs each stage detached from the agent, through the stage runner
// (kvmagent-stage, or the agent's own hidden stage-exec subcommand where the runner is missing):
// as a transient systemd unit where systemd runs the host, otherwise as a child in a new
// session. The runner writes the stage record itself, so a restarted agent still reports the
// stage, first as running and then with its real result. A runner that dies leaves its script
// running, watched by the agent: the stage is running while the script's process group lives,
// then completed and failed (NoteRunnerDiedScriptEnded), since no one saw the script's exit
// status.
type ServiceExecutor struct {
	cfg   Config
	store store
	// runner is the command that runs one stage given its spec file: [kvmagent-stage] or
	// [kvmagent stage-exec] (see Config.stageRunner).
	runner []string

	mu sync.Mutex
	// exited holds, for every runner this executor started itself, a channel closed when
	// that process has exited: Wait then returns without polling.
	exited map[string]chan struct{}
	// watching holds, for every script this executor watches because its runner died, a
	// channel closed once the stage is settled.
	watching map[string]chan struct{}
}

var _ Executor = (*ServiceExecutor)(nil)

// Wait reads the record of a runner that is not our child every pollFast during its first
// pollFastFor, then every pollSlow: a short stage is seen at once, and a stage of an hour does
// not cost a stat every 2 ms. checkEvery is how often it also checks the process and boot id.
const (
	pollFast    = 2 * time.Millisecond
	pollFastFor = 100 * time.Millisecond
	pollSlow    = 50 * time.Millisecond
	checkEvery  = 100 * time.Millisecond
)

// pollDelay is the delay before the next read of a record that Wait has polled for elapsed.
func pollDelay(elapsed time.Duration) time.Duration {
	if elapsed < pollFastFor {
		return pollFast
	}
	return pollSlow
}

// NewServiceExecutor returns a ServiceExecutor on cfg.StateDir, after settling the stages whose
// runner died or whose host rebooted. It fails when cfg.Runner is set but fails
// CheckStageRunner, and logs a warning when it falls back to the agent's stage-exec.
func NewServiceExecutor(cfg Config) (*ServiceExecutor, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	runner, err := cfg.stageRunner()
	if err != nil {
		return nil, err
	}
	s, err := openStore(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	e := &ServiceExecutor{cfg: cfg, store: s, runner: runner, exited: map[string]chan struct{}{}, watching: map[string]chan struct{}{}}
	// An entry that cannot be settled now is logged and settled when asked about.
	_, _ = e.Recover()
	return e, nil
}

// execSpec is the file <id>.spec: everything the runner needs, so that its command line stays
// short and the script's environment survives systemd-run, which does not pass ours on.
type execSpec struct {
	ID     string       `json:"id"`
	RunID  string       `json:"run_id"`
	Stage  events.Stage `json:"stage"`
	BootID string       `json:"boot_id"`
	Run    runSpec      `json:"run"`
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
	// The launch record (pid 0) claims the id before anything runs; the runner replaces it.
	spec, rec, err := e.cfg.newRun(p, kindService)
	if err != nil {
		return "", err
	}
	if err := e.store.create(rec); err != nil {
		if errors.Is(err, os.ErrExist) {
			return p.id, nil
		}
		return "", err
	}
	es := execSpec{ID: p.id, RunID: req.RunID, Stage: req.Stage, BootID: rec.BootID, Run: spec}
	if err := e.store.writeSpec(es); err != nil {
		e.store.remove(p.id)
		return "", err
	}
	if err := e.launch(ctx, p.id); err != nil {
		e.store.remove(p.id)
		return "", fmt.Errorf("start %s: %w", req.Stage, err)
	}
	return p.id, nil
}

// systemdRunning tells whether systemd manages this host and systemd-run is available; a
// variable so that tests can pretend it does.
var systemdRunning = func() bool {
	if _, err := os.Stat("/run/systemd/system"); err != nil {
		return false
	}
	_, err := exec.LookPath("systemd-run")
	return err == nil
}

// systemdRunArgs is the systemd-run command line that runs the stage runner (runner, then the
// spec file) as a transient unit. KillMode=process: a runner that dies must not take its script
// with it (systemd's default stops the whole unit when its main process exits); the agent
// watches the script instead, as it does where the runner is a child in a new session. Stopping
// the unit still stops the script: the runner stops it on SIGTERM.
func systemdRunArgs(id string, runner []string, specPath string) []string {
	args := []string{"systemd-run", "--unit", "kvmagent-stage-" + id, "--collect", "--quiet",
		"--service-type=exec", "--property=KillMode=process", "--"}
	return append(append(args, runner...), specPath)
}

func (e *ServiceExecutor) launch(ctx context.Context, id string) error {
	specPath := e.store.specPath(id)
	if !e.cfg.NoSystemd && systemdRunning() {
		// Start holds e.mu: a systemd-run that hangs must not block every other Start for good.
		ctx, cancel := context.WithTimeout(ctx, e.cfg.LaunchTimeout)
		defer cancel()
		args := systemdRunArgs(id, e.runner, specPath)
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		// Output pipes held open by a child of a killed systemd-run must not hold us either.
		cmd.WaitDelay = time.Second
		out, err := cmd.CombinedOutput()
		if ctx.Err() != nil {
			return fmt.Errorf("systemd-run did not answer within %s: %s", e.cfg.LaunchTimeout, out)
		}
		if err != nil {
			return fmt.Errorf("systemd-run: %w: %s", err, out)
		}
		return nil
	}
	logf, err := os.OpenFile(e.store.logPath(id), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("stage runner log: %w", err)
	}
	defer logf.Close()
	argv := append(slices.Clip(e.runner), specPath)
	cmd := exec.Command(argv[0], argv[1:]...)
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
		// Usually the runner wrote its result before it exited: nothing is left to track.
		if rec, err := e.store.read(id); err == nil && rec.State == events.StageCompleted {
			e.forget(id)
		}
	}()
	return nil
}

// forget drops the exit channel of id once its runner has exited: the record then says all
// there is to know, and the map does not grow with every stage the agent ever ran.
func (e *ServiceExecutor) forget(id string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if done, ok := e.exited[id]; ok && isClosed(done) {
		delete(e.exited, id)
	}
}

// Get implements Executor. A running record is checked against the host and the processes: a
// stage that started in an earlier boot is completed (succeeded, "host rebooted during stage");
// one whose runner is gone is running while its script's process group lives, and completed
// (failed) once it does not.
func (e *ServiceExecutor) Get(id string) (Status, error) {
	if !validID(id) {
		return Status{}, ErrUnknownID
	}
	rec, err := e.cfg.readRecord(e.store, id)
	if err != nil || rec.State == events.StageCompleted {
		if err == nil {
			e.forget(id)
		}
		return rec.Status, err
	}
	if e.cfg.rebooted(rec) {
		return settle(e.store, rec, events.OutcomeSucceeded, 0, NoteRebooted, e.cfg.Now())
	}
	e.mu.Lock()
	_, watched := e.watching[id]
	done, ours := e.exited[id]
	e.mu.Unlock()
	if watched {
		return rec.Status, nil
	}
	runner := stageProcs{PID: rec.PID, PIDStart: rec.PIDStart}
	if runner.PID == 0 {
		if p, ok := e.store.procs(id); ok {
			runner = p
		}
	}
	if runner.PID == 0 {
		// Still launching. Ours: it is dead once its process exited. Not ours (an earlier agent
		// started it): give it LaunchTimeout to write its pid.
		switch {
		case ours && !isClosed(done):
			return rec.Status, nil
		case !ours && e.cfg.Now().Sub(rec.StartedAt) < e.cfg.LaunchTimeout:
			return rec.Status, nil
		}
		return e.runnerGone(id, ours)
	}
	if alive(runner.PID, runner.PIDStart) {
		return rec.Status, nil
	}
	return e.runnerGone(id, true)
}

// runnerGone settles a record whose runner is gone, or watches its script while that runs. The
// runner may have written its result just before exiting, so the record is read again first.
func (e *ServiceExecutor) runnerGone(id string, started bool) (Status, error) {
	rec, err := e.cfg.readRecord(e.store, id)
	if err != nil || rec.State == events.StageCompleted {
		return rec.Status, err
	}
	if p, ok := e.store.watchedGroup(id); ok {
		e.watch(id, p)
		return rec.Status, nil
	}
	p, claimed := e.store.procs(id)
	note := NoteRunnerDied
	switch {
	case rec.PID > 0 && rec.PIDStart == 0, claimed && p.PID > 0 && p.PIDStart == 0:
		note = NoteRunnerUnverifiable
	case claimed && p.PGID > 0 && p.PGIDStart > 0:
		note = NoteRunnerDiedScriptEnded
	case rec.PID == 0 && !claimed && !started:
		note = NoteRunnerMissing
	}
	st, err := settle(e.store, rec, events.OutcomeFailed, -1, note, e.cfg.Now())
	if err == nil {
		e.forget(id)
	}
	return st, err
}

// watch follows the script of id, whose runner died, until nothing of its process group p
// lives; the stage is running until then.
func (e *ServiceExecutor) watch(id string, p stageProcs) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.watching[id]; ok {
		return
	}
	settled := make(chan struct{})
	e.watching[id] = settled
	go func() {
		if _, err := e.cfg.watchOrphan(e.store, id, p, events.OutcomeFailed, NoteRunnerDiedScriptEnded); err != nil {
			// The record still says running: the next Get finds the group gone and tries again.
			e.cfg.Log.Error("stage result not saved", "exec_id", id, "err", err)
		}
		e.mu.Lock()
		delete(e.watching, id)
		e.mu.Unlock()
		e.forget(id)
		close(settled)
	}()
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// Wait implements Executor. It wakes on the exit of a runner that this executor started, and on
// the end of a script it watches; otherwise (systemd, or started before an agent restart) it
// polls the record, every 2 ms at first and every 50 ms once the stage has run for a while (see
// pollDelay), and every checkEvery also checks the processes and boot id.
func (e *ServiceExecutor) Wait(ctx context.Context, id string) (Status, error) {
	since := time.Now()
	var last os.FileInfo
	for {
		st, err := e.Get(id)
		if err != nil || st.State == events.StageCompleted {
			return st, err
		}
		if wake := e.wakeup(id); wake != nil {
			select {
			case <-wake:
				continue
			case <-ctx.Done():
				return Status{}, context.Cause(ctx)
			}
		}
		if err := awaitChange(ctx, e.store.recordPath(id), since, &last); err != nil {
			return Status{}, err
		}
	}
}

// wakeup returns what ends the wait on id without polling: the watch of its script, or the exit
// of its runner when this executor started it; nil when there is neither.
func (e *ServiceExecutor) wakeup(id string) <-chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	if w := e.watching[id]; w != nil {
		return w
	}
	if done := e.exited[id]; done != nil && !isClosed(done) {
		return done
	}
	return nil
}

// awaitChange returns once the record at path has changed since *last (a changed record may be
// the result), or checkEvery after it was called, or with ctx's error. It polls at pollDelay of
// the time since the wait began.
func awaitChange(ctx context.Context, path string, since time.Time, last *os.FileInfo) error {
	begin := time.Now()
	timer := time.NewTimer(pollDelay(begin.Sub(since)))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-timer.C:
		}
		now := time.Now()
		fi, err := os.Stat(path)
		changed := err == nil && (*last == nil || !os.SameFile(fi, *last) || fi.ModTime() != (*last).ModTime())
		if err == nil {
			*last = fi
		}
		if changed || now.Sub(begin) >= checkEvery {
			return nil
		}
		timer.Reset(pollDelay(now.Sub(since)))
	}
}

// Recover settles every recorded execution (see Get) and returns their statuses.
func (e *ServiceExecutor) Recover() ([]Status, error) {
	return recoverAll(e.store, e.cfg.Log, e.Get)
}
