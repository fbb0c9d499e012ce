package hooks

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kvmctl/kvmctl/pkg/events"
)

func TestOutcomes(t *testing.T) {
	cases := []struct {
		name    string
		body    string
		timeout time.Duration
		outcome events.Outcome
		code    int
		note    string
	}{
		{"exit 0", "echo ok", 0, events.OutcomeSucceeded, 0, ""},
		{"exit 70", "exit 70", 0, events.OutcomeSkipped, 70, ""},
		{"exit 143", "exit 143", 0, events.OutcomeTerminated, 143, ""},
		{"killed by signal", "kill -KILL $$", 0, events.OutcomeTerminated, 137, "killed by signal killed"},
		{"exit 3", "exit 3", 0, events.OutcomeFailed, 3, ""},
		{"timeout", "sleep 30", 200 * time.Millisecond, events.OutcomeTimedOut, 143, "timed out after 200ms"},
	}
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			t.Parallel()
			for i, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					f := newFixture(t)
					f.script(t, "PreFlight", c.body)
					e := f.executor(t, k)
					r := req(fmt.Sprintf("run-%d", i), events.PreFlight)
					if c.timeout > 0 {
						r.Timeout = c.timeout
					}
					st := run(t, e, r)
					if st.State != events.StageCompleted || st.Outcome != c.outcome || st.ExitCode != c.code || st.Note != c.note {
						t.Fatalf("got state=%s outcome=%s code=%d note=%q, want completed %s %d %q",
							st.State, st.Outcome, st.ExitCode, st.Note, c.outcome, c.code, c.note)
					}
					if st.StartedAt.IsZero() || st.EndedAt.Before(st.StartedAt) {
						t.Errorf("times: started %v ended %v", st.StartedAt, st.EndedAt)
					}
				})
			}
		})
	}
}

func TestPayloadArgvEnvAndDir(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			f := newFixture(t)
			out := filepath.Join(f.tmp, "args")
			side := filepath.Join(f.tmp, "x")
			f.script(t, "Maintenance.sh", `out=`+out+`
echo "$#" > "$out"
for a in "$@"; do printf '%s\n' "$a" >> "$out"; done
echo "$KVM_STAGE $KVM_HOST $KVM_RUN_ID $(pwd)" >> "$out"`)
			e := f.executor(t, k)
			r := req("r1", events.Maintenance)
			r.Payload = `a=1 "b c" ';touch ` + side + `'`
			st := run(t, e, r)
			if st.Outcome != events.OutcomeSucceeded {
				t.Fatalf("outcome %s: %s", st.Outcome, st.Output)
			}
			got, _ := os.ReadFile(out)
			realHooks, _ := filepath.EvalSymlinks(f.hooks)
			want := "3\na=1\nb c\n;touch " + side + "\nMaintenance kvm1 r1 " + realHooks + "\n"
			if string(got) != want {
				t.Fatalf("script saw\n%s\nwant\n%s", got, want)
			}
			if exists(side) {
				t.Fatal("payload ran a command")
			}
		})
	}
}

