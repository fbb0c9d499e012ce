package cli

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
	bolt "go.etcd.io/bbolt"

	"github.com/kvmctl/kvmctl/cmd/kvmagent/agentcli"
	"github.com/kvmctl/kvmctl/pkg/hooks"
	"github.com/kvmctl/kvmctl/pkg/iostreams"
)

// scriptCommands are the programs the scripts in testdata/script run with `exec NAME`: the test
// binary re-executes itself as each of them. Add a program here to make it available. They lie
// side by side in one directory on PATH, as installed: a lab's kvmagent (the e2e tests') finds
// its stage runner, kvmagent-stage, beside it.
var scriptCommands = map[string]func(){
	"kvmctl":              func() { os.Exit(Run(os.Args[1:], iostreams.System())) },
	"kvmagent":            func() { os.Exit(agentcli.Run(os.Args[1:], os.Stdout, os.Stderr)) },
	hooks.StageRunnerName: func() { os.Exit(hooks.StageExecMain(os.Args[1:])) },
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
			// Control characters for arguments that must be refused (scripts cannot spell them).
			env.Setenv("TAB", "\t")
			env.Setenv("ESC", "\x1b")
			env.Setenv("NEL", "\u0085")
			// Under -race every program that exits 0 sleeps 1s by default (atexit_sleep_ms).
			env.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"exitcode": cmdExitCode,
			"jsonsub":  cmdJSONSub,
			"mkbolt":   cmdMkBolt,
			"damage":   cmdDamage,
			"garble":   cmdGarble,
			"mode":     cmdMode,
			"snapshot": cmdSnapshot,
			"noagents": cmdNoAgents,
			"sink":     cmdSink,
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

// cmdJSONSub runs `jsonsub [-extra] FILE WANT`: FILE (or stdout/stderr) must hold JSON that
// contains WANT's JSON: every key of a WANT object is in FILE's object with a matching value,
// arrays have the same length and match element by element, other values are equal. Keys that
// only FILE has are ignored, so a test does not break when a later change adds a field. With
// -extra, FILE's arrays may also hold more elements: WANT's must match some of them, in order.
func cmdJSONSub(ts *testscript.TestScript, neg bool, args []string) {
	extra := len(args) > 0 && args[0] == "-extra"
	if extra {
		args = args[1:]
	}
	if len(args) != 2 {
		ts.Fatalf("usage: jsonsub [-extra] file want.json")
	}
	var got, want any
	if err := json.Unmarshal([]byte(ts.ReadFile(args[0])), &got); err != nil {
		ts.Fatalf("jsonsub: %s: %v", args[0], err)
	}
	if err := json.Unmarshal([]byte(ts.ReadFile(args[1])), &want); err != nil {
		ts.Fatalf("jsonsub: %s: %v", args[1], err)
	}
	err := jsonContains("$", got, want, extra)
	switch {
	case err != nil && !neg:
		ts.Fatalf("%s does not contain %s: %v", args[0], args[1], err)
	case err == nil && neg:
		ts.Fatalf("%s contains %s", args[0], args[1])
	}
}

func jsonContains(path string, got, want any, extra bool) error {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: got %v, want an object", path, got)
		}
		keys := make([]string, 0, len(w))
		for k := range w {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			gv, ok := g[k]
			if !ok {
				return fmt.Errorf("%s: no key %q", path, k)
			}
			if err := jsonContains(path+"."+k, gv, w[k], extra); err != nil {
				return err
			}
		}
		return nil
	case []any:
		g, ok := got.([]any)
		if !ok {
			return fmt.Errorf("%s: got %v, want an array", path, got)
		}
		if !extra {
			if len(g) != len(w) {
				return fmt.Errorf("%s: got %d elements, want %d", path, len(g), len(w))
			}
			for i := range w {
				if err := jsonContains(fmt.Sprintf("%s[%d]", path, i), g[i], w[i], extra); err != nil {
					return err
				}
			}
			return nil
		}
		i := 0
		for j := range w {
			for i < len(g) && jsonContains("", g[i], w[j], extra) != nil {
				i++
			}
			if i == len(g) {
				return fmt.Errorf("%s: no element (after those matched before) contains %v", path, w[j])
			}
			i++
		}
		return nil
	default:
		if !reflect.DeepEqual(got, want) {
			return fmt.Errorf("%s: got %#v, want %#v", path, got, want)
		}
		return nil
	}
}

