package hooks

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvmctl/kvmctl/pkg/events"
)

// An untrusted hooks dir, or an untrusted directory above it, refuses every stage, script or not.
func TestUntrustedHooksDirRefusesEveryStage(t *testing.T) {
	cases := []struct {
		name   string
		setup  func(t *testing.T, f *fixture) (hooksDir string)
		reason func(real string) string
	}{
		{"hooks dir writable by others", func(t *testing.T, f *fixture) string {
			mustChmod(t, f.hooks, 0o777)
			return f.hooks
		}, func(real string) string {
			return "hooks dir " + real + " is writable by others (mode 0777): chmod go-w " + real
		}},
		{"hooks dir writable by group", func(t *testing.T, f *fixture) string {
			mustChmod(t, f.hooks, 0o775)
			return f.hooks
		}, func(real string) string { return "hooks dir " + real + " is writable by group (mode 0775)" }},
		{"sticky hooks dir", func(t *testing.T, f *fixture) string {
			mustChmod(t, f.hooks, 0o1777)
			return f.hooks
		}, func(real string) string { return "hooks dir " + real + " is writable by others (mode 1777)" }},
		{"parent writable by others", func(t *testing.T, f *fixture) string {
			parent := filepath.Join(f.tmp, "open")
			if err := os.Mkdir(parent, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(f.hooks, filepath.Join(parent, "hooks")); err != nil {
				t.Fatal(err)
			}
			mustChmod(t, parent, 0o777)
			return filepath.Join(parent, "hooks")
		}, func(real string) string {
			p := filepath.Dir(real)
			return "hooks dir " + real + ": parent dir " + p + " is writable by others (mode 0777): chmod go-w " + p
		}},
		{"symlink in a dir writable by others", func(t *testing.T, f *fixture) string {
			open := filepath.Join(f.tmp, "open")
			if err := os.Mkdir(open, 0o755); err != nil {
				t.Fatal(err)
			}
			mustChmod(t, open, 0o777)
			link := filepath.Join(open, "hooks")
			if err := os.Symlink(f.hooks, link); err != nil {
				t.Fatal(err)
			}
			return link
		}, func(real string) string { return "is writable by others (mode 0777)" }},
		{"hooks dir owned by another user", func(t *testing.T, f *fixture) string {
			if os.Getuid() == 4242 {
				t.Skip("running as uid 4242")
			}
			if err := os.Chown(f.hooks, 4242, 4242); err != nil {
				t.Skip("chown needs root:", err)
			}
			return f.hooks
		}, func(real string) string { return "hooks dir " + real + " is owned by uid 4242" }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			counter := filepath.Join(f.tmp, "count")
			f.script(t, "PreFlight", "echo x >> "+counter)
			f.script(t, "Maintenance.sh", "echo x >> "+counter)
			dir := c.setup(t, f)
			real, err := filepath.EvalSymlinks(dir)
			if err != nil {
				t.Fatal(err)
			}
			want := c.reason(real)
			for _, st := range events.Stages() {
				_, err := Resolve(dir, st)
				var refused *RefusedError
				if !errors.As(err, &refused) || !strings.Contains(refused.Reason, want) {
					t.Fatalf("Resolve(%s) = %v, want a refusal containing %q", st, err, want)
				}
			}
			infos, err := Discover(dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, in := range infos {
				if !strings.Contains(in.Refused, want) {
					t.Errorf("Discover %s: %+v, want refused", in.Stage, in)
				}
			}
			if !infos[0].Present || infos[1].Present {
				t.Errorf("Discover: present flags wrong: %+v", infos)
			}
			f.cfg.HooksDir = dir
			for _, k := range kinds {
				e := f.executor(t, k)
				for _, st := range []events.Stage{events.PreFlight, events.PreMaintenance} {
					var refused *RefusedError
					if _, err := e.Start(context.Background(), req("r-"+k.name, st)); !errors.As(err, &refused) {
						t.Errorf("%s Start(%s) = %v, want a refusal", k.name, st, err)
					}
				}
			}
			if exists(counter) {
				t.Fatal("a script of an untrusted hooks dir ran")
			}
		})
	}
}

// The t.TempDir() chain (/tmp is 1777 and sticky) and a 0755 hooks dir, as the lab writes it,
// are trusted.
func TestTrustedHooksDirAccepted(t *testing.T) {
	f := newFixture(t)
	f.script(t, "PreFlight", "exit 0")
	if err := CheckTrustedPath(f.hooks); err != nil {
		t.Fatal(err)
	}
	sticky := filepath.Join(f.tmp, "sticky")
	if err := os.Mkdir(sticky, 0o755); err != nil {
		t.Fatal(err)
	}
	mustChmod(t, sticky, 0o1777)
	inner := filepath.Join(sticky, "hooks")
	if err := os.Mkdir(inner, 0o755); err != nil {
		t.Fatal(err)
	}
	mustChmod(t, inner, 0o755)
	if err := CheckTrustedPath(inner); err != nil {
		t.Errorf("hooks dir under a sticky dir: %v", err)
	}
	if _, err := Resolve(f.hooks, events.PreFlight); err != nil {
		t.Fatal(err)
	}
}

// stage-exec checks the script again right before it runs it: a script or hooks dir changed
// after Start must not run, and the stage is recorded as failed with the reason.
func TestStageExecRechecksScript(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(t *testing.T, f *fixture, script string)
		reason string
	}{
		{"script made writable", func(t *testing.T, f *fixture, script string) { mustChmod(t, script, 0o777) },
			"writable by group or others"},
		{"hooks dir made writable", func(t *testing.T, f *fixture, _ string) { mustChmod(t, f.hooks, 0o777) },
			"is writable by others (mode 0777)"},
		{"script replaced by a symlink outside", func(t *testing.T, f *fixture, script string) {
			out := filepath.Join(f.tmp, "evil")
			if err := os.WriteFile(out, []byte("#!/bin/sh\necho evil >> "+filepath.Join(f.tmp, "count")+"\n"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(script); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(out, script); err != nil {
				t.Fatal(err)
			}
		}, "outside the hooks dir"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			counter := filepath.Join(f.tmp, "count")
			script := f.script(t, "Maintenance", "echo x >> "+counter)
			cfg, err := f.cfg.withDefaults()
			if err != nil {
				t.Fatal(err)
			}
			s, err := openStore(cfg.StateDir)
			if err != nil {
				t.Fatal(err)
			}
			// What ServiceExecutor.Start leaves for stage-exec, checks passed.
			p, err := validate(req("r1", events.Maintenance))
			if err != nil {
				t.Fatal(err)
			}
			spec, err := cfg.spec(p)
			if err != nil {
				t.Fatal(err)
			}
			rec := record{Status: Status{ID: p.id, RunID: "r1", Stage: events.Maintenance, State: events.StageRunning, StartedAt: time.Now()},
				Executor: kindService, Script: spec.Script, BootID: "boot-1"}
			if err := s.create(rec); err != nil {
				t.Fatal(err)
			}
			es := execSpec{ID: p.id, RunID: "r1", Stage: events.Maintenance, BootID: "boot-1", Run: spec}
			if err := writeJSONAtomic(s.specPath(p.id), es); err != nil {
				t.Fatal(err)
			}

			tc.change(t, f, script)
			if code := StageExecMain([]string{s.specPath(p.id)}); code != 0 {
				t.Fatalf("stage-exec exit %d", code)
			}
			got := readRec(t, f.state, p.id)
			if got.State != events.StageCompleted || got.Outcome != events.OutcomeFailed || !strings.Contains(got.Note, tc.reason) {
				t.Errorf("record %+v, want completed, failed, note containing %q", got.Status, tc.reason)
			}
			if exists(counter) {
				t.Fatal("the changed script ran")
			}
		})
	}
}

// One unreadable record does not stop the executor: it is kept aside as .corrupt and the stage
// counts as completed and failed, so it never runs again.
func TestCorruptRecordIsSetAside(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			f := newFixture(t)
			counter := filepath.Join(f.tmp, "count")
			f.script(t, "Maintenance", "echo x >> "+counter)
			dir := filepath.Join(f.state, "stages")
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			id := ExecID("r1", events.Maintenance)
			if err := os.WriteFile(filepath.Join(dir, id+".json"), []byte(`{"id":"`+id+`","state":"runn`), 0o600); err != nil {
				t.Fatal(err)
			}
			e := f.executor(t, k) // recovers: must not fail
			st, err := e.Get(id)
			if err != nil || st.State != events.StageCompleted || st.Outcome != events.OutcomeFailed || st.Note != NoteRecordUnreadable {
				t.Fatalf("Get = %+v, %v; want completed, failed, %q", st, err, NoteRecordUnreadable)
			}
			if !exists(filepath.Join(dir, id+".json.corrupt")) {
				t.Error("the unreadable record was not kept as .corrupt")
			}
			if got, err := e.Start(context.Background(), req("r1", events.Maintenance)); err != nil || got != id {
				t.Fatalf("Start = %s, %v", got, err)
			}
			if st, err := e.Wait(context.Background(), id); err != nil || st.Note != NoteRecordUnreadable {
				t.Errorf("Wait = %+v, %v", st, err)
			}
			if exists(counter) {
				t.Fatal("the stage ran again")
			}
		})
	}
}

