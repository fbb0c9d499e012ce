package hooks

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kvmctl/kvmctl/pkg/events"
)

// orphan is a script running in its own process group, as runScript starts one, whose starter
// (an agent, or a stage runner) the test plays dead: the stage's record and <id>.pid are what
// that starter left. The test process is the script's parent only so that it can hold the
// leader unreaped (a zombie) and reap it when it likes, as init would.
type orphan struct {
	id   string
	cmd  *exec.Cmd
	pgid int
}

// startOrphan runs body as the stage script of run runID through a dead starter of kind k;
// with p it edits the recorded processes.
func startOrphan(t *testing.T, f *fixture, k kind, runID, body string, edit func(*stageProcs)) *orphan {
	t.Helper()
	s, err := openStore(f.state)
	if err != nil {
		t.Fatal(err)
	}
	id := ExecID(runID, events.Maintenance)
	script := f.script(t, "Maintenance", body)
	out, err := os.OpenFile(s.logPath(id), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd := exec.Command(script)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	o := &orphan{id: id, cmd: cmd, pgid: cmd.Process.Pid}
	t.Cleanup(func() {
		_ = syscall.Kill(-o.pgid, syscall.SIGKILL)
		_ = cmd.Wait()
	})
	dead, deadStart := deadProcess(t)
	_, start, _ := procStat(o.pgid)
	rec := record{Status: Status{ID: id, RunID: runID, Stage: events.Maintenance, State: events.StageRunning, StartedAt: time.Now()},
		Executor: kindAgent, BootID: "boot-1", PID: dead, PIDStart: deadStart}
	p := stageProcs{PGID: o.pgid, PGIDStart: start, ScriptStart: time.Now(), Timeout: time.Hour, Grace: time.Second}
	if k.name == "service" {
		rec.Executor, rec.PID, rec.PIDStart = kindService, 0, 0
		p.PID, p.PIDStart = dead, deadStart
	}
	if edit != nil {
		edit(&p)
	}
	if err := s.create(rec); err != nil {
		t.Fatal(err)
	}
	if err := s.writeProcs(id, p); err != nil {
		t.Fatal(err)
	}
	return o
}

// orphanResult is how each executor settles a script that outlived its starter.
var orphanResult = map[string]struct {
	outcome events.Outcome
	note    string
}{
	"service": {events.OutcomeFailed, NoteRunnerDiedScriptEnded},
	"agent":   {events.OutcomeSucceeded, NoteAgentRestartScriptEnded},
}

// mustRun checks that the executor reports id running, several times.
func mustRun(t *testing.T, e Executor, id, when string) {
	t.Helper()
	for range 3 {
		if st, err := e.Get(id); err != nil || st.State != events.StageRunning {
			t.Fatalf("%s: %+v, %v; want running", when, st, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A script that outlived its starter is running while anything of its process group lives:
// the leader itself, then (once it has exited, a zombie or reaped) a background child it left
// in its group. Once nothing lives, the stage is completed with the tail of the script's log,
// exit status unknown, and what it needed while it ran is removed.
func TestOrphanedScriptWatched(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			f := newFixture(t)
			gate, child := filepath.Join(f.tmp, "gate"), filepath.Join(f.tmp, "child")
			o := startOrphan(t, f, k, "r1", "echo leader starts\nsleep 300 &\necho $! > "+child+
				"\nwhile [ ! -e "+gate+" ]; do sleep 0.01; done\necho leader ends", nil)
			e := f.executor(t, k)
			mustRun(t, e, o.id, "leader running")

			if err := os.WriteFile(gate, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			eventually(t, "the leader's exit", func() bool { return processGone(o.pgid) })
			mustRun(t, e, o.id, "leader a zombie, its child alive")
			_ = o.cmd.Wait()
			mustRun(t, e, o.id, "leader reaped, its child alive")
			if e2 := f.executor(t, k); true {
				mustRun(t, e2, o.id, "another agent, the child alive")
			}

			kill(readPID(t, child), syscall.SIGKILL)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			st, err := e.Wait(ctx, o.id)
			want := orphanResult[k.name]
			if err != nil || st.State != events.StageCompleted || st.Outcome != want.outcome || st.Note != want.note ||
				st.ExitCode != -1 || st.Output != "leader starts\nleader ends\n" {
				t.Fatalf("after the group ended: %+v, %v; want completed, %s, %q, the script's output", st, err, want.outcome, want.note)
			}
			// The second executor may have settled it: its clean-up follows the record.
			eventually(t, "only the record left", func() bool {
				ents, _ := filepath.Glob(filepath.Join(f.state, "stages", o.id+".*"))
				return len(ents) == 1
			})
		})
	}
}

// The agent enforces the timeout of a script that outlived its starter: SIGTERM once it is
// over, SIGKILL after the grace period (this script ignores SIGTERM), and the stage has timed
// out. A group recorded without its leader's start time is not trusted: the stage is settled
// at once, whatever runs under that pgid.
func TestOrphanedScriptTimeoutAndUntrustedGroup(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			f := newFixture(t)
			o := startOrphan(t, f, k, "r1", "trap '' TERM\nsleep 300", func(p *stageProcs) {
				p.ScriptStart, p.Timeout, p.Grace = time.Now().Add(-time.Second), time.Second, 300*time.Millisecond
			})
			e := f.executor(t, k)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			st, err := e.Wait(ctx, o.id)
			want := orphanResult[k.name]
			if err != nil || st.Outcome != events.OutcomeTimedOut || st.Note != "timed out after 1s; "+want.note {
				t.Fatalf("past its timeout: %+v, %v", st, err)
			}
			if err := o.cmd.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
				t.Errorf("the script ended with %v, want killed", err)
			}

			u := startOrphan(t, f, k, "r2", "sleep 300", func(p *stageProcs) { p.PGIDStart = 0 })
			st, err = e.Get(u.id)
			if err != nil || st.State != events.StageCompleted || st.Note == want.note {
				t.Fatalf("a group without start time: %+v, %v; want completed without claiming the script ended", st, err)
			}
		})
	}
}
