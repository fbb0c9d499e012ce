package hooks

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/kvmctl/kvmctl/pkg/events"
)

// envStageExec marks a re-executed test binary as the agent's stage-exec subcommand, so the
// service executor's detached path runs for real.
const envStageExec = "KVMCTL_HOOKS_TEST_STAGE_EXEC"

// TestMain also makes the test binary the stage runner: testscript.Main puts a copy of it named
// kvmagent-stage on PATH (see stageRunnerOnPath), which runs StageExecMain as cmd/kvmagent-stage
// does. The executor's default, this binary without a kvmagent-stage beside it, falls back to
// the stage-exec subcommand.
func TestMain(m *testing.M) {
	if os.Getenv(envStageExec) == "1" && len(os.Args) > 1 && os.Args[1] == StageExecCommand {
		os.Exit(StageExecMain(os.Args[2:]))
	}
	os.Setenv(envStageExec, "1")
	// Under -race a binary sleeps 1 s at exit by default; stage-exec children must not.
	os.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	testscript.Main(m, map[string]func(){
		StageRunnerName: func() { os.Exit(StageExecMain(os.Args[1:])) },
	})
}

// fixture is a hooks dir, a state dir and a config for one test.
type fixture struct {
	hooks, state, tmp string
	boot              atomic.Value // string
	cfg               Config
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	tmp := t.TempDir()
	f := &fixture{hooks: filepath.Join(tmp, "hooks"), state: filepath.Join(tmp, "state"), tmp: tmp}
	if err := os.Mkdir(f.hooks, 0o755); err != nil {
		t.Fatal(err)
	}
	f.boot.Store("boot-1")
	f.cfg = Config{
		HooksDir:  f.hooks,
		StateDir:  f.state,
		Host:      "kvm1",
		Grace:     300 * time.Millisecond,
		BootID:    func() (string, error) { return f.boot.Load().(string), nil },
		NoSystemd: true,
	}
	return f
}

// script writes a stage script with mode 0755 and returns its path.
func (f *fixture) script(t testing.TB, name, body string) string {
	t.Helper()
	p := filepath.Join(f.hooks, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

type kind struct {
	name string
	new  func(Config) (Executor, error)
}

var kinds = []kind{
	{"service", func(c Config) (Executor, error) { return NewServiceExecutor(c) }},
	{"agent", func(c Config) (Executor, error) { return NewAgentExecutor(c) }},
}

func (f *fixture) executor(t testing.TB, k kind) Executor {
	t.Helper()
	e, err := k.new(f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { waitChildren(e) })
	return e
}

// waitChildren waits for the stage-exec processes a service executor started, the scripts it
// or an agent executor runs or watches, so that no test leaves a writer behind in a directory
// being removed.
func waitChildren(e Executor) {
	var chans []chan struct{}
	switch e := e.(type) {
	case *ServiceExecutor:
		e.mu.Lock()
		for _, c := range e.exited {
			chans = append(chans, c)
		}
		for _, c := range e.watching {
			chans = append(chans, c)
		}
		e.mu.Unlock()
	case *AgentExecutor:
		e.mu.Lock()
		for _, r := range e.runs {
			chans = append(chans, r.done)
		}
		e.mu.Unlock()
	}
	for _, c := range chans {
		select {
		case <-c:
		case <-time.After(10 * time.Second):
		}
	}
}

func run(t testing.TB, e Executor, req Request) Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	id, err := e.Start(ctx, req)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	st, err := e.Wait(ctx, id)
	if err != nil {
		t.Fatalf("wait: %v", err)
	}
	return st
}

func req(runID string, stage events.Stage) Request {
	return Request{RunID: runID, Stage: stage, Timeout: 10 * time.Second}
}

// eventually polls cond every 5 ms for up to 10 s.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// processGone tells whether pid has exited (a zombie counts as gone: nothing reaps orphans in
// some containers).
func processGone(pid int) bool {
	_, ok := procStart(pid)
	return !ok
}

func readPID(t testing.TB, path string) int {
	t.Helper()
	var pid int
	eventually(t, path, func() bool {
		b, err := os.ReadFile(path)
		if err != nil {
			return false
		}
		pid = atoiOr0(strings.TrimSpace(string(b)))
		return pid > 0
	})
	return pid
}

func atoiOr0(s string) int {
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0
		}
		n = n*10 + int(c-'0')
	}
	return n
}

func readRec(t testing.TB, state, id string) record {
	t.Helper()
	var rec record
	b, err := os.ReadFile(filepath.Join(state, "stages", id+".json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	return rec
}

func kill(pid int, sig syscall.Signal) { _ = syscall.Kill(pid, sig) }

// runnerOf returns the pid of the runner of service stage id from its <id>.pid, 0 when there is
// none.
func runnerOf(f *fixture, id string) int {
	p, _ := store{dir: filepath.Join(f.state, "stages")}.procs(id)
	return p.PID
}
