package cli

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvmctl/kvmctl/pkg/agent"
	"github.com/kvmctl/kvmctl/pkg/cmdutil"
	"github.com/kvmctl/kvmctl/pkg/iostreams"
	"github.com/kvmctl/kvmctl/pkg/pki"
	"github.com/kvmctl/kvmctl/pkg/virt"
)

// hooksFleet is a state file with host h1 whose agent runs in-process (agent executor) over
// mutual TLS on 127.0.0.1, with the given stage scripts and modes.
func hooksFleet(t *testing.T, scripts map[string]string, modes map[string]os.FileMode) (statePath string) {
	t.Helper()
	dir := t.TempDir()
	statePath = filepath.Join(dir, "state", "state.db")
	kvmctl := func(args ...string) {
		t.Helper()
		if code, out, errOut := runKvmctl(t, statePath, args...); code != 0 {
			t.Fatalf("kvmctl %q = %d\n%s%s", args, code, out, errOut)
		}
	}
	kvmctl("init")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"zone", "add", "z1"}, {"pod", "add", "p1", "--zone", "z1"},
		{"cluster", "add", "c1", "--pod", "p1"}, {"host", "add", "h1", "--cluster", "c1", "--address", ln.Addr().String()}} {
		kvmctl(args...)
	}
	agentDir := filepath.Join(dir, "h1")
	if _, err := pki.IssueAgent(filepath.Join(dir, "state", "pki"), filepath.Join(agentDir, "tls"), "h1", []string{"127.0.0.1"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	hooksDir := filepath.Join(agentDir, "hooks")
	if err := os.MkdirAll(hooksDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range scripts {
		mode := os.FileMode(0o755)
		if m, ok := modes[name]; ok {
			mode = m
		}
		p := filepath.Join(hooksDir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(agentDir, "boot_id"), []byte("boot-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := agent.DefaultConfig()
	cfg.HostName = "h1"
	cfg.TLSCert = filepath.Join(agentDir, "tls", pki.AgentCertFile)
	cfg.TLSKey = filepath.Join(agentDir, "tls", pki.AgentKeyFile)
	cfg.TLSCA = filepath.Join(agentDir, "tls", pki.CACertFile)
	cfg.StateDir = filepath.Join(agentDir, "state")
	cfg.HooksDir = hooksDir
	cfg.BootIDFile = filepath.Join(agentDir, "boot_id")
	// The test binary has no stage-exec subcommand: run scripts inside the agent.
	cfg.ServiceExecutorDisabled = true
	a, err := agent.New(cfg, virt.NewFake(virt.Capacity{CPUs: 4, MemoryMiB: 4096}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return statePath
}

func runKvmctl(t *testing.T, statePath string, args ...string) (int, string, string) {
	t.Helper()
	ios, _, out, errOut := iostreams.Test()
	code := Run(append([]string{"--state", statePath}, args...), ios)
	return code, out.String(), errOut.String()
}

func TestHooksList(t *testing.T) {
	st := hooksFleet(t, map[string]string{"PreFlight.sh": "exit 0", "PostMaintenance": "exit 0"},
		map[string]os.FileMode{"PostMaintenance": 0o777})
	code, out, errOut := runKvmctl(t, st, "hooks", "list", "h1")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 {
		t.Fatalf("want 4 lines:\n%s", out)
	}
	for i, want := range []string{"PreFlight\t/.*/PreFlight.sh\tpresent", "PreMaintenance\t-\tmissing", "Maintenance\t-\tmissing",
		"PostMaintenance\t/.*/PostMaintenance\trefused: writable by group or others"} {
		stage, rest, _ := strings.Cut(want, "\t")
		if !strings.HasPrefix(lines[i], stage+"\t") || !strings.Contains(lines[i], rest[strings.LastIndex(rest, "\t")+1:]) {
			t.Errorf("line %d = %q, want like %q", i, lines[i], want)
		}
	}
	code, out, _ = runKvmctl(t, st, "--json", "hooks", "list", "h1")
	var items []map[string]any
	if err := json.Unmarshal([]byte(out), &items); code != 0 || err != nil || len(items) != 4 ||
		items[3]["status"] != "refused" || items[1]["status"] != "missing" || items[0]["status"] != "present" {
		t.Errorf("--json: %d %v\n%s", code, err, out)
	}
	if code, _, errOut := runKvmctl(t, st, "hooks", "list", "nope"); code != cmdutil.ExitRefused || !strings.Contains(errOut, `no host "nope"`) {
		t.Errorf("unknown host: %d %s", code, errOut)
	}
}

func TestHooksRun(t *testing.T) {
	st := hooksFleet(t, map[string]string{
		"PreFlight.sh":       `echo "args: $# [$1] [$2]"; echo "stage $KVM_STAGE run $KVM_RUN_ID"`,
		"PreMaintenance.sh":  "echo no need; exit 70",
		"Maintenance.sh":     "echo disk full >&2; exit 4",
		"PostMaintenance.sh": "exit 0",
	}, map[string]os.FileMode{"PostMaintenance.sh": 0o775})

	code, out, errOut := runKvmctl(t, st, "hooks", "run", "h1", "PreFlight", "--payload", `a "b c"`, "--timeout", "10")
	if code != 0 {
		t.Fatalf("exit %d: %s%s", code, out, errOut)
	}
	for _, want := range []string{"h1 PreFlight: succeeded (exit code 0) in ", "output:\nargs: 2 [a] [b c]\nstage PreFlight run manual-"} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(errOut, "running PreFlight on h1") {
		t.Errorf("stderr = %q", errOut)
	}

	code, out, _ = runKvmctl(t, st, "--json", "hooks", "run", "h1", "PreMaintenance")
	var res map[string]any
	if err := json.Unmarshal([]byte(out), &res); code != 0 || err != nil {
		t.Fatalf("skipped: exit %d, %v\n%s", code, err, out)
	}
	for k, want := range map[string]any{"host": "h1", "stage": "PreMaintenance", "outcome": "skipped", "exit_code": 70.0, "output": "no need\n"} {
		if res[k] != want {
			t.Errorf("%s = %v, want %v", k, res[k], want)
		}
	}
	for _, k := range []string{"started_at", "ended_at"} {
		if _, ok := res[k]; !ok {
			t.Errorf("--json lacks %s: %s", k, out)
		}
	}

	code, out, _ = runKvmctl(t, st, "hooks", "run", "h1", "Maintenance")
	if code != cmdutil.ExitFailed || !strings.Contains(out, "failed (exit code 4)") || !strings.Contains(out, "disk full") {
		t.Errorf("failed script: exit %d\n%s", code, out)
	}
	code, _, errOut = runKvmctl(t, st, "hooks", "run", "h1", "PostMaintenance")
	if code != cmdutil.ExitRefused || !strings.Contains(errOut, "writable by group or others") {
		t.Errorf("refused script: exit %d %s", code, errOut)
	}
	for _, args := range [][]string{{"h1", "Preflight"}, {"nope", "PreFlight"}, {"h1", "PreFlight", "--timeout", "0"},
		{"h1", "PreFlight", "--payload", "a; b"}, {"h1"}} {
		if code, _, errOut := runKvmctl(t, st, append([]string{"hooks", "run"}, args...)...); code != cmdutil.ExitRefused {
			t.Errorf("hooks run %q = %d %s, want %d", args, code, errOut, cmdutil.ExitRefused)
		}
	}
}

func TestHooksRunNoScript(t *testing.T) {
	st := hooksFleet(t, nil, nil)
	code, out, _ := runKvmctl(t, st, "--json", "hooks", "run", "h1", "Maintenance")
	var res map[string]any
	if err := json.Unmarshal([]byte(out), &res); code != cmdutil.ExitFailed || err != nil || res["outcome"] != "not_found" {
		t.Errorf("no script: exit %d %v\n%s", code, err, out)
	}
}
