package hooks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kvmctl/kvmctl/pkg/argv"
	"github.com/kvmctl/kvmctl/pkg/events"
)

// SplitPayload splits a payload into words by shell quoting rules, without expanding variables
// or running command substitutions. An unbalanced quote, or an unquoted shell operator
// (; & | < >) that would silently cut the payload short, is an error.
func SplitPayload(payload string) ([]string, error) {
	// The agent refuses control characters in a payload; kvmctl says so before anything runs.
	return argv.Split("payload", payload)
}

// runSpec is one script execution, already resolved and split.
type runSpec struct {
	Script  string        `json:"script"`
	Args    []string      `json:"args"`
	Dir     string        `json:"dir"`
	Env     []string      `json:"env"`
	Timeout time.Duration `json:"timeout"`
	Grace   time.Duration `json:"grace"`
}

// runResult is how one script execution ended.
type runResult struct {
	Outcome   events.Outcome
	ExitCode  int
	Output    string
	Note      string
	StartedAt time.Time
	EndedAt   time.Time
}

// groupPoll is how often the process group is checked for stragglers after SIGTERM.
const groupPoll = 5 * time.Millisecond

// runScript runs the script in its own process group and waits for it, appending its stdout
// and stderr to the file at log: a file, not a pipe, so that a script never dies of SIGPIPE
// because the process that started it died, however much it prints. started (when not nil) is
// called as soon as the script runs, to record its process group; an error it returns is noted
// in the result. On timeout, or when ctx ends, the group gets SIGTERM, then SIGKILL once the
// grace period is over. The stage ends when the script exits: its exit status is the result.
func runScript(ctx context.Context, s runSpec, log string, started func(stageProcs) error, now func() time.Time) runResult {
	res := runResult{StartedAt: now()}
	fail := func(err error) runResult {
		res.Outcome, res.ExitCode, res.Note, res.EndedAt = events.OutcomeFailed, -1, err.Error(), now()
		return res
	}
	out, err := os.OpenFile(log, os.O_WRONLY|os.O_CREATE|os.O_APPEND|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fail(fmt.Errorf("output file: %w", err))
	}
	cmd := &exec.Cmd{
		Path:        s.Script,
		Args:        append([]string{s.Script}, s.Args...),
		Dir:         s.Dir,
		Env:         s.Env,
		Stdout:      out, // one file for both keeps them interleaved
		Stderr:      out,
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
	}
	err = cmd.Start()
	out.Close()
	if err != nil {
		return fail(fmt.Errorf("start %s: %w", s.Script, err))
	}
	pgid := cmd.Process.Pid
	if started != nil {
		// Not yet reaped, so its start time is there even if it has already exited.
		_, start, _ := procStat(pgid)
		p := stageProcs{PGID: pgid, PGIDStart: start, ScriptStart: res.StartedAt, Timeout: s.Timeout, Grace: s.Grace}
		if err := started(p); err != nil {
			res.Note = "process group not recorded: " + err.Error()
		}
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()

	timer := time.NewTimer(s.Timeout)
	defer timer.Stop()
	select {
	case <-waited:
	case <-timer.C:
		res.Outcome, res.Note = events.OutcomeTimedOut, joinNote(fmt.Sprintf("timed out after %s", s.Timeout), res.Note)
		stopGroup(pgid, s.Grace, waited)
	case <-ctx.Done():
		// A stopped stage did not finish, whatever the script exits with.
		res.Outcome, res.Note = events.OutcomeTerminated, joinNote("stopped: "+context.Cause(ctx).Error(), res.Note)
		stopGroup(pgid, s.Grace, waited)
	}
	res.EndedAt = now()
	res.Output = readTail(log, MaxOutput)

	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	switch {
	case ws.Signaled():
		res.ExitCode = 128 + int(ws.Signal())
		if res.Outcome == "" {
			res.Outcome = events.OutcomeTerminated
			res.Note = joinNote(res.Note, "killed by signal "+ws.Signal().String())
		}
	default:
		res.ExitCode = ws.ExitStatus()
	}
	if res.Outcome == "" {
		res.Outcome = outcomeOf(res.ExitCode)
	}
	return res
}

// refusedResult is the result of a stage whose script failed its checks right before it would
// have run.
func refusedResult(err error, now time.Time) runResult {
	return runResult{Outcome: events.OutcomeFailed, ExitCode: -1, Note: err.Error(), StartedAt: now, EndedAt: now}
}

func joinNote(a, b string) string {
	if a == "" || b == "" {
		return a + b
	}
	return a + "; " + b
}

// outcomeOf maps an exit code to its outcome.
func outcomeOf(code int) events.Outcome {
	switch code {
	case 0:
		return events.OutcomeSucceeded
	case events.ExitNoMaintenance:
		return events.OutcomeSkipped
	case events.ExitTerminated:
		return events.OutcomeTerminated
	default:
		return events.OutcomeFailed
	}
}

// stopGroup sends SIGTERM to the process group, waits until the group is empty or the grace
// period is over, then sends SIGKILL. It returns once the leader has been reaped.
func stopGroup(pgid int, grace time.Duration, waited <-chan error) {
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	deadline := time.NewTimer(grace)
	defer deadline.Stop()
	tick := time.NewTicker(groupPoll)
	defer tick.Stop()
	reaped := false
	for {
		select {
		case <-waited:
			reaped = true
			if groupGone(pgid) {
				return
			}
		case <-tick.C:
			if reaped && groupGone(pgid) {
				return
			}
		case <-deadline.C:
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			if !reaped {
				<-waited
			}
			return
		}
	}
}

// groupGone tells whether no live process is left in the group. Zombies do not count: where
// init does not reap orphans (some containers) they would otherwise hold out the whole grace.
func groupGone(pgid int) bool {
	if errors.Is(syscall.Kill(-pgid, 0), syscall.ESRCH) {
		return true
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return false
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		// After the command name: state, ppid, pgrp.
		f := strings.Fields(string(b[i+1:]))
		if len(f) >= 3 && f[2] == strconv.Itoa(pgid) && f[0] != "Z" && f[0] != "X" && pid > 0 {
			return false
		}
	}
	return true
}
