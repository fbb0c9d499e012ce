package orchestrate

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/inventory"
	"github.com/kvmctl/kvmctl/pkg/sshx"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// fleet is an in-memory fleet of fake agents for unit tests of engine rules. The end-to-end
// tests in cmd/kvmctl/cli run the same engines against real agents in a lab.
type fleet struct {
	mu     sync.Mutex
	agents map[string]*fakeAgent
}

type fakeAgent struct {
	f        *fleet
	name     string
	down     bool
	inMaint  bool
	vms      map[string]api.VM
	cpus     int
	memMiB   uint64
	stages   map[string]api.StageStatus // by stage name: the result a stage gets
	started  map[string]int             // stage name -> times started
	noScript map[string]bool
	refused  map[string]string // stage -> why the agent refuses its script
	hang     bool              // VM starts never finish (until the caller gives up)
}

var errUnreachable = &api.UnreachableError{Host: "fake", Err: errors.New("connection refused")}

func newFleet() *fleet { return &fleet{agents: map[string]*fakeAgent{}} }

func (f *fleet) add(name string, vms ...string) *fakeAgent {
	a := &fakeAgent{f: f, name: name, vms: map[string]api.VM{}, cpus: 8, memMiB: 8192,
		stages: map[string]api.StageStatus{}, started: map[string]int{}, noScript: map[string]bool{}}
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

func (a *fakeAgent) lock() func() { a.f.mu.Lock(); return a.f.mu.Unlock }

func (a *fakeAgent) Status(context.Context) (api.Status, error) {
	defer a.lock()()
	if a.down {
		return api.Status{}, errUnreachable
	}
	st := api.Status{HostName: a.name, AgentState: api.AgentStateUp, Hypervisor: api.HypervisorTest, BootID: "b",
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
	if a.down {
		return api.Maintenance{}, errUnreachable
	}
	a.inMaint = true
	return api.Maintenance{AgentState: string(api.AgentStateInMaintenance)}, nil
}

func (a *fakeAgent) CancelMaintenance(context.Context) (api.Maintenance, error) {
	defer a.lock()()
	if a.down {
		return api.Maintenance{}, errUnreachable
	}
	a.inMaint = false
	return api.Maintenance{AgentState: string(api.AgentStateUp)}, nil
}

func (a *fakeAgent) VMXML(_ context.Context, name string) (string, error) {
	defer a.lock()()
	if _, ok := a.vms[name]; !ok {
		return "", &api.Error{Status: 404, Code: api.CodeNotFound}
	}
	return name, nil // the fake's "XML" is the name
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
	if a.inMaint {
		return &api.Error{Status: 409, Code: api.CodeInMaintenance, Message: "host is in maintenance"}
	}
	a.vms[xml] = api.VM{Name: xml, UUID: xml, State: "running", VCPUs: 1, MemoryMiB: 1024}
	return nil
}

func (a *fakeAgent) RemoveVM(_ context.Context, name string) error {
	defer a.lock()()
	delete(a.vms, name)
	return nil
}

func (a *fakeAgent) MigrateVM(context.Context, string, api.MigrateRequest) error {
	return &api.Error{Status: 501, Code: api.CodeMigrationUnsupported}
}

func (a *fakeAgent) Hooks(context.Context) ([]api.HookScript, error) {
	defer a.lock()()
	var out []api.HookScript
	for _, s := range []string{"PreFlight", "PreMaintenance", "Maintenance", "PostMaintenance"} {
		out = append(out, api.HookScript{Stage: s, Present: !a.noScript[s], Refused: a.refused[s]})
	}
	return out, nil
}

func (a *fakeAgent) StartStage(_ context.Context, req api.StageRequest) (string, error) {
	defer a.lock()()
	if a.down {
		return "", errUnreachable
	}
	if a.noScript[req.Stage] {
		return "", &api.Error{Status: 404, Code: api.CodeNoScript}
	}
	a.started[req.Stage]++
	return req.RunID + "/" + req.Stage, nil
}

func (a *fakeAgent) WaitStage(_ context.Context, id string, _ time.Duration) (api.StageStatus, error) {
	defer a.lock()()
	stage := filepath.Base(id)
	if st, ok := a.stages[stage]; ok {
		return st, nil
	}
	return api.StageStatus{State: api.StageCompleted, Outcome: api.OutcomeSucceeded}, nil
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

// newStoreWithCluster writes zone z1, pod p1, cluster c1 and the named hosts.
func newStoreWithCluster(t *testing.T, hosts ...string) *state.Store {
	t.Helper()
	st := state.New(filepath.Join(t.TempDir(), "state.db"))
	if _, err := st.Create(); err != nil {
		t.Fatal(err)
	}
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
			if _, err := inventory.AddHost(tx, state.Host{Name: h, Cluster: "c1", Address: "127.0.0.1:" + itoa(9000+i)}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func itoa(n int) string {
	b := []byte{}
	for n > 0 {
		b = append([]byte{byte('0' + n%10)}, b...)
		n /= 10
	}
	return string(b)
}

func hostState(t *testing.T, st *state.Store, name string) string {
	t.Helper()
	var s string
	_ = st.View(func(tx state.Tx) error {
		h, err := state.GetHost(tx, name)
		s = h.ResourceState
		return err
	})
	return s
}