// cmdMkBolt runs `mkbolt FILE [BUCKET/KEY=VALUE...]`: it creates FILE as a bbolt database that
// holds the given keys, to feed kvmctl files that are bbolt but not (current) kvmctl state.
func cmdMkBolt(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 1 {
		ts.Fatalf("usage: mkbolt file [bucket/key=value...]")
	}
	db, err := bolt.Open(ts.MkAbs(args[0]), 0o600, nil)
	ts.Check(err)
	defer db.Close()
	ts.Check(db.Update(func(tx *bolt.Tx) error {
		for _, kv := range args[1:] {
			bk, value, ok := strings.Cut(kv, "=")
			bucket, key, ok2 := strings.Cut(bk, "/")
			if !ok || !ok2 {
				return fmt.Errorf("mkbolt: want bucket/key=value, not %q", kv)
			}
			b, err := tx.CreateBucketIfNotExists([]byte(bucket))
			if err != nil {
				return err
			}
			if err := b.Put([]byte(key), []byte(value)); err != nil {
				return err
			}
		}
		return nil
	}))
	ts.Check(db.Close())
}

// cmdDamage runs `damage FILE truncate N|half`, `damage FILE flip OFFSET` (one byte XORed with
// 0xa5) or `damage FILE flip root` (the type byte of the page the newer meta page names as the
// root bucket's), as a disk or a careless copy would damage a state file.
func cmdDamage(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 3 {
		ts.Fatalf("usage: damage file truncate N|half, or damage file flip OFFSET|root")
	}
	path := ts.MkAbs(args[0])
	data, err := os.ReadFile(path)
	ts.Check(err)
	switch args[1] {
	case "truncate":
		n := len(data) / 2
		if args[2] != "half" {
			n, err = strconv.Atoi(args[2])
			ts.Check(err)
		}
		data = data[:n]
	case "flip":
		off, err := strconv.Atoi(args[2])
		if args[2] == "root" {
			// bbolt's meta pages are 0 and 1 (page size 4096 here): after the 16-byte page
			// header, magic, version, page size and flags (16 bytes), then the root bucket's
			// page id; the transaction id is 32 bytes further.
			meta := func(i int) (root, txid uint64) {
				b := data[i*4096+16:]
				return binary.LittleEndian.Uint64(b[16:]), binary.LittleEndian.Uint64(b[48:])
			}
			root, tx0 := meta(0)
			if r1, tx1 := meta(1); tx1 > tx0 {
				root = r1
			}
			off, err = int(root)*4096+8, nil
		}
		ts.Check(err)
		data[off] ^= 0xa5
	default:
		ts.Fatalf("damage: unknown kind %q", args[1])
	}
	ts.Check(os.WriteFile(path, data, 0o600))
}

// cmdGarble runs `garble FILE TEXT`: the first occurrence of TEXT in FILE becomes `"}{` and
// filler, so the JSON record holding it no longer decodes while the file's pages stay sound.
func cmdGarble(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: garble file text")
	}
	path := ts.MkAbs(args[0])
	data, err := os.ReadFile(path)
	ts.Check(err)
	i := bytes.Index(data, []byte(args[1]))
	if i < 0 {
		ts.Fatalf("garble: %q not in %s", args[1], args[0])
	}
	copy(data[i:], append([]byte(`"}{`), bytes.Repeat([]byte("x"), len(args[1])-3)...))
	ts.Check(os.WriteFile(path, data, 0o600))
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
	{"--json", "bmc", "list"},
	{"--json", "notify", "list"},
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

// cmdNoAgents runs `noagents DIR`: no process on the machine may still run with DIR in its
// command line (a lab's agents are started with their config file, which lives in DIR).
func cmdNoAgents(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: noagents DIR")
	}
	dir := ts.MkAbs(args[0])
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		raw, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(raw), dir) {
			continue
		}
		stat, _ := os.ReadFile(strings.TrimSuffix(p, "cmdline") + "stat")
		if i := strings.LastIndexByte(string(stat), ')'); i > 0 && i+2 < len(stat) && (stat[i+2] == 'Z' || stat[i+2] == 'X') {
			continue // a zombie is dead; its parent has not reaped it yet
		}
		ts.Fatalf("a process still runs from %s: %s (%s)", dir, strings.ReplaceAll(string(raw), "\x00", " "), p)
	}
}