// Creating and replacing a record syncs the stages dir, so the name survives a power cut.
func TestRecordWritesSyncTheDir(t *testing.T) {
	f := newFixture(t)
	s, err := openStore(f.state)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var synced []string
	old := syncDir
	syncDir = func(dir string) error {
		mu.Lock()
		synced = append(synced, dir)
		mu.Unlock()
		return old(dir)
	}
	t.Cleanup(func() { syncDir = old })
	rec := record{Status: Status{ID: ExecID("r1", events.PreFlight), State: events.StageRunning}}
	if err := s.create(rec); err != nil {
		t.Fatal(err)
	}
	if len(synced) != 1 || synced[0] != s.dir {
		t.Fatalf("after create, synced %v; want [%s]", synced, s.dir)
	}
	rec.State = events.StageCompleted
	if err := s.write(rec); err != nil {
		t.Fatal(err)
	}
	if len(synced) != 2 || synced[1] != s.dir {
		t.Fatalf("after write, synced %v; want [%s %[2]s]", synced, s.dir)
	}
}

// A systemd-run that hangs is given up after LaunchTimeout: Start holds the executor's lock.
func TestSystemdRunLaunchDeadline(t *testing.T) {
	f := newFixture(t)
	f.script(t, "PreFlight", "exit 0")
	bin := filepath.Join(f.tmp, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	// Not exec: the sleep keeps the output pipe open after sh is killed.
	if err := os.WriteFile(filepath.Join(bin, "systemd-run"), []byte("#!/bin/sh\nsleep 5\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	old := systemdRunning
	systemdRunning = func() bool { return true }
	t.Cleanup(func() { systemdRunning = old })
	f.cfg.NoSystemd = false
	f.cfg.LaunchTimeout = 200 * time.Millisecond
	e := f.executor(t, kinds[0])
	start := time.Now()
	_, err := e.Start(context.Background(), req("r1", events.PreFlight))
	if err == nil || !strings.Contains(err.Error(), "did not answer within 200ms") {
		t.Fatalf("Start = %v, want a launch timeout", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Start took %s", d)
	}
}

// Wait polls a record fast at first and slowly later; the executors forget finished stages.
func TestPollBackoffAndCleanup(t *testing.T) {
	if d := pollDelay(0); d != 2*time.Millisecond {
		t.Errorf("pollDelay(0) = %s", d)
	}
	if d := pollDelay(50 * time.Millisecond); d != 2*time.Millisecond {
		t.Errorf("pollDelay(50ms) = %s", d)
	}
	if d := pollDelay(time.Second); d < 50*time.Millisecond || d > 100*time.Millisecond {
		t.Errorf("pollDelay(1s) = %s, want 50 to 100 ms", d)
	}

	f := newFixture(t)
	f.script(t, "PreFlight", "exit 0")
	svc := f.executor(t, kinds[0]).(*ServiceExecutor)
	ag := f.executor(t, kinds[1]).(*AgentExecutor)
	for i := range 5 {
		run(t, svc, req("s"+string(rune('0'+i)), events.PreFlight))
		run(t, ag, req("a"+string(rune('0'+i)), events.PreFlight))
	}
	eventually(t, "service executor forgets exited stage-execs", func() bool {
		svc.mu.Lock()
		defer svc.mu.Unlock()
		return len(svc.exited) == 0
	})
	ag.mu.Lock()
	n := len(ag.runs)
	ag.mu.Unlock()
	if n != 0 {
		t.Errorf("agent executor keeps %d finished runs", n)
	}
	if st, err := ag.Get(ExecID("a0", events.PreFlight)); err != nil || st.Outcome != events.OutcomeSucceeded {
		t.Errorf("finished run after cleanup: %+v, %v", st, err)
	}
}

func mustChmod(t *testing.T, p string, mode os.FileMode) {
	t.Helper()
	// os.Chmod takes the sticky bit as os.ModeSticky.
	m := mode.Perm()
	if mode&0o1000 != 0 {
		m |= os.ModeSticky
	}
	if err := os.Chmod(p, m); err != nil {
		t.Fatal(err)
	}
}
