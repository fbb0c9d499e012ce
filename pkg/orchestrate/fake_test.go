package orchestrate

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/clock"
	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/holds"
	"github.com/kvmctl/kvmctl/pkg/hooks"
	"github.com/kvmctl/kvmctl/pkg/inventory"
	"github.com/kvmctl/kvmctl/pkg/settings"
	"github.com/kvmctl/kvmctl/pkg/sshx"
	"github.com/kvmctl/kvmctl/pkg/state"
	"github.com/kvmctl/kvmctl/pkg/virt"
)

// The engines' unit tests run inside testing/synctest bubbles: the engines take the real clock,
// whose time the bubble fakes, so a 30-minute stage timeout passes in microseconds and nothing
// sleeps. The fake agents below model an agent's behaviour in that time (long polls, a host
// away while it reboots). The end-to-end tests in cmd/kvmctl/cli run the same engines against
// real agents in a lab.

// fleet is an in-memory fleet of fake agents.
type fleet struct {
	mu     sync.Mutex
	clk    clock.Clock
	agents map[string]*fakeAgent
}

// stageScript is how one stage behaves on a fake agent.
type stageScript struct {
	result api.StageStatus // how it ends; the zero value succeeds
	takes  time.Duration   // how long it runs
	never  bool            // it never ends
	// The agent stops answering awayAfter into the stage, for awayFor (its script reboots the
	// host); the stage ends as result says once it is back.
	awayAfter, awayFor time.Duration
}

type fakeExec struct {
	stage  events.Stage
	start  time.Time
	script stageScript
}

type fakeAgent struct {
	f       *fleet
	name    string
	down    bool
	inMaint bool
	vms     map[string]api.VM
	// xml holds the definitions the agent sends for some of its VMs instead of their own (a
	// crafted one); defined counts the definitions it was sent.
	xml     map[string]string
	defined int
	// hypervisor is what the agent reports (api.HypervisorTest unless set); migrations records
	// the live migrations it was asked for, which it cannot do.
	hypervisor string
	migrations []api.MigrateRequest
	cpus       int
	memMiB     uint64
	stages     map[events.Stage]stageScript
	execs      map[string]*fakeExec
	started    map[events.Stage]int // executions (not calls) per stage
	noScript   map[events.Stage]bool
	refused    map[events.Stage]string // why the agent refuses a stage's script
	hang       bool                    // VM starts never finish (until the caller gives up)
	// awayCalls counts calls refused because the agent was away during a stage.
	awayCalls int
	// violations are unsafe things done to this host (maintenance cancelled while its
	// Maintenance script ran).
	violations []string
}

var errUnreachable = &api.UnreachableError{Host: "fake", Err: errors.New("connection refused")}

func newFleet() *fleet { return &fleet{agents: map[string]*fakeAgent{}, clk: clock.Real()} }

func (f *fleet) add(name string, vms ...string) *fakeAgent {
	a := &fakeAgent{f: f, name: name, vms: map[string]api.VM{}, xml: map[string]string{}, cpus: 8, memMiB: 8192, stages: map[events.Stage]stageScript{},
		execs: map[string]*fakeExec{}, started: map[events.Stage]int{}, noScript: map[events.Stage]bool{}, refused: map[events.Stage]string{}}
	for _, vm := range vms {
		a.vms[vm] = api.VM{Name: vm, UUID: vm, State: "running", VCPUs: 1, MemoryMiB: 1024}
	}
	f.agents[name] = a
	return a
}

func (f *fleet) dial(h state.Host) (RollingAgent, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a, ok := f.agents[h.Name]
	if !ok {
		return nil, errors.New("no such fake host " + h.Name)
	}
	return a, nil
}

func (f *fleet) dialMaint(h state.Host) (MaintenanceAgent, error) { return f.dial(h) }

func (a *fakeAgent) lock() func() { a.f.mu.Lock(); return a.f.mu.Unlock }

// away reports whether the agent does not answer now; the fleet's lock is held.
func (a *fakeAgent) away() bool {
	if a.down {
		return true
	}
	now := a.f.clk.Now()
	for _, x := range a.execs {
		if x.script.awayFor > 0 {
			from := x.start.Add(x.script.awayAfter)
			if !now.Before(from) && now.Before(from.Add(x.script.awayFor)) {
				a.awayCalls++
				return true
			}
		}
	}
	return false
}

func (a *fakeAgent) Status(context.Context) (api.Status, error) {
	defer a.lock()()
	if a.away() {
		return api.Status{}, errUnreachable
	}
	hv := a.hypervisor
	if hv == "" {
		hv = api.HypervisorTest
	}
	st := api.Status{HostName: a.name, AgentState: api.AgentStateUp, Hypervisor: hv, BootID: "b",
		Capacity: api.Resources{CPUs: a.cpus, MemoryMiB: a.memMiB}}
	if a.inMaint {
		st.AgentState = api.AgentStateInMaintenance
	}
	for _, vm := range a.vms {
		st.VMs = append(st.VMs, vm)
		st.Allocation.CPUs += vm.VCPUs
		st.Allocation.MemoryMiB += vm.MemoryMiB
	}
	return st, nil
}

