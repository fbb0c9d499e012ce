package hooks

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvmctl/kvmctl/pkg/events"
)

// recJSON is a stage record as a file holds it, for run r and stage Maintenance.
func recJSON(id, state, extra string) []byte {
	return []byte(fmt.Sprintf(`{"id":%q,"run_id":"r","stage":"Maintenance","state":%q,"exit_code":0,"started_at":"2026-01-02T03:04:05Z","executor":"service","boot_id":"boot-1"%s}`,
		id, state, extra))
}

func writeMode(t testing.TB, path string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// stagesDir creates and returns f's stages directory.
func stagesDir(t testing.TB, f *fixture) string {
	t.Helper()
	dir := filepath.Join(f.state, "stages")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Every entry of stages/ that cannot be a record is set aside as <name>.corrupt when the
// executor starts, never fatal, and its stage counts as completed and failed so that it never
// runs: a directory, a symlink (never followed, even to a good record), garbage, an empty file,
// a record under another id's name, a record larger than any this agent writes.
func TestUnusableRecordsSetAside(t *testing.T) {
	for _, k := range kinds {
		t.Run(k.name, func(t *testing.T) {
			f := newFixture(t)
			counter := filepath.Join(f.tmp, "count")
			f.script(t, "Maintenance", "echo x >> "+counter)
			dir := stagesDir(t, f)
			id := func(run string) string { return ExecID(run, events.Maintenance) }
			if err := os.Mkdir(filepath.Join(dir, id("dir")+".json"), 0o700); err != nil {
				t.Fatal(err)
			}
			target := filepath.Join(f.tmp, "elsewhere.json")
			writeMode(t, target, recJSON(id("symlink"), "completed", `,"outcome":"succeeded"`), 0o600)
			if err := os.Symlink(target, filepath.Join(dir, id("symlink")+".json")); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(filepath.Join(f.tmp, "nowhere"), filepath.Join(dir, id("dangling")+".json")); err != nil {
				t.Fatal(err)
			}
			writeMode(t, filepath.Join(dir, id("garbage")+".json"), []byte("\x00garbage"), 0o600)
			writeMode(t, filepath.Join(dir, id("empty")+".json"), nil, 0o600)
			writeMode(t, filepath.Join(dir, id("renamed")+".json"), recJSON(id("other"), "completed", `,"outcome":"succeeded"`), 0o600)
			big := strings.Repeat("y", 2*maxRecordSize)
			writeMode(t, filepath.Join(dir, id("huge")+".json"), recJSON(id("huge"), "completed", `,"outcome":"succeeded","output":"`+big+`"`), 0o600)

			e := f.executor(t, k) // recovers: must not fail
			for _, run := range []string{"dir", "symlink", "dangling", "garbage", "empty", "renamed", "huge"} {
				st, err := e.Get(id(run))
				if err != nil || st.ID != id(run) || st.State != events.StageCompleted || st.Outcome != events.OutcomeFailed || st.Note != NoteRecordUnreadable {
					st.Output = ""
					t.Errorf("%s: Get = %+v, %v; want completed, failed, %q", run, st, err, NoteRecordUnreadable)
				}
				if _, err := os.Lstat(filepath.Join(dir, id(run)+".json.corrupt")); err != nil {
					t.Errorf("%s: not kept aside: %v", run, err)
				}
				r := req(run, events.Maintenance)
				if got, err := e.Start(context.Background(), r); err != nil || got != id(run) {
					t.Errorf("%s: Start = %s, %v", run, got, err)
				}
			}
			if b, err := os.ReadFile(target); err != nil || !strings.Contains(string(b), "succeeded") {
				t.Errorf("the symlink's target changed: %q, %v", b, err)
			}
			if exists(counter) {
				t.Error("a stage set aside ran")
			}
			// A second executor finds the replacements and the kept files, and nothing new to set aside.
			e2 := f.executor(t, k)
			if st, err := e2.Get(id("dir")); err != nil || st.Note != NoteRecordUnreadable {
				t.Errorf("after restart: %+v, %v", st, err)
			}
		})
	}
}

// Root reads a record of mode 000: it is used, not set aside. A name that is no execution id
// is not ours: it is left alone.
func TestReadableRecordsAndOtherNamesKept(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mode 000 is readable only by root")
	}
	f := newFixture(t)
	dir := stagesDir(t, f)
	id := ExecID("r", events.Maintenance)
	writeMode(t, filepath.Join(dir, id+".json"), recJSON(id, "completed", `,"outcome":"succeeded","output":"fine\n"`), 0)
	writeMode(t, filepath.Join(dir, "notes.json"), []byte("mine"), 0o600)
	writeMode(t, filepath.Join(dir, strings.ToUpper(id)+".json"), []byte("mine too"), 0o600)
	e := f.executor(t, kinds[0])
	if st, err := e.Get(id); err != nil || st.Outcome != events.OutcomeSucceeded || st.Output != "fine\n" {
		t.Errorf("mode 000 record: %+v, %v", st, err)
	}
	for name, want := range map[string]string{"notes.json": "mine", strings.ToUpper(id) + ".json": "mine too"} {
		if b, err := os.ReadFile(filepath.Join(dir, name)); err != nil || string(b) != want {
			t.Errorf("%s: %q, %v; want it left alone", name, b, err)
		}
	}
}

// A record holds at most the documented tail of the output (an older agent could write more),
// and the log of a stage whose runner died is read from its end, whatever its size.
func TestOutputBoundedWhenRead(t *testing.T) {
	f := newFixture(t)
	dir := stagesDir(t, f)
	long := ExecID("long", events.Maintenance)
	out := strings.Repeat("z", 3*MaxOutput) + "last line\n"
	writeMode(t, filepath.Join(dir, long+".json"), recJSON(long, "completed", `,"outcome":"failed","exit_code":3,"output":"`+strings.TrimSuffix(out, "\n")+`\n"`), 0o600)

	// A runner that has exited and a 40 MiB log.
	gone := ExecID("gone", events.Maintenance)
	pid, start := deadProcess(t)
	writeMode(t, filepath.Join(dir, gone+".json"), recJSON(gone, "running", ""), 0o600)
	writeMode(t, filepath.Join(dir, gone+".pid"), []byte(fmt.Sprintf(`{"pid":%d,"pid_start":%d}`, pid, start)), 0o600)
	logf, err := os.Create(filepath.Join(dir, gone+".log"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := []byte(strings.Repeat("w", 1<<20))
	for range 40 {
		if _, err := logf.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := logf.WriteString("\nthe runner's last words\n"); err != nil {
		t.Fatal(err)
	}
	logf.Close()

	for _, k := range kinds {
		e := f.executor(t, k)
		st, err := e.Get(long)
		if err != nil || len(st.Output) > MaxOutput || !strings.HasSuffix(st.Output, "last line\n") {
			t.Errorf("%s: record with %d bytes of output: %d bytes ending %q, %v", k.name, len(out), len(st.Output), st.Output[len(st.Output)-min(20, len(st.Output)):], err)
		}
	}
	e := f.executor(t, kinds[0])
	st, err := e.Get(gone)
	if err != nil || st.State != events.StageCompleted || len(st.Output) > MaxOutput || !strings.HasSuffix(st.Output, "the runner's last words\n") {
		t.Errorf("runner gone with a 40 MiB log: %s %s, %d bytes of output, %v", st.State, st.Note, len(st.Output), err)
	}
}

// deadProcess returns the pid and start time of a process that has exited and been reaped.
func deadProcess(t testing.TB) (int, uint64) {
	t.Helper()
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	start, ok := procStart(pid)
	if !ok {
		t.Fatal("no start time for a live child")
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	return pid, start
}

// A runner pid recorded without its start time cannot be told from a process that reused the
// pid: the stage does not stay running for as long as any process has that pid, it is settled
// as failed with a note that says why.
func TestRunnerPIDWithoutStartTime(t *testing.T) {
	f := newFixture(t)
	dir := stagesDir(t, f)
	inRecord, inFile := ExecID("in-record", events.Maintenance), ExecID("in-file", events.Maintenance)
	// This test's own pid: it lives as long as the test.
	writeMode(t, filepath.Join(dir, inRecord+".json"), recJSON(inRecord, "running", fmt.Sprintf(`,"pid":%d`, os.Getpid())), 0o600)
	writeMode(t, filepath.Join(dir, inFile+".json"), recJSON(inFile, "running", ""), 0o600)
	writeMode(t, filepath.Join(dir, inFile+".pid"), []byte(fmt.Sprintf(`{"pid":%d}`, os.Getpid())), 0o600)
	e := f.executor(t, kinds[0])
	for _, id := range []string{inRecord, inFile} {
		if st, err := e.Get(id); err != nil || st.State != events.StageCompleted || st.Outcome != events.OutcomeFailed || st.Note != NoteRunnerUnverifiable {
			t.Errorf("Get(%s) = %+v, %v; want completed, failed, %q", id, st, err, NoteRunnerUnverifiable)
		}
	}
}
