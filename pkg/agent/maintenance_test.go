package agent

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/virt"
	"github.com/kvmctl/kvmctl/pkg/virt/libvirtdrv"
)

// newTestNode writes a libvirt test-driver node file for spec in a temp dir and returns its
// test:// URI.
func newTestNode(t *testing.T, spec virt.NodeSpec) string {
	t.Helper()
	data, err := virt.NodeXML(spec)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), spec.HostName+".xml")
	writeFile(t, path, data)
	return "test://" + path
}

// openNode opens uri and closes it with the test.
func openNode(t *testing.T, uri string) *libvirtdrv.Libvirt {
	t.Helper()
	hv, err := libvirtdrv.Open(uri)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hv.Close() })
	return hv
}

// serveStoppable starts a real agent like serve, and returns a stop that ends it (as a
// SIGTERM would) and waits for Serve to return; stop is safe to call twice.
func serveStoppable(t *testing.T, cfg Config, hv virt.Hypervisor, opts ...Option) (addr string, stop func()) {
	t.Helper()
	a, err := New(cfg, hv, opts...)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx, ln) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Serve: %v", err)
				}
			case <-time.After(15 * time.Second):
				t.Errorf("Serve did not return after cancel")
			}
		})
	}
	t.Cleanup(stop)
	return ln.Addr().String(), stop
}

func wantCode(t *testing.T, what string, err error, status int, code string) *api.Error {
	t.Helper()
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != code || ae.Status != status {
		t.Fatalf("%s: err = %v, want HTTP %d %s", what, err, status, code)
	}
	return ae
}

func vmStates(t *testing.T, c *api.Client) map[string]string {
	t.Helper()
	s, err := c.Status(context.Background())
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	m := map[string]string{}
	for _, vm := range s.VMs {
		m[vm.Name] = vm.State
	}
	return m
}

func TestMaintenanceRefusesVMStarts(t *testing.T) {
	f := newFleet(t)
	uri := newTestNode(t, virt.NodeSpec{HostName: "kvm1", CPUs: 8, MemoryMiB: 16384, VMs: []virt.VMSpec{
		{Name: "web1", VCPUs: 1, MemoryMiB: 1024, Running: true},
		{Name: "old", VCPUs: 1, MemoryMiB: 1024},
	}})
	cfg := f.testConfig("kvm1", "boot-1")
	cfg.LibvirtURI = uri
	c := f.client("kvm1", serve(t, cfg, openNode(t, uri)))
	ctx := context.Background()
	newVM, err := virt.RenderDomainXML(virt.VMSpec{Name: "new1", VCPUs: 1, MemoryMiB: 512})
	if err != nil {
		t.Fatal(err)
	}

	before := time.Now().Add(-time.Second)
	m, err := c.EnterMaintenance(ctx)
	if err != nil {
		t.Fatalf("EnterMaintenance: %v", err)
	}
	if m.AgentState != string(api.AgentStateInMaintenance) || m.Since.Before(before.Truncate(time.Second)) || m.Since.After(time.Now()) {
		t.Errorf("EnterMaintenance = %+v, want hostInMaintenance since about now", m)
	}
	s, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.AgentState != api.AgentStateInMaintenance || s.Hypervisor != api.HypervisorTest {
		t.Errorf("status: agent_state %q hypervisor %q, want %q %q", s.AgentState, s.Hypervisor, api.AgentStateInMaintenance, api.HypervisorTest)
	}
	if got, err := c.Maintenance(ctx); err != nil || got != m {
		t.Errorf("Maintenance = %+v, %v; want %+v", got, err, m)
	}

	ae := wantCode(t, "define in maintenance", c.DefineAndStartVM(ctx, newVM), http.StatusConflict, api.CodeInMaintenance)
	mustContain(t, ae.Message, "host is in maintenance", "kvmctl maintenance cancel kvm1")
	ae = wantCode(t, "start in maintenance", c.StartVM(ctx, "old"), http.StatusConflict, api.CodeInMaintenance)
	mustContain(t, ae.Message, "host is in maintenance")
	if got := vmStates(t, c); got["old"] != "shutoff" || got["new1"] != "" {
		t.Errorf("refused calls changed the host: %v", got)
	}

	// What empties a host still works.
	x, err := c.VMXML(ctx, "web1")
	if err != nil {
		t.Fatalf("VMXML in maintenance: %v", err)
	}
	if vm, err := virt.ParseDomainXML(x); err != nil || vm.Name != "web1" {
		t.Errorf("VMXML: %v %+v", err, vm)
	}
	if err := c.RemoveVM(ctx, "web1"); err != nil {
		t.Fatalf("RemoveVM in maintenance: %v", err)
	}
	if got := vmStates(t, c); got["web1"] != "" {
		t.Errorf("web1 still there after RemoveVM: %v", got)
	}

	m, err = c.CancelMaintenance(ctx)
	if err != nil || m.AgentState != string(api.AgentStateUp) || !m.Since.IsZero() {
		t.Fatalf("CancelMaintenance = %+v, %v; want Up without since", m, err)
	}
	if err := c.DefineAndStartVM(ctx, newVM); err != nil {
		t.Fatalf("define after cancel: %v", err)
	}
	if err := c.StartVM(ctx, "old"); err != nil {
		t.Fatalf("start after cancel: %v", err)
	}
	if got := vmStates(t, c); got["new1"] != "running" || got["old"] != "running" {
		t.Errorf("after cancel: %v", got)
	}
	if s, _ := c.Status(ctx); s.AgentState != api.AgentStateUp {
		t.Errorf("status after cancel: %q", s.AgentState)
	}
}