func TestSplitPayload(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []string
	}{
		{"", []string{}},
		{`a=1 "b c" ';touch /x'`, []string{"a=1", "b c", ";touch /x"}},
		{`$HOME '$(id)' x\ y`, []string{"$HOME", "$(id)", "x y"}},
	} {
		got, err := SplitPayload(c.in)
		if err != nil || strings.Join(got, "|") != strings.Join(c.want, "|") || len(got) != len(c.want) {
			t.Errorf("SplitPayload(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{`a "b`, `a 'b`, "a `b", `a; rm -rf /`, `a | b`, `a > f`, "a\x00b", "kernel=6.1\nx", "a \u0085b", "a\tb", "\xff"} {
		if _, err := SplitPayload(bad); err == nil {
			t.Errorf("SplitPayload(%q): no error", bad)
		}
	}
}

func TestBadRequestRunsNothing(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			f := newFixture(t)
			counter := filepath.Join(f.tmp, "count")
			f.script(t, "PreFlight", "echo x >> "+counter)
			e := f.executor(t, k)
			bad := []Request{
				{RunID: "r1", Stage: events.PreFlight, Payload: `a "b`, Timeout: time.Second},
				{RunID: "", Stage: events.PreFlight, Timeout: time.Second},
				{RunID: "a/b", Stage: events.PreFlight, Timeout: time.Second},
				{RunID: "a b", Stage: events.PreFlight, Timeout: time.Second},
				{RunID: strings.Repeat("a", 65), Stage: events.PreFlight, Timeout: time.Second},
				{RunID: "r1", Stage: "Preflight", Timeout: time.Second},
				{RunID: "r1", Stage: events.PreFlight, Timeout: 0},
			}
			for _, r := range bad {
				if id, err := e.Start(context.Background(), r); err == nil {
					t.Errorf("Start(%+v) = %s, want an error", r, id)
				}
			}
			ents, _ := os.ReadDir(filepath.Join(f.state, "stages"))
			if exists(counter) || len(ents) != 0 {
				t.Fatalf("something ran: counter %v, %d state files", exists(counter), len(ents))
			}
			if _, err := e.Get("../../etc/passwd"); !errors.Is(err, ErrUnknownID) {
				t.Errorf("Get(bad id) = %v", err)
			}
			if _, err := e.Get(ExecID("nope", events.PreFlight)); !errors.Is(err, ErrUnknownID) {
				t.Errorf("Get(unknown) = %v", err)
			}
			if _, err := e.Start(context.Background(), req("r1", events.Maintenance)); !errors.Is(err, ErrNoScript) {
				t.Errorf("Start without script = %v, want ErrNoScript", err)
			}
		})
	}
}

func TestTimeoutKillsProcessGroup(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			pidfile := filepath.Join(f.tmp, "child.pid")
			f.script(t, "PreMaintenance", "sleep 300 &\necho $! > "+pidfile+"\nwait")
			e := f.executor(t, k)
			r := req("r1", events.PreMaintenance)
			r.Timeout = 300 * time.Millisecond
			start := time.Now()
			st := run(t, e, r)
			if st.Outcome != events.OutcomeTimedOut {
				t.Fatalf("outcome %s, want timed_out", st.Outcome)
			}
			pid := readPID(t, pidfile)
			if !processGone(pid) {
				t.Fatalf("background child %d still running", pid)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("took %s", d)
			}
		})
	}
}

func TestGraceThenSIGKILL(t *testing.T) {
	f := newFixture(t)
	f.script(t, "PreFlight", "trap '' TERM\nwhile :; do sleep 0.05; done")
	e := f.executor(t, kinds[1])
	r := req("r1", events.PreFlight)
	r.Timeout = 100 * time.Millisecond
	st := run(t, e, r)
	if st.Outcome != events.OutcomeTimedOut || st.ExitCode != 137 {
		t.Fatalf("got %s %d, want timed_out 137", st.Outcome, st.ExitCode)
	}
	if d := st.EndedAt.Sub(st.StartedAt); d < 400*time.Millisecond {
		t.Errorf("ended after %s: before timeout+grace", d)
	}
}

func TestIdempotentStart(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			f := newFixture(t)
			counter := filepath.Join(f.tmp, "count")
			f.script(t, "PostMaintenance.py", "echo x >> "+counter+"\nsleep 0.2")
			e := f.executor(t, k)
			r := req("run.7", events.PostMaintenance)
			ids := make([]string, 8)
			var wg sync.WaitGroup
			for i := range ids {
				wg.Go(func() {
					id, err := e.Start(context.Background(), r)
					if err != nil {
						t.Error(err)
					}
					ids[i] = id
				})
			}
			wg.Wait()
			for _, id := range ids {
				if id != ids[0] || id != ExecID("run.7", events.PostMaintenance) {
					t.Fatalf("ids differ: %v", ids)
				}
			}
			if st, err := e.Wait(context.Background(), ids[0]); err != nil || st.Outcome != events.OutcomeSucceeded {
				t.Fatalf("wait: %+v %v", st, err)
			}
			// A restarted agent on the same state dir: same id, no second run.
			e2 := f.executor(t, k)
			id, err := e2.Start(context.Background(), r)
			if err != nil || id != ids[0] {
				t.Fatalf("after restart: %s %v", id, err)
			}
			if st, _ := e2.Get(id); st.Outcome != events.OutcomeSucceeded {
				t.Fatalf("after restart: %+v", st)
			}
			time.Sleep(50 * time.Millisecond)
			if b, _ := os.ReadFile(counter); string(b) != "x\n" {
				t.Fatalf("script ran %d times", strings.Count(string(b), "x"))
			}
			// Another stage of the same run is another execution.
			if ExecID("run.7", events.Maintenance) == id || ExecID("run.8", events.PostMaintenance) == id {
				t.Fatal("exec ids collide")
			}
		})
	}
}

