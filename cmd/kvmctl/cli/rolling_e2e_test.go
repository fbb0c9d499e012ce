package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/iostreams"
	"github.com/kvmctl/kvmctl/pkg/lab"
	"github.com/kvmctl/kvmctl/pkg/orchestrate"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// The end-to-end tests of rolling maintenance (issue 6): each case brings up a lab of its own
// (kvmagent processes on random loopback ports, libvirt's test driver), rewrites some stage
// scripts, runs kvmctl in-process or as a real process, and checks the result, the inventory,
// the agents, what every script logged and the run's journal.

var stageNames = []string{"PreFlight", "PreMaintenance", "Maintenance", "PostMaintenance"}

// rollingLab is one lab and the helpers the cases use on it.
type rollingLab struct {
	t     *testing.T
	m     *lab.Manifest
	state string
}

var goraceOnce sync.Once

// newRollingLab brings up a lab of hosts hosts in clusters clusters with vms VMs each, with
// a 1 s ping interval and every stage script replaced by one that logs its stage and
// arguments to the host's hooks.log ("STAGE NARGS [arg]...") and succeeds. opts adjust the
// lab's options.
func newRollingLab(t *testing.T, hosts, clusters, vms int, opts ...func(*lab.Options)) *rollingLab {
	t.Helper()
	goraceOnce.Do(func() {
		// Under -race every program that exits sleeps 1s by default: agents, kvmctl processes.
		os.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	})
	agent, err := exec.LookPath("kvmagent")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	o := lab.Options{Dir: filepath.Join(t.TempDir(), "lab"), Hosts: hosts, Clusters: clusters, VMs: vms, Agent: agent}
	for _, opt := range opts {
		opt(&o)
	}
	m, err := lab.Up(ctx, o)
	if m != nil {
		t.Cleanup(func() {
			// Stop the agents together and with a short grace: an agent waits up to 5 s on a
			// connection that this process's in-process kvmctl opened but never used (net/http
			// counts a new connection idle only after 5 s), and the lab is thrown away anyway.
			var wg sync.WaitGroup
			for i := range m.Hosts {
				wg.Go(func() { _ = lab.StopAgent(&m.Hosts[i], 200*time.Millisecond) })
			}
			wg.Wait()
			if err := lab.Down(m, false); err != nil {
				t.Errorf("lab down: %v", err)
			}
		})
	}
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	l := &rollingLab{t: t, m: m, state: m.StatePath()}
	for _, h := range m.Hosts {
		for _, s := range stageNames {
			l.hook(h.Name, s, "echo "+s+" ok")
		}
	}
	l.ok("config", "set", "kvm.rolling.maintenance.ping.interval", "1")
	return l
}

// kvmctl runs kvmctl in-process on the lab's state file.
func (l *rollingLab) kvmctl(args ...string) (code int, stdout, stderr string) {
	ios, _, out, errOut := iostreams.Test()
	code = Run(append([]string{"--state", l.state}, args...), ios)
	return code, out.String(), errOut.String()
}

