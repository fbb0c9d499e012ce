package cli

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/hooks"
	"github.com/kvmctl/kvmctl/pkg/lab"
)

// TestRollingE2EStageOutlivesItsStarter: h1's Maintenance script outlives the process that
// started it, its agent (SIGKILLed and restarted during the stage, with either executor) or its
// stage runner (SIGKILLed, with --forced). The run must count the stage as running until the
// script has ended: h1 does not leave maintenance, and no VM moves onto it, before the time
// the script wrote as its last act.
func TestRollingE2EStageOutlivesItsStarter(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name          string
		agentExecutor bool
		killRunner    bool
	}{
		{"AgentKilled/ServiceExecutor", false, false},
		{"AgentKilled/AgentExecutor", true, false},
		{"RunnerKilled/Forced", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			l := newRollingLab(t, 3, 1, 2, func(o *lab.Options) { o.AgentExecutor = tc.agentExecutor })
			ended := filepath.Join(t.TempDir(), "ended")
			release := l.blockHook("h1", "Maintenance", "date +%s%N > "+ended+".tmp", "mv "+ended+".tmp "+ended)
			args := []string{"rolling", "start", "--cluster", "c1", "--timeout", "300"}
			if tc.killRunner {
				args = append(args, "--forced")
			}
			bg := l.startBackground(args...)
			st := l.waitStageRunning(bg, "h1", "Maintenance")
			id, h1 := st.Run.ID, l.host("h1")
			if tc.killRunner {
				l.killRunner(h1, st.Run.Host("h1").Stages["Maintenance"].ExecID)
			} else {
				l.waitGroupRecorded(h1, st.Run.Host("h1").Stages["Maintenance"].ExecID)
				l.restartAgent(h1)
			}
			// The run asks the agent again within a ping interval (1 s); the stage must still be
			// running a few intervals later (an agent that reported it completed let it go on).
			l.stageRunsFor(id, "h1", "Maintenance", 5*time.Second)
			release()
			if code := bg.wait(t, 180*time.Second); code != 0 {
				t.Fatalf("rolling start exited %d\n%s%s", code, bg.stdout.String(), bg.errb.String())
			}
			end := readStamp(t, ended)
			left := false
			for _, e := range l.journal(id) {
				onto := (e.Type == events.VMMigrating || e.Type == events.VMMigrated) && e.To == "h1"
				leaves := e.Host == "h1" && (e.Type == events.HostMaintenanceCancel || e.Type == events.HostStep && e.Step == events.StepLeftMaintenance)
				left = left || leaves
				if (onto || leaves) && e.Time.Before(end) {
					t.Errorf("%s %s (to %q) at %s, %s before h1's Maintenance script ended", e.Type, e.Host, e.To, e.Time.Format(time.RFC3339Nano), end.Sub(e.Time))
				}
			}
			if !left {
				t.Error("the journal never shows h1 leaving maintenance")
			}
			if n := countStage(l.logLines("h1"), "Maintenance"); n != 1 {
				t.Errorf("h1's Maintenance script ran %d times, want once", n)
			}
			final := l.status(id)
			rec := final.Run.Host("h1").Stages["Maintenance"]
			switch {
			case tc.killRunner && (rec.Outcome != events.OutcomeFailed || rec.Note != hooks.NoteRunnerDiedScriptEnded):
				t.Errorf("h1's Maintenance: %+v, want failed, note %q", rec, hooks.NoteRunnerDiedScriptEnded)
			case tc.agentExecutor && (rec.Outcome != events.OutcomeSucceeded || rec.Note != hooks.NoteAgentRestartScriptEnded):
				t.Errorf("h1's Maintenance: %+v, want succeeded, note %q", rec, hooks.NoteAgentRestartScriptEnded)
			case !tc.killRunner && !tc.agentExecutor && (rec.Outcome != events.OutcomeSucceeded || rec.Note != ""):
				t.Errorf("h1's Maintenance: %+v, want the script's own success", rec)
			}
			l.assertRestored()
		})
	}
}

// restartAgent SIGKILLs the agent of h, as a crash would, and starts it again.
func (l *rollingLab) restartAgent(h *lab.HostManifest) {
	l.t.Helper()
	if err := lab.KillAgent(h); err != nil {
		l.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := lab.StartHosts(ctx, l.m, []*lab.HostManifest{h}); err != nil {
		l.t.Fatalf("restart the agent of %s: %v", h.Name, err)
	}
}

// waitGroupRecorded waits until h's agent has recorded the process group of execution id's
// script (in stages/<id>.pid): a starter killed before that leaves a script nobody watches,
// which is not what these tests are about.
func (l *rollingLab) waitGroupRecorded(h *lab.HostManifest, id string) {
	l.t.Helper()
	var p struct {
		PGID int `json:"pgid"`
	}
	path := filepath.Join(h.Dir, "state", "stages", id+".pid")
	for deadline := time.Now().Add(30 * time.Second); p.PGID <= 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			l.t.Fatalf("the process group of %s never recorded in %s", id, path)
		}
		if b, err := os.ReadFile(path); err == nil {
			_ = json.Unmarshal(b, &p)
		}
	}
}

// killRunner SIGKILLs the stage runner of execution id on h, whose pid is in the agent's
// stages/<id>.pid, once the script runs (it has logged its start).
func (l *rollingLab) killRunner(h *lab.HostManifest, id string) {
	l.t.Helper()
	var p struct {
		PID  int `json:"pid"`
		PGID int `json:"pgid"`
	}
	path := filepath.Join(h.Dir, "state", "stages", id+".pid")
	// Killed before it recorded its script's process group, the runner would leave a script
	// nobody watches: that window (between starting the script and recording it) is not what
	// this test is about.
	for deadline := time.Now().Add(30 * time.Second); p.PID <= 0 || p.PGID <= 0 || countStage(l.logLines(h.Name), "Maintenance") == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			l.t.Fatalf("no stage runner of %s in %s, or its script did not start", id, path)
		}
		if b, err := os.ReadFile(path); err == nil {
			_ = json.Unmarshal(b, &p)
		}
	}
	if err := syscall.Kill(p.PID, syscall.SIGKILL); err != nil {
		l.t.Fatal(err)
	}
}

// stageRunsFor checks, for d, that run id shows host's stage running.
func (l *rollingLab) stageRunsFor(id, host, stage string, d time.Duration) {
	l.t.Helper()
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		st := l.status(id)
		if rec := st.Run.Host(host).Stages[events.Stage(stage)]; rec == nil || rec.State != events.StageRunning {
			l.t.Errorf("%s's %s is %+v while its script waits to be released, want running", host, stage, rec)
			return
		}
	}
}

// readStamp reads a time a script wrote with date +%s%N, waiting for it at most 30 s.
func readStamp(t *testing.T, path string) time.Time {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := os.ReadFile(path)
		if err == nil {
			ns, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
			if err != nil {
				t.Fatalf("end time %q: %v", b, err)
			}
			return time.Unix(0, ns)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the script wrote no end time: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