func TestOutputTailAndInterleaving(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			f := newFixture(t)
			f.script(t, "PreFlight", `echo out1; echo err1 >&2; echo out2
i=0; while [ $i -lt 2000 ]; do echo "line $i ..................................................."; i=$((i+1)); done
echo LAST >&2`)
			e := f.executor(t, k)
			st := run(t, e, req("r1", events.PreFlight))
			if len(st.Output) > MaxOutput || len(st.Output) < MaxOutput-100 {
				t.Fatalf("output length %d, want about %d", len(st.Output), MaxOutput)
			}
			if !strings.HasSuffix(st.Output, "line 1999 ...................................................\nLAST\n") {
				t.Errorf("tail lost: %q", st.Output[len(st.Output)-100:])
			}
			if strings.Contains(st.Output, "out1") || strings.Contains(st.Output, "line 0 ") {
				t.Error("head kept")
			}
			f.script(t, "PreMaintenance", "echo out1; echo err1 >&2; echo out2")
			if st := run(t, e, req("r1", events.PreMaintenance)); st.Output != "out1\nerr1\nout2\n" {
				t.Errorf("interleaved output %q", st.Output)
			}
		})
	}
}

func TestServiceExecutorSurvivesAgentRestart(t *testing.T) {
	f := newFixture(t)
	started, gate := filepath.Join(f.tmp, "started"), filepath.Join(f.tmp, "go")
	f.script(t, "Maintenance", fmt.Sprintf("touch %s\nwhile [ ! -e %s ]; do sleep 0.01; done\necho finished\nexit 3", started, gate))
	e1 := f.executor(t, kinds[0])
	id, err := e1.Start(context.Background(), req("r1", events.Maintenance))
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "script start", func() bool { return exists(started) })

	// The agent restarts: a new executor on the same state dir, which did not start stage-exec.
	e2 := f.executor(t, kinds[0])
	st, err := e2.Get(id)
	if err != nil || st.State != events.StageRunning {
		t.Fatalf("after restart: %+v %v, want running", st, err)
	}
	if p, ok := (store{dir: filepath.Join(f.state, "stages")}).procs(id); !ok || processGone(p.PID) {
		t.Fatalf("runner pid %+v, %v", p, ok)
	}
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err = e2.Wait(ctx, id)
	if err != nil || st.State != events.StageCompleted || st.Outcome != events.OutcomeFailed || st.ExitCode != 3 || st.Output != "finished\n" {
		t.Fatalf("result: %+v %v", st, err)
	}
}