// ok runs kvmctl and fails the test unless it exits 0; it returns stdout.
func (l *rollingLab) ok(args ...string) string {
	l.t.Helper()
	code, out, errOut := l.kvmctl(args...)
	if code != 0 {
		l.t.Fatalf("kvmctl %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// jsonOut runs kvmctl --json ARGS, which must exit 0, and decodes its stdout into v.
func (l *rollingLab) jsonOut(v any, args ...string) {
	l.t.Helper()
	out := l.ok(append([]string{"--json"}, args...)...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		l.t.Fatalf("kvmctl --json %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// start runs `kvmctl --json rolling start ARGS` and decodes the result.
func (l *rollingLab) start(args ...string) (int, orchestrate.RunResult, string) {
	l.t.Helper()
	code, out, errOut := l.kvmctl(append([]string{"--json", "rolling", "start"}, args...)...)
	var res orchestrate.RunResult
	if code == 0 || code == 1 {
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			l.t.Fatalf("rolling start %s: exit %d, stdout is not a result: %v\n%s%s", strings.Join(args, " "), code, err, out, errOut)
		}
	}
	return code, res, errOut
}

// hook writes the stage script of host: it logs its stage and arguments, then runs body.
func (l *rollingLab) hook(host, stage, body string) {
	l.t.Helper()
	h := l.host(host)
	script := fmt.Sprintf("#!/bin/sh\n{ printf '%%s %%s' \"$KVM_STAGE\" \"$#\"; printf ' [%%s]' \"$@\"; echo; } >> %s\n%s\n",
		filepath.Join(h.Dir, "hooks.log"), body)
	p := filepath.Join(h.Dir, "hooks", stage+".sh")
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		l.t.Fatal(err)
	}
	if err := os.Chmod(p, 0o755); err != nil {
		l.t.Fatal(err)
	}
}

func (l *rollingLab) host(name string) *lab.HostManifest {
	l.t.Helper()
	h, err := l.m.Host(name)
	if err != nil {
		l.t.Fatal(err)
	}
	return h
}

// logLines is the hooks.log of host, one line per script run.
func (l *rollingLab) logLines(host string) []string {
	l.t.Helper()
	raw, err := os.ReadFile(filepath.Join(l.host(host).Dir, "hooks.log"))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		l.t.Fatal(err)
	}
	return strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
}

// stagesRan is the stages host's scripts logged, in order.
func (l *rollingLab) stagesRan(host string) []string {
	var out []string
	for _, line := range l.logLines(host) {
		stage, _, _ := strings.Cut(line, " ")
		out = append(out, stage)
	}
	return out
}

// hostNames are the lab's hosts, in order, except those given.
func (l *rollingLab) hostNames(except ...string) []string {
	var out []string
	for _, h := range l.m.Hosts {
		if !slices.Contains(except, h.Name) {
			out = append(out, h.Name)
		}
	}
	return out
}

func (l *rollingLab) resourceStates(kind string) map[string]string {
	l.t.Helper()
	var rows []struct {
		Name          string `json:"name"`
		ResourceState string `json:"resource_state"`
	}
	l.jsonOut(&rows, kind, "list")
	out := map[string]string{}
	for _, r := range rows {
		out[r.Name] = r.ResourceState
	}
	return out
}

// assertRestored checks that every cluster and host is Enabled and every agent is Up (no host
// left in maintenance, on kvmctl's side or the agent's).
func (l *rollingLab) assertRestored() {
	l.t.Helper()
	for name, st := range l.resourceStates("cluster") {
		if st != state.Enabled {
			l.t.Errorf("cluster %s is %s, want Enabled", name, st)
		}
	}
	var rows []struct {
		Name          string `json:"name"`
		ResourceState string `json:"resource_state"`
		AgentState    string `json:"agent_state"`
	}
	l.jsonOut(&rows, "host", "status")
	if len(rows) != len(l.m.Hosts) {
		l.t.Errorf("host status lists %d hosts, want %d", len(rows), len(l.m.Hosts))
	}
	for _, r := range rows {
		if r.ResourceState != state.Enabled || r.AgentState != "Up" {
			l.t.Errorf("host %s: resource_state %q, agent_state %q; want Enabled and Up", r.Name, r.ResourceState, r.AgentState)
		}
	}
}

// journal reads the events of run id from the state file.
func (l *rollingLab) journal(id string) []events.Event {
	l.t.Helper()
	var j []events.Event
	if err := state.New(l.state).View(func(tx state.Tx) (err error) { j, err = orchestrate.Journal(tx, id); return err }); err != nil {
		l.t.Fatal(err)
	}
	if len(j) == 0 {
		l.t.Fatalf("run %s has no journal", id)
	}
	return j
}

type rollingStatus struct {
	Run        orchestrate.Run       `json:"run"`
	Result     orchestrate.RunResult `json:"result"`
	OwnerAlive bool                  `json:"owner_alive"`
}

func (l *rollingLab) status(id string) rollingStatus {
	l.t.Helper()
	var st rollingStatus
	l.jsonOut(&st, "rolling", "status", id)
	return st
}

func (l *rollingLab) runCount() int {
	l.t.Helper()
	var runs []orchestrate.RunResult
	l.jsonOut(&runs, "rolling", "list")
	return len(runs)
}

func names[T any](xs []T, name func(T) string) []string {
	out := []string{}
	for _, x := range xs {
		out = append(out, name(x))
	}
	sort.Strings(out)
	return out
}

func updatedHosts(res orchestrate.RunResult) []string {
	return names(res.HostsUpdated, func(h orchestrate.HostUpdated) string { return h.Host })
}

func skippedHosts(res orchestrate.RunResult) map[string]string {
	out := map[string]string{}
	for _, h := range res.HostsSkipped {
		out[h.Host] = h.Reason
	}
	return out
}

// wantResult checks exit code, success, updated hosts and skipped hosts (by reason substring).
func wantResult(t *testing.T, code int, res orchestrate.RunResult, errOut string, wantCode int, updated []string, skipped map[string]string) {
	t.Helper()
	if code != wantCode || res.Success != (wantCode == 0) {
		t.Fatalf("exit %d, success %v (state %s: %s); want exit %d\n%s", code, res.Success, res.State, res.Details, wantCode, errOut)
	}
	if got := updatedHosts(res); !slices.Equal(got, updated) {
		t.Errorf("hosts_updated = %v, want %v (details: %s)", got, updated, res.Details)
	}
	got := skippedHosts(res)
	if len(got) != len(skipped) {
		t.Errorf("hosts_skipped = %v, want %v", got, skipped)
	}
	for h, reason := range skipped {
		if !strings.Contains(got[h], reason) {
			t.Errorf("host %s skipped with reason %q, want one with %q", h, got[h], reason)
		}
	}
}

// hasEvent reports whether j holds an event of type typ (and, when given, of host and of stage
// or step).
func hasEvent(j []events.Event, typ events.Type, host, stageOrStep string) bool {
	for _, e := range j {
		if e.Type == typ && (host == "" || e.Host == host) && (stageOrStep == "" || string(e.Stage) == stageOrStep || string(e.Step) == stageOrStep) {
			return true
		}
	}
	return false
}

// bgKvmctl is kvmctl running as a real process in the background.
type bgKvmctl struct {
	cmd          *exec.Cmd
	done         chan struct{}
	err          error
	stdout, errb bytes.Buffer
}

func (l *rollingLab) startBackground(args ...string) *bgKvmctl {
	l.t.Helper()
	path, err := exec.LookPath("kvmctl")
	if err != nil {
		l.t.Fatal(err)
	}
	b := &bgKvmctl{done: make(chan struct{})}
	b.cmd = exec.Command(path, append([]string{"--state", l.state}, args...)...)
	b.cmd.Stdout, b.cmd.Stderr = &b.stdout, &b.errb
	if err := b.cmd.Start(); err != nil {
		l.t.Fatal(err)
	}
	go func() { b.err = b.cmd.Wait(); close(b.done) }()
	l.t.Cleanup(func() {
		_ = b.cmd.Process.Kill()
		<-b.done
	})
	return b
}

func (b *bgKvmctl) exited() bool {
	select {
	case <-b.done:
		return true
	default:
		return false
	}
}

// wait waits for the process to exit and returns its exit code.
func (b *bgKvmctl) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-b.done:
	case <-time.After(d):
		t.Fatalf("kvmctl still runs after %s\n%s", d, b.errb.String())
	}
	if b.err == nil {
		return 0
	}
	if ee, ok := b.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	t.Fatalf("kvmctl: %v", b.err)
	return -1
}

// blockHook makes host's stage script wait until the returned release function is called
// (or the test ends), then run the lines then.
func (l *rollingLab) blockHook(host, stage string, then ...string) (release func()) {
	l.t.Helper()
	flag := filepath.Join(l.t.TempDir(), "release-"+host+"-"+stage)
	l.hook(host, stage, fmt.Sprintf("while [ ! -e %s ]; do sleep 0.05; done\necho released\n%s", flag, strings.Join(then, "\n")))
	var once sync.Once
	release = func() {
		once.Do(func() {
			if err := os.WriteFile(flag, nil, 0o644); err != nil {
				l.t.Error(err)
			}
		})
	}
	l.t.Cleanup(release)
	return release
}

// waitStageRunning polls `rolling status --json` (the newest run, as another shell would) until
// host's stage is running with an execution id, and returns the run's status.
func (l *rollingLab) waitStageRunning(bg *bgKvmctl, host, stage string) rollingStatus {
	l.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		code, out, _ := l.kvmctl("--json", "rolling", "status")
		if code == 0 {
			var st rollingStatus
			if err := json.Unmarshal([]byte(out), &st); err != nil {
				l.t.Fatalf("rolling status --json: %v\n%s", err, out)
			}
			if h := st.Run.Host(host); h != nil {
				if rec := h.Stages[events.Stage(stage)]; rec != nil && rec.State == "running" && rec.ExecID != "" {
					return st
				}
			}
		}
		if bg != nil && bg.exited() {
			l.t.Fatalf("kvmctl exited before %s ran %s: %v\n%s%s", host, stage, bg.err, bg.stdout.String(), bg.errb.String())
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("%s never showed %s running: last status\n%s", host, stage, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// killDuringMaintenance starts `rolling start --cluster c1` as a real process whose Maintenance
// script on h1 blocks, waits until that stage runs, SIGKILLs kvmctl and checks that the run is
// shown running with its kvmctl gone. It returns the run id and the script's release.
func (l *rollingLab) killDuringMaintenance() (string, func()) {
	l.t.Helper()
	release := l.blockHook("h1", "Maintenance")
	bg := l.startBackground("rolling", "start", "--cluster", "c1", "--timeout", "60")
	st := l.waitStageRunning(bg, "h1", "Maintenance")
	if err := bg.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		l.t.Fatal(err)
	}
	bg.wait(l.t, 10*time.Second)
	id := st.Run.ID
	after := l.status(id)
	if after.Run.State != events.RunRunning || after.OwnerAlive {
		l.t.Fatalf("after SIGKILL run %s is %s, owner_alive %v; want running with its owner gone", id, after.Run.State, after.OwnerAlive)
	}
	if out := l.ok("rolling", "status", id); !strings.Contains(out, "running (its kvmctl, pid") || !strings.Contains(out, "is gone") {
		l.t.Errorf("rolling status does not say the run's kvmctl is gone:\n%s", out)
	}
	if l.resourceStates("cluster")["c1"] != state.Disabled {
		l.t.Errorf("cluster c1 is not disabled while the killed run held it")
	}
	if l.resourceStates("host")["h1"] != state.Maintenance {
		l.t.Errorf("h1 is %s, want Maintenance while its Maintenance script runs", l.resourceStates("host")["h1"])
	}
	return id, release
}

func countStage(lines []string, stage string) int {
	n := 0
	for _, line := range lines {
		if s, _, _ := strings.Cut(line, " "); s == stage {
			n++
		}
	}
	return n
}

func TestRollingE2E(t *testing.T) {
	t.Parallel()

	t.Run("AllStagesOK", func(t *testing.T) {
		t.Parallel()
		l := newRollingLab(t, 3, 1, 1)
		code, res, errOut := l.start("--cluster", "c1", "--timeout", "10")
		wantResult(t, code, res, errOut, 0, []string{"h1", "h2", "h3"}, nil)
		if res.State != events.RunSucceeded {
			t.Errorf("state %q, want %q", res.State, events.RunSucceeded)
		}
		for _, h := range l.hostNames() {
			if got := l.stagesRan(h); !slices.Equal(got, stageNames) {
				t.Errorf("%s ran %v, want %v", h, got, stageNames)
			}
		}
		l.assertRestored()
		j := l.journal(res.RunID)
		if !hasEvent(j, events.ClusterDisabled, "", "") || !hasEvent(j, events.ClusterEnabled, "", "") {
			t.Errorf("the journal does not show c1 disabled then enabled")
		}
		// Hosts one at a time: each host's maintenance ends before the next one's begins.
		var order []string
		for _, e := range j {
			if e.Type == events.HostStep && (e.Step == events.StepPrepared || e.Step == events.StepLeftMaintenance) {
				order = append(order, e.Host+":"+string(e.Step))
			}
		}
		want := []string{"h1:prepare_for_maintenance", "h1:left_maintenance", "h2:prepare_for_maintenance", "h2:left_maintenance",
			"h3:prepare_for_maintenance", "h3:left_maintenance"}
		if !slices.Equal(order, want) {
			t.Errorf("maintenance order %v, want %v", order, want)
		}
	})

	t.Run("PreFlight70Skips", func(t *testing.T) {
		t.Parallel()
		l := newRollingLab(t, 3, 1, 1)
		l.hook("h2", "PreFlight", "exit 70")
		code, res, errOut := l.start("--cluster", "c1", "--timeout", "10")
		wantResult(t, code, res, errOut, 0, []string{"h1", "h3"}, map[string]string{"h2": "no maintenance needed"})
		if got := l.stagesRan("h2"); !slices.Equal(got, []string{"PreFlight"}) {
			t.Errorf("h2 ran %v, want only PreFlight", got)
		}
		l.assertRestored()
	})

	t.Run("PreFlightFailureChangesNothing", func(t *testing.T) {
		t.Parallel()
		l := newRollingLab(t, 3, 1, 1)
		l.hook("h2", "PreFlight", "echo disk full; exit 1")
		code, res, errOut := l.start("--cluster", "c1", "--timeout", "10")
		wantResult(t, code, res, errOut, 1, nil, nil)
		if res.State != events.RunFailed || !strings.Contains(res.Details, "PreFlight") || !strings.Contains(res.Details, "h2") {
			t.Errorf("state %q details %q: want failed naming h2's PreFlight", res.State, res.Details)
		}
		for _, h := range l.hostNames() {
			if got := l.stagesRan(h); !slices.Equal(got, []string{"PreFlight"}) {
				t.Errorf("%s ran %v, want only PreFlight", h, got)
			}
		}
		j := l.journal(res.RunID)
		for _, typ := range []events.Type{events.ClusterDisabling, events.ClusterDisabled, events.HostStarted} {
			if hasEvent(j, typ, "", "") {
				t.Errorf("the journal has %s after a failed PreFlight", typ)
			}
		}
		if hasEvent(j, events.HostStep, "", string(events.StepPrepared)) || hasEvent(j, events.HostStageStarted, "", "PreMaintenance") {
			t.Errorf("a host went on past PreFlight")
		}
		l.assertRestored()
	})

	t.Run("PreFlightFailureForced", func(t *testing.T) {
		t.Parallel()
		l := newRollingLab(t, 3, 1, 1)
		l.hook("h2", "PreFlight", "echo disk full; exit 1")
		code, res, errOut := l.start("--cluster", "c1", "--timeout", "10", "--forced")
		wantResult(t, code, res, errOut, 0, []string{"h1", "h3"}, map[string]string{"h2": "PreFlight failed (exit 1)"})
		if got := l.stagesRan("h2"); !slices.Equal(got, []string{"PreFlight"}) {
			t.Errorf("h2 ran %v, want only PreFlight", got)
		}
		for _, h := range []string{"h1", "h3"} {
			if got := l.stagesRan(h); !slices.Equal(got, stageNames) {
				t.Errorf("%s ran %v, want %v", h, got, stageNames)
			}
		}
		l.assertRestored()
	})

	t.Run("NoMaintenanceScriptSkips", func(t *testing.T) {
		t.Parallel()
		l := newRollingLab(t, 3, 1, 1)
		if err := os.Remove(filepath.Join(l.host("h2").Dir, "hooks", "Maintenance.sh")); err != nil {
			t.Fatal(err)
		}
		code, res, errOut := l.start("--cluster", "c1", "--timeout", "10")
		wantResult(t, code, res, errOut, 0, []string{"h1", "h3"}, map[string]string{"h2": "no Maintenance script"})
		// The check comes before PreMaintenance: h2 ran nothing after PreFlight.
		if got := l.stagesRan("h2"); !slices.Equal(got, []string{"PreFlight"}) {
			t.Errorf("h2 ran %v, want only PreFlight", got)
		}
		if hasEvent(l.journal(res.RunID), events.HostStep, "h2", string(events.StepPrepared)) {
			t.Errorf("h2 was put into maintenance")
		}
		l.assertRestored()
	})

	t.Run("PreMaintenance70Skips", func(t *testing.T) {
		t.Parallel()
		l := newRollingLab(t, 3, 1, 1)
		l.hook("h2", "PreMaintenance", "exit 70")
		code, res, errOut := l.start("--cluster", "c1", "--timeout", "10")
		wantResult(t, code, res, errOut, 0, []string{"h1", "h3"}, map[string]string{"h2": "no maintenance needed"})
		if got := l.stagesRan("h2"); !slices.Equal(got, []string{"PreFlight", "PreMaintenance"}) {
			t.Errorf("h2 ran %v, want PreFlight and PreMaintenance", got)
		}
		if hasEvent(l.journal(res.RunID), events.HostStep, "h2", string(events.StepPrepared)) {
			t.Errorf("h2 was put into maintenance")
		}
		l.assertRestored()
	})

	t.Run("MaintenanceFailureCancels", func(t *testing.T) {
		t.Parallel()
		l := newRollingLab(t, 3, 1, 1)
		l.hook("h2", "Maintenance", "echo apt broke; exit 3")
		code, res, errOut := l.start("--cluster", "c1", "--timeout", "10")
		wantResult(t, code, res, errOut, 1, []string{"h1"}, nil)
		if res.State != events.RunFailed || !strings.Contains(res.Details, "h2") || !strings.Contains(res.Details, "exit 3") {
			t.Errorf("state %q details %q: want failed naming h2's Maintenance exit 3", res.State, res.Details)
		}
		if got := l.stagesRan("h2"); !slices.Equal(got, []string{"PreFlight", "PreMaintenance", "Maintenance"}) {
			t.Errorf("h2 ran %v, want PreFlight, PreMaintenance, Maintenance", got)
		}
		if got := l.stagesRan("h3"); !slices.Equal(got, []string{"PreFlight"}) {
			t.Errorf("h3 ran %v after the run failed on h2, want only PreFlight", got)
		}
		j := l.journal(res.RunID)
		if !hasEvent(j, events.HostMaintenanceCancel, "h2", "") || !hasEvent(j, events.HostStep, "h2", "left_maintenance") {
			t.Errorf("the journal does not show h2's maintenance cancelled")
		}
		l.assertRestored()
	})

	t.Run("PostMaintenanceFailure", func(t *testing.T) {
		t.Parallel()
		l := newRollingLab(t, 3, 1, 1)
		l.hook("h2", "PostMaintenance", "echo service down; exit 1")
		code, res, errOut := l.start("--cluster", "c1", "--timeout", "10")
		wantResult(t, code, res, errOut, 1, []string{"h1"}, nil)
		if res.State != events.RunFailed || !strings.Contains(res.Details, "PostMaintenance") {
			t.Errorf("state %q details %q: want failed naming PostMaintenance", res.State, res.Details)
		}
		if got := l.stagesRan("h3"); !slices.Equal(got, []string{"PreFlight"}) {
			t.Errorf("h3 ran %v after the run failed on h2, want only PreFlight", got)
		}
		l.assertRestored()
	})

	t.Run("PostMaintenanceFailureForced", func(t *testing.T) {
		t.Parallel()
		l := newRollingLab(t, 3, 1, 1)
		l.hook("h2", "PostMaintenance", "echo service down; exit 1")
		code, res, errOut := l.start("--cluster", "c1", "--timeout", "10", "--forced")
		wantResult(t, code, res, errOut, 0, []string{"h1", "h3"}, map[string]string{"h2": "PostMaintenance failed (exit 1)"})
		for _, h := range l.hostNames() {
			if got := l.stagesRan(h); !slices.Equal(got, stageNames) {
				t.Errorf("%s ran %v, want %v", h, got, stageNames)
			}
		}
		l.assertRestored()
	})

	t.Run("StageTimeout", func(t *testing.T) {
		t.Parallel()
		l := newRollingLab(t, 3, 1, 1)
		l.hook("h2", "Maintenance", "sleep 30")
		began := time.Now()
		code, res, errOut := l.start("--cluster", "c1", "--timeout", "2")
		took := time.Since(began)
		wantResult(t, code, res, errOut, 1, []string{"h1"}, nil)
		if !strings.Contains(res.Details, "timed_out") {
			t.Errorf("details %q do not report the timeout", res.Details)
		}
		st := l.status(res.RunID)
		if rec := st.Run.Host("h2").Stages["Maintenance"]; rec == nil || rec.Outcome != "timed_out" {
			t.Errorf("h2's Maintenance stage is %+v, want outcome timed_out", rec)
		}
		if !hasEvent(l.journal(res.RunID), events.HostMaintenanceCancel, "h2", "") {
			t.Errorf("the journal does not show h2's maintenance cancelled")
		}
		if took > 20*time.Second {
			t.Errorf("the run took %s with a 2 s stage timeout", took)
		}
		l.assertRestored()
	})

	t.Run("PayloadReachesEveryScript", func(t *testing.T) {
		t.Parallel()
		l := newRollingLab(t, 3, 1, 1)
		code, res, errOut := l.start("--cluster", "c1", "--timeout", "10", "--payload", `a=1 "b c"`)
		wantResult(t, code, res, errOut, 0, []string{"h1", "h2", "h3"}, nil)
		for _, h := range l.hostNames() {
			lines := l.logLines(h)
			if len(lines) != 4 {
				t.Errorf("%s logged %d script runs, want 4: %q", h, len(lines), lines)
			}
			for i, line := range lines {
				if want := stageNames[min(i, 3)] + " 2 [a=1] [b c]"; line != want {
					t.Errorf("%s logged %q, want %q", h, line, want)
				}
			}
		}
	})

	t.Run("TimeoutBelowPingInterval", func(t *testing.T) {
		t.Parallel()
		l := newRollingLab(t, 3, 1, 1)
		l.ok("config", "set", "kvm.rolling.maintenance.ping.interval", "10")
		code, out, errOut := l.kvmctl("rolling", "start", "--cluster", "c1", "--timeout", "5")
		if code != 2 {
			t.Fatalf("exit %d, want 2\n%s%s", code, out, errOut)
		}
		if !strings.Contains(errOut, "5s") || !strings.Contains(errOut, "10s") || !strings.Contains(errOut, "ping.interval") {
			t.Errorf("the refusal does not name both values:\n%s", errOut)
		}
		if n := l.runCount(); n != 0 {
			t.Errorf("rolling list shows %d runs, want none", n)
		}
		if out := l.ok("--json", "rolling", "list"); strings.TrimSpace(out) != "[]" {
			t.Errorf("rolling list --json = %s, want []", out)
		}
		for _, h := range l.hostNames() {
			if got := l.logLines(h); got != nil {
				t.Errorf("%s ran scripts: %q", h, got)
			}
		}
		l.assertRestored()
	})

	t.Run("OverlappingRunRefused", func(t *testing.T) {
		t.Parallel()
		l := newRollingLab(t, 3, 1, 1)
		release := l.blockHook("h1", "Maintenance")
		bg := l.startBackground("rolling", "start", "--cluster", "c1", "--timeout", "60")
		first := l.waitStageRunning(bg, "h1", "Maintenance").Run.ID
		code, out, errOut := l.kvmctl("rolling", "start", "--cluster", "c1", "--timeout", "10")
		if code != 2 || !strings.Contains(errOut, first) {
			t.Errorf("second run: exit %d, want 2 naming run %s\n%s%s", code, first, out, errOut)
		}
		// Overlapping by host alone counts too.
		code, out, errOut = l.kvmctl("rolling", "start", "--host", "h3", "--timeout", "10")
		if code != 2 || !strings.Contains(errOut, first) {
			t.Errorf("run of h3: exit %d, want 2 naming run %s\n%s%s", code, first, out, errOut)
		}
		if n := l.runCount(); n != 1 {
			t.Errorf("rolling list shows %d runs, want only the first", n)
		}
		// Every path that changes the run's cluster or hosts consults its holds, and each
		// refusal names the run and changes nothing.
		exported := l.ok("inventory", "export")
		changed := strings.Replace(exported, "- lab", "- changed", 1)
		if changed == exported {
			t.Fatalf("cannot edit the exported inventory:\n%s", exported)
		}
		inv := filepath.Join(t.TempDir(), "inv.yaml")
		if err := os.WriteFile(inv, []byte(changed), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{
			{"cluster", "enable", "c1"},
			{"cluster", "disable", "c1"},
			{"cluster", "rm", "c1"},
			{"host", "set", "h2", "--tags", "x"},
			{"host", "rm", "h3"},
			{"inventory", "apply", "-f", inv},
			{"maintenance", "enable", "h2"},
			{"maintenance", "cancel", "h1"},
		} {
			code, out, errOut := l.kvmctl(args...)
			if code != 2 || !strings.Contains(errOut, "held by rolling run "+first) || !strings.Contains(errOut, "rolling abort "+first) {
				t.Errorf("%s during the run: exit %d, want 2 naming run %s and how to stop it\n%s%s", strings.Join(args, " "), code, first, out, errOut)
			}
		}
		if after := l.ok("inventory", "export"); after != exported {
			t.Errorf("a refused change changed the inventory:\n%s\nwas\n%s", after, exported)
		}
		release()
		if code := bg.wait(t, 60*time.Second); code != 0 {
			t.Fatalf("the first run exited %d\n%s", code, bg.errb.String())
		}
		if st := l.status(first); st.Run.State != events.RunSucceeded || len(st.Result.HostsUpdated) != 3 {
			t.Errorf("first run %s with %d hosts updated, want succeeded with 3", st.Run.State, len(st.Result.HostsUpdated))
		}
		l.assertRestored()
	})

	t.Run("ResumeAfterSIGKILL", func(t *testing.T) {
		t.Parallel()
		l := newRollingLab(t, 3, 1, 1)
		id, release := l.killDuringMaintenance()
		// A new run may not take the dead run's clusters: only resume may.
		if code, _, errOut := l.kvmctl("rolling", "start", "--cluster", "c1", "--timeout", "10"); code != 2 || !strings.Contains(errOut, id) {
			t.Errorf("a new run over the dead run's cluster: exit %d, want 2 naming %s\n%s", code, id, errOut)
		}
		type result struct {
			code        int
			out, errOut string
		}
		done := make(chan result, 1)
		go func() {
			code, out, errOut := l.kvmctl("--json", "rolling", "resume", id)
			done <- result{code, out, errOut}
		}()
		// Release the script only once resume has taken the run over, so that it re-attaches
		// to a stage still running.
		var r result
		deadline := time.Now().Add(30 * time.Second)
	takeover:
		for !l.status(id).OwnerAlive {
			select {
			case r = <-done:
				t.Fatalf("rolling resume ended before the script was released: exit %d\n%s%s", r.code, r.out, r.errOut)
			case <-time.After(20 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Error("rolling resume never took the run over")
				break takeover
			}
		}
		release()
		select {
		case r = <-done:
		case <-time.After(60 * time.Second):
			t.Fatal("rolling resume did not finish")
		}
		var res orchestrate.RunResult
		if err := json.Unmarshal([]byte(r.out), &res); err != nil {
			t.Fatalf("resume: exit %d: %v\n%s%s", r.code, err, r.out, r.errOut)
		}
		wantResult(t, r.code, res, r.errOut, 0, []string{"h1", "h2", "h3"}, nil)
		if n := countStage(l.logLines("h1"), "Maintenance"); n != 1 {
			t.Errorf("h1's Maintenance script ran %d times, want once (resume must re-attach)", n)
		}
		for _, h := range l.hostNames() {
			if got := l.stagesRan(h); !slices.Equal(got, stageNames) {
				t.Errorf("%s ran %v, want every stage once: %v", h, got, stageNames)
			}
		}
		if !hasEvent(l.journal(id), events.RunResumed, "", "") {
			t.Errorf("the journal has no %s", events.RunResumed)
		}
		l.assertRestored()
	})

	t.Run("AbortAfterSIGKILL", func(t *testing.T) {
		t.Parallel()
		l := newRollingLab(t, 3, 1, 1)
		id, release := l.killDuringMaintenance()
		// h1's Maintenance script still runs: abort waits for its result before it takes h1
		// out of maintenance, so that a host being patched never becomes a migration target.
		released := make(chan time.Time, 1)
		go func() {
			time.Sleep(500 * time.Millisecond)
			released <- time.Now()
			release()
		}()
		code, out, errOut := l.kvmctl("--json", "rolling", "abort", id)
		if code != 0 {
			t.Fatalf("abort: exit %d\n%s%s", code, out, errOut)
		}
		select {
		case <-released:
		default:
			t.Errorf("abort returned while h1's Maintenance script was still running")
		}
		st := l.status(id)
		if st.Run.State != events.RunAborted {
			t.Errorf("run %s after abort, want %s", st.Run.State, events.RunAborted)
		}
		for _, h := range []string{"h2", "h3"} {
			if got := l.stagesRan(h); !slices.Equal(got, []string{"PreFlight"}) {
				t.Errorf("%s ran %v after the abort, want only PreFlight", h, got)
			}
		}
		l.assertRestored()
		// The cluster is free again.
		code, res, errOut := l.start("--cluster", "c1", "--timeout", "10")
		wantResult(t, code, res, errOut, 0, []string{"h1", "h2", "h3"}, nil)
	})

	t.Run("MaxUnavailable2", func(t *testing.T) {
		t.Parallel()
		l := newRollingLab(t, 4, 1, 1)
		code, res, errOut := l.start("--cluster", "c1", "--timeout", "10", "--max-unavailable", "2")
		wantResult(t, code, res, errOut, 0, []string{"h1", "h2", "h3", "h4"}, nil)
		in := map[string]map[string]bool{} // cluster -> hosts in maintenance
		most := 0
		for _, e := range l.journal(res.RunID) {
			if in[e.Cluster] == nil {
				in[e.Cluster] = map[string]bool{}
			}
			before := len(in[e.Cluster])
			switch {
			case e.Type == events.HostStep && e.Step == events.StepPrepared, e.Type == events.HostMaintenanceIn:
				in[e.Cluster][e.Host] = true
			case e.Type == events.HostStep && e.Step == events.StepLeftMaintenance, e.Type == events.HostMaintenanceCancel:
				delete(in[e.Cluster], e.Host)
			}
			if n := len(in[e.Cluster]); n > most {
				most = n
			}
			if n := len(in[e.Cluster]); n > 2 && before <= 2 {
				t.Errorf("at %s (%s %s) %d hosts of %s were in maintenance: %v", e.Type, e.Host, e.Stage, n, e.Cluster, in[e.Cluster])
			}
		}
		if most != 2 {
			t.Errorf("at most %d hosts were in maintenance together, want 2", most)
		}
		l.assertRestored()
	})

	t.Run("DryRunChangesNothing", func(t *testing.T) {
		t.Parallel()
		l := newRollingLab(t, 3, 1, 1)
		if err := os.Remove(filepath.Join(l.host("h2").Dir, "hooks", "Maintenance.sh")); err != nil {
			t.Fatal(err)
		}
		before := l.ok("--json", "host", "list") + l.ok("--json", "cluster", "list")
		var plan orchestrate.DryRunPlan
		l.jsonOut(&plan, "rolling", "start", "--cluster", "c1", "--timeout", "10", "--dry-run")
		if got := names(plan.Hosts, func(h orchestrate.DryRunHost) string { return h.Host }); !slices.Equal(got, []string{"h1", "h2", "h3"}) {
			t.Fatalf("the plan lists %v, want h1 h2 h3", got)
		}
		for i, h := range plan.Hosts {
			if h.Order != i+1 || h.Cluster != "c1" {
				t.Errorf("host %s: order %d cluster %s, want %d c1", h.Host, h.Order, h.Cluster, i+1)
			}
			for _, s := range stageNames {
				want := "present"
				if h.Host == "h2" && s == "Maintenance" {
					want = "missing"
				}
				if h.Scripts[s] != want {
					t.Errorf("host %s script %s: %q, want %q", h.Host, s, h.Scripts[s], want)
				}
			}
			if !h.Fits || !strings.HasPrefix(h.Capacity, "fits") {
				t.Errorf("host %s capacity %q, want it to fit", h.Host, h.Capacity)
			}
		}
		out := l.ok("rolling", "start", "--cluster", "c1", "--timeout", "10", "--dry-run")
		if !strings.Contains(out, "nothing changed") {
			t.Errorf("the plain dry run does not say nothing changed:\n%s", out)
		}
		for _, h := range l.hostNames() {
			found := false
			for _, line := range strings.Split(out, "\n") {
				if f := strings.Fields(line); len(f) > 2 && f[1] == h && strings.Contains(line, "present") && strings.Contains(line, "fits") {
					found = true
				}
			}
			if !found {
				t.Errorf("the plain dry run has no line for %s with its scripts and capacity:\n%s", h, out)
			}
		}
		if after := l.ok("--json", "host", "list") + l.ok("--json", "cluster", "list"); after != before {
			t.Errorf("the dry run changed the inventory:\nbefore %s\nafter %s", before, after)
		}
		if n := l.runCount(); n != 0 {
			t.Errorf("rolling list shows %d runs after dry runs, want none", n)
		}
		for _, h := range l.hostNames() {
			if got := l.logLines(h); got != nil {
				t.Errorf("%s ran scripts in a dry run: %q", h, got)
			}
		}
		l.assertRestored()
	})
}
