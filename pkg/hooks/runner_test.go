package hooks

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvmctl/kvmctl/pkg/events"
)

// parentScript is a stage script that prints how its parent, the process that ran the stage,
// was started: its argv joined by spaces on one line, then its executable.
const parentScript = `tr '\0' ' ' < /proc/$PPID/cmdline; echo; readlink /proc/$PPID/exe`

// stageRunnerOnPath returns the kvmagent-stage that TestMain put on PATH (this test binary under
// that name), its directory closed to group and others so that it passes CheckStageRunner
// whatever the umask.
func stageRunnerOnPath(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath(StageRunnerName)
	if err != nil {
		t.Fatalf("%s is not on PATH (TestMain puts it there): %v", StageRunnerName, err)
	}
	if p, err = filepath.Abs(p); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// logTo returns a logger that writes text to buf. The executor logs its warning about the runner
// while it is built, before any other goroutine could.
func logTo(buf *bytes.Buffer) *slog.Logger { return slog.New(slog.NewTextHandler(buf, nil)) }

// ranBy runs PreFlight, with parentScript as its script, through e and returns the argv line
// and the executable of the process that ran it.
func ranBy(t *testing.T, f *fixture, e Executor, runID string) (argv, exe string) {
	t.Helper()
	f.script(t, "PreFlight", parentScript)
	st := run(t, e, req(runID, events.PreFlight))
	if st.Outcome != events.OutcomeSucceeded {
		t.Fatalf("stage = %+v", st)
	}
	argv, exe, _ = strings.Cut(st.Output, "\n")
	return strings.TrimSpace(argv), strings.TrimSpace(exe)
}

// The service executor runs a stage through kvmagent-stage: the one configured, or by default
// the one beside the agent's binary; with no warning.
func TestServiceExecutorRunsStageRunner(t *testing.T) {
	runner := stageRunnerOnPath(t)
	for _, tc := range []struct {
		name string
		set  func(*Config)
	}{
		{"configured", func(c *Config) { c.Runner = runner }},
		{"beside the agent", func(c *Config) { c.Binary = filepath.Join(filepath.Dir(runner), "kvmagent") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			var log bytes.Buffer
			f.cfg.Log = logTo(&log)
			tc.set(&f.cfg)
			argv, exe := ranBy(t, f, f.executor(t, kinds[0]), "r1")
			spec := filepath.Join(f.state, "stages", ExecID("r1", events.PreFlight)+".spec")
			if want := runner + " " + spec; argv != want || exe != runner {
				t.Errorf("the stage ran under %q (executable %s), want %q (%s)", argv, exe, want, runner)
			}
			if s := log.String(); s != "" {
				t.Errorf("logged %q, want nothing", s)
			}
		})
	}
}

// Without kvmagent-stage beside the agent, stages run through the agent's stage-exec, and the
// executor says so once, when it is built.
func TestServiceExecutorFallsBackToStageExec(t *testing.T) {
	f := newFixture(t) // the agent is this test binary, with no kvmagent-stage beside it
	var log bytes.Buffer
	f.cfg.Log = logTo(&log)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	e := f.executor(t, kinds[0])
	for _, runID := range []string{"r1", "r2"} {
		argv, _ := ranBy(t, f, e, runID)
		if want := self + " " + StageExecCommand + " "; !strings.HasPrefix(argv, want) {
			t.Errorf("the stage ran under %q, want %q...", argv, want)
		}
	}
	beside := filepath.Join(filepath.Dir(self), StageRunnerName)
	if s := log.String(); strings.Count(s, "stage runner is missing") != 1 || !strings.Contains(s, "level=WARN") || !strings.Contains(s, beside) {
		t.Errorf("log = %q, want one warning that %s is missing", s, beside)
	}
}

func TestCheckStageRunner(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "bin")
	open := filepath.Join(t.TempDir(), "open")
	for _, d := range []string{dir, open} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mustChmod(t, open, 0o777)
	file := func(dir, name string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
		mustChmod(t, p, mode)
		return p
	}
	good := file(dir, "good", 0o755)
	if err := CheckStageRunner(good); err != nil {
		t.Errorf("CheckStageRunner(%s) = %v", good, err)
	}
	for _, tc := range []struct {
		path, want string
	}{
		{"kvmagent-stage", "is not an absolute path"},
		{filepath.Join(dir, "missing"), "no such file"},
		{dir, "is not a regular file"},
		{file(dir, "plain", 0o644), "is not executable (mode 0644): chmod +x"},
		{file(dir, "shared", 0o775), "is writable by group (mode 0775): chmod go-w"},
		{file(open, "runner", 0o755), open + " is writable by others (mode 0777)"},
	} {
		err := CheckStageRunner(tc.path)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CheckStageRunner(%s) = %v, want %q", tc.path, err, tc.want)
		}
	}
	if err := CheckStageRunner(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing runner: %v, want fs.ErrNotExist", err)
	}

	// A configured runner that fails the check stops the executor; one beside the agent that
	// fails it is passed over with a warning.
	f := newFixture(t)
	f.cfg.Runner = filepath.Join(dir, "shared")
	if _, err := NewServiceExecutor(f.cfg); err == nil || !strings.Contains(err.Error(), "writable by group") {
		t.Errorf("NewServiceExecutor with an untrusted runner = %v, want the refusal", err)
	}
	var log bytes.Buffer
	c, err := newFixture(t).cfg.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	c.Log = logTo(&log)
	c.Binary = filepath.Join(open, "kvmagent")
	file(open, StageRunnerName, 0o755)
	if runner, err := c.stageRunner(); err != nil || strings.Join(runner, " ") != c.Binary+" "+StageExecCommand {
		t.Errorf("stageRunner = %q, %v; want the agent's %s", runner, err, StageExecCommand)
	}
	if s := log.String(); !strings.Contains(s, "stage runner is not trusted") || !strings.Contains(s, "writable by others") {
		t.Errorf("log = %q, want the warning", s)
	}
}

// A runner started again for a stage that runs (a unit restarted) refuses: the script runs once.
func TestStageRunnerStartedTwice(t *testing.T) {
	f := newFixture(t)
	counter, gate := filepath.Join(f.tmp, "count"), filepath.Join(f.tmp, "go")
	f.script(t, "Maintenance", "echo x >> "+counter+"\nwhile [ ! -e "+gate+" ]; do sleep 0.01; done")
	e := f.executor(t, kinds[0])
	id, err := e.Start(context.Background(), req("r1", events.Maintenance))
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "script start", func() bool { return exists(counter) })
	if code := StageExecMain([]string{filepath.Join(f.state, "stages", id+".spec")}); code == 0 {
		t.Error("a second runner of a running stage exited 0")
	}
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := e.Wait(ctx, id)
	if b, _ := os.ReadFile(counter); err != nil || st.Outcome != events.OutcomeSucceeded || string(b) != "x\n" {
		t.Errorf("stage %+v, %v; the script ran %q, want once", st, err, b)
	}
	for _, left := range []string{".spec", ".pid"} {
		if p := filepath.Join(f.state, "stages", id+left); exists(p) {
			t.Errorf("%s left behind", p)
		}
	}
}