// A runner that dies with its script: the stage is completed and failed, with what the script
// printed; a runner that dies before its script ran: the same, with the note that says so.
func TestServiceExecutorRunnerDied(t *testing.T) {
	f := newFixture(t)
	pidfile, gate := filepath.Join(f.tmp, "pid"), filepath.Join(f.tmp, "go")
	f.script(t, "Maintenance", fmt.Sprintf("echo $$ > %s\necho working\nwhile [ ! -e %s ]; do sleep 0.01; done", pidfile, gate))
	e1 := f.executor(t, kinds[0])
	id, err := e1.Start(context.Background(), req("r1", events.Maintenance))
	if err != nil {
		t.Fatal(err)
	}
	script := readPID(t, pidfile)
	var runner int
	// The runner records the script's group just after starting it; the script may have written
	// its pid first. Killed before that, the runner leaves a script nobody watches (the old note).
	eventually(t, "runner pid and the script's group", func() bool {
		p, _ := store{dir: filepath.Join(f.state, "stages")}.procs(id)
		runner = p.PID
		return runner != 0 && p.PGID != 0
	})
	kill(runner, syscall.SIGKILL)
	kill(-script, syscall.SIGKILL)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := e1.Wait(ctx, id) // wakes on the child's exit
	if err != nil || st.Outcome != events.OutcomeFailed || st.Note != NoteRunnerDiedScriptEnded || st.Output != "working\n" {
		t.Fatalf("old executor: %+v %v", st, err)
	}
	e2 := f.executor(t, kinds[0])
	if st, err := e2.Get(id); err != nil || st.State != events.StageCompleted || st.Outcome != events.OutcomeFailed || st.Note != NoteRunnerDiedScriptEnded {
		t.Fatalf("new executor: %+v %v", st, err)
	}
	if ents, _ := filepath.Glob(filepath.Join(f.state, "stages", id+".*")); len(ents) != 1 {
		t.Errorf("left behind: %q, want only the record", ents)
	}

	// A runner that claimed the stage and died before the script ran.
	dir := filepath.Join(f.state, "stages")
	early := ExecID("early", events.Maintenance)
	pid, start := deadProcess(t)
	writeMode(t, filepath.Join(dir, early+".json"), recJSON(early, "running", ""), 0o600)
	writeMode(t, filepath.Join(dir, early+".pid"), []byte(fmt.Sprintf(`{"pid":%d,"pid_start":%d}`, pid, start)), 0o600)
	if st, err := e2.Get(early); err != nil || st.State != events.StageCompleted || st.Outcome != events.OutcomeFailed || st.Note != NoteRunnerDied {
		t.Fatalf("runner died before the script: %+v %v", st, err)
	}
}

func TestServiceExecutorRunnerNeverStarted(t *testing.T) {
	f := newFixture(t)
	s, err := openStore(f.state)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	id := ExecID("r1", events.PreFlight)
	if err := s.create(record{Status: Status{ID: id, RunID: "r1", Stage: events.PreFlight, State: events.StageRunning, StartedAt: t0},
		Executor: kindService, BootID: "boot-1"}); err != nil {
		t.Fatal(err)
	}
	now := t0.Add(10 * time.Second)
	f.cfg.Now = func() time.Time { return now }
	e := f.executor(t, kinds[0])
	if st, _ := e.Get(id); st.State != events.StageRunning {
		t.Fatalf("within launch timeout: %+v", st)
	}
	now = t0.Add(DefaultLaunchTimeout + time.Second)
	if st, _ := e.Get(id); st.State != events.StageCompleted || st.Outcome != events.OutcomeFailed || st.Note != NoteRunnerMissing {
		t.Fatalf("after launch timeout: %+v", st)
	}
}

// A stage left running by an agent that died before its script ran (no process group recorded)
// counts as completed at once: succeeded, as the seed says of the agent executor.
func TestAgentExecutorRestartCountsAsCompleted(t *testing.T) {
	f := newFixture(t)
	s, _ := openStore(f.state)
	lost := ExecID("r2", events.PreMaintenance)
	_ = s.create(record{Status: Status{ID: lost, RunID: "r2", Stage: events.PreMaintenance, State: events.StageRunning, StartedAt: time.Now()},
		Executor: kindAgent, BootID: "boot-1", PID: 1 << 22})
	e3, err := NewAgentExecutor(f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if rec := readRec(t, f.state, lost); rec.State != events.StageCompleted || rec.Note != NoteAgentRestart || rec.Outcome != events.OutcomeSucceeded {
		t.Fatalf("Recover left %+v", rec.Status)
	}
	if st, _ := e3.Wait(context.Background(), lost); st.Outcome != events.OutcomeSucceeded {
		t.Fatalf("wait: %+v", st)
	}
	if id2, _ := e3.Start(context.Background(), req("r2", events.PreMaintenance)); id2 != lost {
		t.Fatal("restart changed the id")
	}
}

func TestHostRebootedDuringStage(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			f := newFixture(t)
			started, gate := filepath.Join(f.tmp, "started"), filepath.Join(f.tmp, "go")
			f.script(t, "Maintenance", fmt.Sprintf("touch %s\nwhile [ ! -e %s ]; do sleep 0.01; done\nexit 3", started, gate))
			e1 := f.executor(t, k)
			id, err := e1.Start(context.Background(), req("r1", events.Maintenance))
			if err != nil {
				t.Fatal(err)
			}
			eventually(t, "script start", func() bool { return exists(started) })
			// The runner writes its pid before it starts the script: the "reboot" comes mid-stage.
			if k.name == "service" && runnerOf(f, id) == 0 {
				t.Fatal("the script runs, but its runner wrote no pid")
			}
			f.boot.Store("boot-2")
			e2 := f.executor(t, k)
			st, err := e2.Get(id)
			if err != nil || st.State != events.StageCompleted || st.Outcome != events.OutcomeSucceeded || st.Note != NoteRebooted {
				t.Fatalf("after reboot: %+v %v", st, err)
			}
			_ = os.WriteFile(gate, nil, 0o644)
			waitChildren(e1)
			if a, ok := e1.(*AgentExecutor); ok {
				_, _ = a.Wait(context.Background(), id)
			}
		})
	}
}

