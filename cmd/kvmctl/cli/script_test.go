package cli

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/kvmctl/kvmctl/pkg/iostreams"
)

// scriptCommands are the programs the scripts in testdata/script run with `exec NAME`: the test
// binary re-executes itself as each of them. Add a program here to make it available.
var scriptCommands = map[string]func(){
	"kvmctl": func() { os.Exit(Run(os.Args[1:], iostreams.System())) },
}

func TestMain(m *testing.M) {
	testscript.Main(m, scriptCommands)
}

// TestScripts runs the end-to-end scripts of testdata/script. Every script starts with
// KVMCTL_STATE=$WORK/state/state.db, which does not exist until the script runs `kvmctl init`.
func TestScripts(t *testing.T) {
	t.Parallel()
	testscript.Run(t, testscript.Params{
		Dir:                 "testdata/script",
		RequireExplicitExec: true,
		RequireUniqueNames:  true,
		Setup: func(env *testscript.Env) error {
			env.Setenv("KVMCTL_STATE", filepath.Join(env.WorkDir, "state", "state.db"))
			env.Setenv("HOME", env.WorkDir)
			env.Setenv("XDG_STATE_HOME", "")
			env.Setenv("NO_COLOR", "1")
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"exitcode": cmdExitCode,
			"mode":     cmdMode,
			"snapshot": cmdSnapshot,
		},
	})
}

// cmdExitCode runs `exitcode N PROG ARGS...`: PROG (looked up in the script's PATH, so a program
// of scriptCommands works) must exit with code N. Its stdout and stderr are kept for the
// `stdout` and `stderr` commands that follow, and the `stdin` command feeds it as it feeds exec.
func cmdExitCode(ts *testscript.TestScript, neg bool, args []string) {
	if neg {
		ts.Fatalf("unsupported: ! exitcode (give the code that is expected)")
	}
	if len(args) < 2 {
		ts.Fatalf("usage: exitcode N program [args...]")
	}
	want, err := strconv.Atoi(args[0])
	if err != nil {
		ts.Fatalf("exitcode: bad code %q: %v", args[0], err)
	}
	got := 0
	if err := ts.Exec(args[1], args[2:]...); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			ts.Fatalf("exitcode: %s did not run: %v", args[1], err)
		}
		got = ee.ExitCode()
	}
	if got != want {
		ts.Fatalf("%s exited with code %d, want %d", args[1], got, want)
	}
}

// cmdMode runs `mode FILE PERM`: FILE's permission bits must be PERM (octal, e.g. 0600).
func cmdMode(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 {
		ts.Fatalf("usage: mode file perm")
	}
	want, err := strconv.ParseUint(args[1], 8, 32)
	if err != nil {
		ts.Fatalf("mode: bad permission %q: %v", args[1], err)
	}
	fi, err := os.Stat(ts.MkAbs(args[0]))
	ts.Check(err)
	got := fi.Mode().Perm()
	if (got == os.FileMode(want)) == neg {
		if neg {
			ts.Fatalf("%s has mode %#o, want anything else", args[0], got)
		}
		ts.Fatalf("%s has mode %#o, want %#o", args[0], got, want)
	}
}

// snapshotCommands read everything an operator can change through the CLI; two equal
// snapshots mean the state did not change.
var snapshotCommands = [][]string{
	{"inventory", "export"},
	{"--json", "zone", "list"},
	{"--json", "pod", "list"},
	{"--json", "cluster", "list"},
	{"--json", "host", "list"},
	{"--json", "config", "list"},
}

// cmdSnapshot runs `snapshot FILE [kvmctl flags...]`: it writes to FILE what the read-only
// kvmctl commands of snapshotCommands print, each run with the extra flags (e.g. --state X).
// Compare two snapshots with cmp to check that a refused command changed nothing.
func cmdSnapshot(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 1 {
		ts.Fatalf("usage: snapshot file [kvmctl flags...]")
	}
	var buf strings.Builder
	for _, c := range snapshotCommands {
		argv := append(append([]string{}, args[1:]...), c...)
		if err := ts.Exec("kvmctl", argv...); err != nil {
			ts.Fatalf("snapshot: kvmctl %s: %v\n%s", strings.Join(argv, " "), err, ts.ReadFile("stderr"))
		}
		fmt.Fprintf(&buf, "# kvmctl %s\n%s", strings.Join(c, " "), ts.ReadFile("stdout"))
	}
	ts.Check(os.WriteFile(ts.MkAbs(args[0]), []byte(buf.String()), 0o644))
}