func TestMaintenanceIdempotent(t *testing.T) {
	f := newFleet(t)
	var mu sync.Mutex
	now := time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		now = now.Add(time.Minute)
		return now
	}
	cfg := f.testConfig("kvm1", "b")
	c := f.client("kvm1", serve(t, cfg, virt.NewFake(virt.Capacity{CPUs: 1, MemoryMiB: 1024}), WithClock(clock)))
	ctx := context.Background()

	if m, err := c.CancelMaintenance(ctx); err != nil || m.AgentState != string(api.AgentStateUp) {
		t.Fatalf("cancel while Up = %+v, %v", m, err)
	}
	if _, err := os.Stat(filepath.Join(cfg.StateDir, MaintenanceFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cancel while Up wrote the state file: %v", err)
	}
	first, err := c.EnterMaintenance(ctx)
	if err != nil {
		t.Fatal(err)
	}
	second, err := c.EnterMaintenance(ctx)
	if err != nil || second != first || first.Since.IsZero() {
		t.Errorf("second enter = %+v, %v; want %+v (the first since kept)", second, err, first)
	}
	for range 2 {
		if m, err := c.CancelMaintenance(ctx); err != nil || m.AgentState != string(api.AgentStateUp) || !m.Since.IsZero() {
			t.Errorf("cancel = %+v, %v", m, err)
		}
	}
	if third, err := c.EnterMaintenance(ctx); err != nil || !third.Since.After(first.Since) {
		t.Errorf("enter after cancel = %+v, %v; want a new since", third, err)
	}
}

func TestMaintenanceSurvivesRestartAndReboot(t *testing.T) {
	f := newFleet(t)
	cfg := f.testConfig("kvm1", "boot-1")
	hv := virt.NewFake(virt.Capacity{CPUs: 1, MemoryMiB: 1024}, virt.VM{Name: "old", State: virt.StateShutoff, VCPUs: 1, MemoryMiB: 256})
	ctx := context.Background()

	addr, stop := serveStoppable(t, cfg, hv)
	entered, err := f.client("kvm1", addr).EnterMaintenance(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stop()
	file := filepath.Join(cfg.StateDir, MaintenanceFile)
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file: %v %v, want mode 0600", fi, err)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(cfg.StateDir, ".*tmp*")); len(leftovers) > 0 {
		t.Errorf("temp files left: %v", leftovers)
	}

	check := func(what string) *api.Client {
		t.Helper()
		addr, stop := serveStoppable(t, cfg, hv)
		t.Cleanup(stop)
		c := f.client("kvm1", addr)
		s, err := c.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if s.AgentState != api.AgentStateInMaintenance {
			t.Errorf("%s: agent_state %q, want %q", what, s.AgentState, api.AgentStateInMaintenance)
		}
		if m, err := c.Maintenance(ctx); err != nil || m != entered {
			t.Errorf("%s: maintenance = %+v, %v; want %+v", what, m, err, entered)
		}
		wantCode(t, what+": start", c.StartVM(ctx, "old"), http.StatusConflict, api.CodeInMaintenance)
		return c
	}
	check("after agent restart")

	// A host reboot: the boot id changes, the state dir stays.
	writeFile(t, cfg.BootIDFile, []byte("boot-2\n"))
	c := check("after host reboot")
	if s, _ := c.Status(ctx); s.BootID != "boot-2" {
		t.Errorf("boot id %q", s.BootID)
	}
	if _, err := c.CancelMaintenance(ctx); err != nil {
		t.Fatal(err)
	}

	addr, stop = serveStoppable(t, cfg, hv)
	defer stop()
	if s, err := f.client("kvm1", addr).Status(ctx); err != nil || s.AgentState != api.AgentStateUp {
		t.Errorf("restart after cancel: %q %v, want Up", s.AgentState, err)
	}
}