func TestSystemdRunArgs(t *testing.T) {
	const prefix = "systemd-run --unit kvmagent-stage-0123456789abcdef --collect --quiet --service-type=exec --property=KillMode=process -- "
	for _, tc := range []struct {
		runner []string
		want   string
	}{
		{[]string{"/usr/bin/kvmagent-stage"}, prefix + "/usr/bin/kvmagent-stage /var/lib/kvmagent/stages/0123456789abcdef.spec"},
		// The fallback where the runner is missing: the agent's own subcommand.
		{[]string{"/usr/bin/kvmagent", StageExecCommand}, prefix + "/usr/bin/kvmagent stage-exec /var/lib/kvmagent/stages/0123456789abcdef.spec"},
	} {
		got := strings.Join(systemdRunArgs("0123456789abcdef", tc.runner, "/var/lib/kvmagent/stages/0123456789abcdef.spec"), " ")
		if got != tc.want {
			t.Errorf("got  %s\nwant %s", got, tc.want)
		}
	}
}

func TestStageExecMainRefusesBadUse(t *testing.T) {
	if StageExecMain(nil) == 0 || StageExecMain([]string{"/nonexistent/x.spec"}) == 0 {
		t.Fatal("want a non-zero exit")
	}
}

func TestNewSelectsExecutor(t *testing.T) {
	f := newFixture(t)
	if e, err := New(f.cfg); err != nil || fmt.Sprintf("%T", e) != "*hooks.ServiceExecutor" {
		t.Fatalf("default: %T %v", e, err)
	}
	f.cfg.AgentExecutor = true
	if e, err := New(f.cfg); err != nil || fmt.Sprintf("%T", e) != "*hooks.AgentExecutor" {
		t.Fatalf("disabled service executor: %T %v", e, err)
	}
	if _, err := New(Config{StateDir: f.state}); err == nil {
		t.Fatal("no hooks dir: no error")
	}
}

// exitToWait measures, for one stage, the time from the script's last act to Wait returning.
func exitToWait(t testing.TB, f *fixture, starter, waiter Executor, runID string) time.Duration {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	id, err := starter.Start(ctx, req(runID, events.PreFlight))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := waiter.Wait(ctx, id); err != nil {
		t.Fatal(err)
	}
	end := time.Now()
	b, err := os.ReadFile(filepath.Join(f.tmp, "ts-"+runID))
	if err != nil {
		t.Fatal(err)
	}
	var ns int64
	if _, err := fmt.Sscan(string(b), &ns); err != nil {
		t.Fatal(err)
	}
	return end.Sub(time.Unix(0, ns))
}

const tsScript = "sleep 0.03\ndate +%s%N > ../ts-$KVM_RUN_ID"

func TestExitToWaitLatency(t *testing.T) {
	f := newFixture(t)
	f.script(t, "PreFlight", tsScript)
	e := f.executor(t, kinds[0])
	poller := f.executor(t, kinds[0]) // did not start the stages: must poll
	for _, c := range []struct {
		name   string
		waiter Executor
	}{{"child exit", e}, {"record poll", poller}} {
		var worst, sum time.Duration
		const n = 10
		for i := range n {
			d := exitToWait(t, f, e, c.waiter, fmt.Sprintf("%s-%d", strings.ReplaceAll(c.name, " ", "-"), i))
			sum += d
			worst = max(worst, d)
		}
		t.Logf("%s: exit to Wait mean %s, worst %s", c.name, sum/n, worst)
		if sum/n > 100*time.Millisecond {
			t.Errorf("%s: mean exit-to-Wait %s", c.name, sum/n)
		}
	}
}