func (a *fakeAgent) EnterMaintenance(context.Context) (api.Maintenance, error) {
	defer a.lock()()
	if a.away() {
		return api.Maintenance{}, errUnreachable
	}
	a.inMaint = true
	return api.Maintenance{AgentState: string(api.AgentStateInMaintenance)}, nil
}

func (a *fakeAgent) CancelMaintenance(context.Context) (api.Maintenance, error) {
	defer a.lock()()
	if a.away() {
		return api.Maintenance{}, errUnreachable
	}
	now := a.f.clk.Now()
	for id, x := range a.execs {
		if st, _ := x.status(now); x.stage == events.Maintenance && !st.Done() {
			a.violations = append(a.violations, "maintenance cancelled while its Maintenance script "+id+" ran")
		}
	}
	a.inMaint = false
	return api.Maintenance{AgentState: string(api.AgentStateUp)}, nil
}

// VMXML answers the VM's definition as an agent on the test driver would, or the crafted one.
func (a *fakeAgent) VMXML(_ context.Context, name string) (string, error) {
	defer a.lock()()
	vm, ok := a.vms[name]
	if !ok {
		return "", &api.Error{Status: 404, Code: api.CodeNotFound}
	}
	if x, ok := a.xml[name]; ok {
		return x, nil
	}
	spec := virt.VMSpec{Name: vm.Name, UUID: vm.UUID, VCPUs: vm.VCPUs, MemoryMiB: vm.MemoryMiB,
		Disks: []string{"/srv/shared/" + vm.Name + ".img"}, Tags: vm.Tags}
	for _, g := range vm.Groups {
		spec.Groups = append(spec.Groups, virt.AffinityGroup{Name: g.Name, Type: g.Type})
	}
	return virt.RenderDomainXML(spec)
}

func (a *fakeAgent) DefineAndStartVM(ctx context.Context, xml string) error {
	a.f.mu.Lock()
	hang := a.hang
	a.f.mu.Unlock()
	if hang {
		<-ctx.Done()
		return ctx.Err()
	}
	defer a.lock()()
	a.defined++
	if a.inMaint {
		return &api.Error{Status: 409, Code: api.CodeInMaintenance, Message: "host is in maintenance"}
	}
	vm, err := virt.ParseDomainXML(xml)
	if err != nil {
		return &api.Error{Status: 400, Code: api.CodeBadRequest, Message: err.Error()}
	}
	a.vms[vm.Name] = api.VM{Name: vm.Name, UUID: vm.UUID, State: "running", VCPUs: vm.VCPUs, MemoryMiB: vm.MemoryMiB,
		Disks: vm.Disks, Tags: vm.RequiredTags}
	return nil
}

func (a *fakeAgent) RemoveVM(_ context.Context, name string) error {
	defer a.lock()()
	delete(a.vms, name)
	return nil
}

func (a *fakeAgent) MigrateVM(_ context.Context, _ string, req api.MigrateRequest) error {
	defer a.lock()()
	a.migrations = append(a.migrations, req)
	return &api.Error{Status: 501, Code: api.CodeMigrationUnsupported}
}

func (a *fakeAgent) Hooks(context.Context) ([]api.HookScript, error) {
	defer a.lock()()
	if a.away() {
		return nil, errUnreachable
	}
	var out []api.HookScript
	for _, s := range events.Stages() {
		out = append(out, api.HookScript{Stage: s, Present: !a.noScript[s], Refused: a.refused[s]})
	}
	return out, nil
}

// StartStage is idempotent per (run, stage), as the real agent is: a second start returns the
// first execution and never runs the script again.
func (a *fakeAgent) StartStage(_ context.Context, req api.StageRequest) (string, error) {
	defer a.lock()()
	if a.away() {
		return "", errUnreachable
	}
	if a.noScript[req.Stage] {
		return "", &api.Error{Status: 404, Code: api.CodeNoScript}
	}
	id := hooks.ExecID(req.RunID, req.Stage)
	if _, ok := a.execs[id]; !ok {
		a.execs[id] = &fakeExec{stage: req.Stage, start: a.f.clk.Now(), script: a.stages[req.Stage]}
		a.started[req.Stage]++
	}
	return id, nil
}