func TestMaintenanceUnreadableFileMeansMaintenance(t *testing.T) {
	for name, content := range map[string]string{
		"garbage":       "{not json",
		"newer version": `{"version":99,"agent_state":"Up"}`,
		"unknown state": `{"version":1,"agent_state":"Sleeping"}`,
	} {
		t.Run(name, func(t *testing.T) {
			f := newFleet(t)
			cfg := f.testConfig("kvm1", "b")
			if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
				t.Fatal(err)
			}
			file := filepath.Join(cfg.StateDir, MaintenanceFile)
			writeFile(t, file, []byte(content))
			c := f.client("kvm1", serve(t, cfg, virt.NewFake(virt.Capacity{CPUs: 1, MemoryMiB: 1024})))
			ctx := context.Background()
			m, err := c.Maintenance(ctx)
			if err != nil || m.AgentState != string(api.AgentStateInMaintenance) || m.Since.IsZero() {
				t.Fatalf("maintenance = %+v, %v; want hostInMaintenance (the safe state)", m, err)
			}
			if _, err := c.CancelMaintenance(ctx); err != nil {
				t.Fatal(err)
			}
			var st agentState
			if res, err := st.load(file, time.Now()); err != nil || res.Distrusted != nil || st.Get() != api.AgentStateUp {
				t.Errorf("file after cancel: %+v %v %q, want a valid Up", res, err, st.Get())
			}
		})
	}
}

// Entering maintenance waits for a VM start in flight, so that once it has answered no VM
// starts on the host.
func TestEnterMaintenanceWaitsForVMStart(t *testing.T) {
	f := newFleet(t)
	hv := virt.NewFake(virt.Capacity{CPUs: 4, MemoryMiB: 4096})
	started, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	hv.Fail = func(method, _ string) error {
		if method == "DefineAndStart" {
			once.Do(func() { close(started); <-release })
		}
		return nil
	}
	c := f.client("kvm1", serve(t, f.testConfig("kvm1", "b"), hv))
	ctx := context.Background()
	x, err := virt.RenderDomainXML(virt.VMSpec{Name: "slow", VCPUs: 1, MemoryMiB: 256})
	if err != nil {
		t.Fatal(err)
	}
	defineErr := make(chan error, 1)
	go func() { defineErr <- c.DefineAndStartVM(ctx, x) }()
	<-started
	entered := make(chan error, 1)
	go func() {
		_, err := c.EnterMaintenance(ctx)
		entered <- err
	}()
	select {
	case err := <-entered:
		t.Fatalf("EnterMaintenance returned (%v) while a VM start was in flight", err)
	case <-time.After(200 * time.Millisecond):
	}
	// Status does not wait behind the gate.
	if s, err := c.Status(ctx); err != nil || s.AgentState != api.AgentStateUp {
		t.Errorf("status during the wait: %q %v", s.AgentState, err)
	}
	close(release)
	if err := <-defineErr; err != nil {
		t.Fatalf("define in flight: %v", err)
	}
	if err := <-entered; err != nil {
		t.Fatalf("EnterMaintenance: %v", err)
	}
	wantCode(t, "define after enter", c.DefineAndStartVM(ctx, x), http.StatusConflict, api.CodeInMaintenance)
}