// status is where execution x is now; the fleet's lock is held.
func (x *fakeExec) status(now time.Time) (api.StageStatus, time.Duration) {
	end := x.start.Add(x.script.takes)
	if x.script.awayFor > 0 {
		end = maxTime(end, x.start.Add(x.script.awayAfter+x.script.awayFor))
	}
	if x.script.never || now.Before(end) {
		left := end.Sub(now)
		if x.script.never {
			left = time.Hour
		}
		return api.StageStatus{Stage: x.stage, State: events.StageRunning}, left
	}
	st := x.script.result
	st.Stage, st.State = x.stage, events.StageCompleted
	if st.Outcome == "" {
		st.Outcome = events.OutcomeSucceeded
	}
	return st, 0
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// WaitStage long-polls: it answers when the stage ends or wait has passed, and fails while the
// agent is away (also when it goes away during the poll: the connection breaks).
func (a *fakeAgent) WaitStage(ctx context.Context, id string, wait time.Duration) (api.StageStatus, error) {
	deadline := a.f.clk.Now().Add(wait)
	for {
		a.f.mu.Lock()
		if a.away() {
			a.f.mu.Unlock()
			return api.StageStatus{}, errUnreachable
		}
		x, ok := a.execs[id]
		if !ok {
			a.f.mu.Unlock()
			return api.StageStatus{}, &api.Error{Status: 404, Code: api.CodeNotFound}
		}
		now := a.f.clk.Now()
		st, left := x.status(now)
		if st.Done() || !now.Before(deadline) {
			a.f.mu.Unlock()
			return st, nil
		}
		step := min(left, deadline.Sub(now))
		if x.script.awayFor > 0 {
			if from := x.start.Add(x.script.awayAfter); from.After(now) {
				step = min(step, from.Sub(now))
			}
		}
		a.f.mu.Unlock()
		if err := clock.Sleep(ctx, a.f.clk, step); err != nil {
			return api.StageStatus{}, err
		}
	}
}

// fakeSSH restarts a fake agent when it receives the restart command.
type fakeSSH struct {
	f        *fleet
	commands []string
	fail     error
}

func (s *fakeSSH) Run(_ context.Context, t sshx.Target, cmd string) (string, error) {
	s.commands = append(s.commands, t.Host+": "+cmd)
	if s.fail != nil {
		return "", s.fail
	}
	s.f.mu.Lock()
	s.f.agents[t.Host].down = false
	s.f.mu.Unlock()
	return "restarted", nil
}

// vmCount returns how many hosts run each VM: every VM must run exactly once.
func (f *fleet) vmCount() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := map[string]int{}
	for _, a := range f.agents {
		for name, vm := range a.vms {
			if vm.State == "running" {
				n[name]++
			}
		}
	}
	return n
}

// newStoreWithCluster writes zone z1, pod p1, cluster c1 and the named hosts (lab hosts, as the
// fakes run the test driver) into a fresh in-memory store, with a ping interval of 1 s.
func newStoreWithCluster(t testing.TB, hosts ...string) *state.Memory {
	t.Helper()
	st := state.NewMemory()
	err := st.Update(func(tx state.Tx) error {
		if _, err := inventory.AddZone(tx, "z1"); err != nil {
			return err
		}
		if _, err := inventory.AddPod(tx, "p1", "z1"); err != nil {
			return err
		}
		if _, err := inventory.AddCluster(tx, "c1", "p1"); err != nil {
			return err
		}
		for i, h := range hosts {
			if _, err := inventory.AddHost(tx, state.Host{Name: h, Cluster: "c1", Address: fmt.Sprintf("127.0.0.1:%d", 9000+i), Lab: true}); err != nil {
				return err
			}
		}
		_, err := settings.Set(tx, settings.PingInterval, "1")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// procs models processes for holds: each engine is one (its own pid); dead ones are listed.
type procs struct {
	mu   sync.Mutex
	dead map[int]bool
}

func newProcs() *procs { return &procs{dead: map[int]bool{}} }

// table is process pid's view of holds.
func (p *procs) table(pid int) holds.Table {
	return holds.Table{Self: holds.Owner{PID: pid, StartTime: "t", Machine: "test"}, Alive: func(o holds.Owner) bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return !p.dead[o.PID]
	}}
}

func (p *procs) kill(pid int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dead[pid] = true
}

func hostState(t testing.TB, st Store, name string) string {
	t.Helper()
	var s string
	_ = st.View(func(tx state.Tx) error {
		h, err := state.GetHost(tx, name)
		s = h.ResourceState
		return err
	})
	return s
}

func clusterState(t testing.TB, st Store, name string) string {
	t.Helper()
	var s string
	_ = st.View(func(tx state.Tx) error {
		c, err := state.GetCluster(tx, name)
		s = c.ResourceState
		return err
	})
	return s
}

func allHolds(t testing.TB, st Store) []holds.Hold {
	t.Helper()
	var hs []holds.Hold
	_ = st.View(func(tx state.Tx) (err error) { hs, err = holds.List(tx); return err })
	return hs
}

func journalTypes(t testing.TB, st Store, id string) string {
	t.Helper()
	var types []string
	_ = st.View(func(tx state.Tx) error {
		evs, err := Journal(tx, id)
		for _, e := range evs {
			types = append(types, string(e.Type))
		}
		return err
	})
	return strings.Join(types, " ")
}

// waitFor waits, on the bubble's clock, until cond holds.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for i := 0; !cond(); i++ {
		if i > 100000 {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-time.After(time.Millisecond)
	}
}

func (a *fakeAgent) stageStarted(stage events.Stage) bool {
	defer a.lock()()
	return a.started[stage] > 0
}

func (a *fakeAgent) finishStage(stage events.Stage) {
	defer a.lock()()
	for _, x := range a.execs {
		if x.stage == stage {
			x.script.never = false
			x.script.takes = 0
		}
	}
}
