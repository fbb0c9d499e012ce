package agent

import (
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/virt"
	"github.com/kvmctl/kvmctl/pkg/virt/libvirtdrv"
)

// A VM moves between two lab hosts through their agents (the test driver cannot migrate):
// definition from A, define and start on B, remove from A. Both node files keep the result.
func TestTransferBetweenAgents(t *testing.T) {
	f := newFleet(t)
	disk := filepath.Join(t.TempDir(), "web1.img")
	uriA := newTestNode(t, virt.NodeSpec{HostName: "kvm1", CPUs: 4, MemoryMiB: 8192, VMs: []virt.VMSpec{
		{Name: "web1", VCPUs: 2, MemoryMiB: 1024, Disks: []string{disk}, Tags: []string{"ssd"},
			Groups: []virt.AffinityGroup{{Name: "web", Type: virt.GroupHostAntiAffinity}}, Running: true},
		{Name: "db1", VCPUs: 1, MemoryMiB: 512, Running: true},
	}})
	uriB := newTestNode(t, virt.NodeSpec{HostName: "kvm2", CPUs: 4, MemoryMiB: 8192})
	cfgA, cfgB := f.testConfig("kvm1", "a"), f.testConfig("kvm2", "b")
	cfgA.LibvirtURI, cfgB.LibvirtURI = uriA, uriB
	ctx := context.Background()

	hvA, err := libvirtdrv.Open(uriA)
	if err != nil {
		t.Fatal(err)
	}
	hvB, err := libvirtdrv.Open(uriB)
	if err != nil {
		t.Fatal(err)
	}
	addrA, stopA := serveStoppable(t, cfgA, hvA)
	addrB, stopB := serveStoppable(t, cfgB, hvB)
	a, b := f.client("kvm1", addrA), f.client("kvm2", addrB)

	// The source is in maintenance while it is emptied, as the engine does it.
	if _, err := a.EnterMaintenance(ctx); err != nil {
		t.Fatal(err)
	}
	x, err := a.VMXML(ctx, "web1")
	if err != nil {
		t.Fatalf("VMXML: %v", err)
	}
	if err := b.DefineAndStartVM(ctx, x); err != nil {
		t.Fatalf("DefineAndStartVM on B: %v", err)
	}
	if err := a.RemoveVM(ctx, "web1"); err != nil {
		t.Fatalf("RemoveVM on A: %v", err)
	}

	check := func(what string, a, b *api.Client) {
		t.Helper()
		if got := vmStates(t, a); got["web1"] != "" || got["db1"] != "running" {
			t.Errorf("%s: A has %v, want db1 only", what, got)
		}
		s, err := b.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(s.VMs) != 1 || s.VMs[0].Name != "web1" || s.VMs[0].State != "running" {
			t.Fatalf("%s: B has %+v, want web1 running", what, s.VMs)
		}
		vm := s.VMs[0]
		if vm.UUID != virt.NameUUID("web1") || vm.VCPUs != 2 || vm.MemoryMiB != 1024 ||
			len(vm.Disks) != 1 || vm.Disks[0] != disk || len(vm.Tags) != 1 || len(vm.Groups) != 1 {
			t.Errorf("%s: web1 on B lost its definition: %+v", what, vm)
		}
		if s.Allocation != (api.Resources{CPUs: 2, MemoryMiB: 1024}) {
			t.Errorf("%s: B allocation %+v", what, s.Allocation)
		}
	}
	check("live", a, b)

	// Restart both agents on new connections to the same node files.
	stopA()
	stopB()
	if err := hvA.Close(); err != nil {
		t.Fatal(err)
	}
	if err := hvB.Close(); err != nil {
		t.Fatal(err)
	}
	addrA, _ = serveStoppable(t, cfgA, openNode(t, uriA))
	addrB, _ = serveStoppable(t, cfgB, openNode(t, uriB))
	a, b = f.client("kvm1", addrA), f.client("kvm2", addrB)
	check("after restart", a, b)
	if s, err := a.Status(ctx); err != nil || s.AgentState != api.AgentStateInMaintenance {
		t.Errorf("A after restart: %q %v, want still in maintenance", s.AgentState, err)
	}
}

func TestMigrateOnTestDriverUnsupported(t *testing.T) {
	f := newFleet(t)
	c := f.client("kvm1", serveWeb1(t, f))
	err := c.MigrateVM(context.Background(), "web1", api.MigrateRequest{DestURI: "qemu+tls://kvm2/system"})
	ae := wantCode(t, "migrate", err, http.StatusNotImplemented, api.CodeMigrationUnsupported)
	mustContain(t, ae.Message, "web1", `"test"`)
	if got := vmStates(t, c); got["web1"] != "running" {
		t.Errorf("web1 after refused migration: %v", got)
	}
}

func TestMigrate(t *testing.T) {
	f := newFleet(t)
	dst := virt.NewFake(virt.Capacity{CPUs: 4, MemoryMiB: 4096})
	src := virt.NewFake(virt.Capacity{CPUs: 4, MemoryMiB: 4096}, virt.VM{Name: "web1", State: virt.StateRunning, VCPUs: 1, MemoryMiB: 512})
	src.Peers = map[string]*virt.Fake{"qemu+tls://kvm2/system": dst}
	var migrations atomic.Int32
	src.Fail = func(method, _ string) error {
		if method == "Migrate" {
			migrations.Add(1)
		}
		return nil
	}
	c := f.client("kvm1", serve(t, f.testConfig("kvm1", "b"), src))
	ctx := context.Background()

	for _, tc := range []struct {
		name string
		req  api.MigrateRequest
	}{
		{"no dest", api.MigrateRequest{}},
		{"not a uri", api.MigrateRequest{DestURI: "kvm2"}},
		{"negative timeout", api.MigrateRequest{DestURI: "qemu+tls://kvm2/system", TimeoutS: -1}},
		{"timeout over the maximum", api.MigrateRequest{DestURI: "qemu+tls://kvm2/system", TimeoutS: int(api.MaxMigrateTimeout.Seconds()) + 1}},
	} {
		wantCode(t, tc.name, c.MigrateVM(ctx, "web1", tc.req), http.StatusBadRequest, api.CodeBadRequest)
	}
	// libvirt would follow any of these as root: a program, a socket, key files, another user,
	// port, path or driver, a query or fragment, a host the resolver reads otherwise.
	for _, uri := range []string{
		"qemu+ext:///system?command=/tmp/evil",
		"qemu+ssh://kvm2/system",
		"qemu+ssh://root@kvm2/system?keyfile=/root/.ssh/id_rsa&known_hosts_verify=ignore",
		"qemu+tls://kvm2/system?pkipath=/tmp/evil",
		"qemu+tls://kvm2/system?no_verify=1",
		"qemu+tls://kvm2/system?socket=/run/evil.sock",
		"qemu+unix:///system?socket=/run/evil.sock",
		"qemu+tcp://kvm2/system",
		"qemu:///system",
		"test:///default",
		"qemu+tls://root@kvm2/system",
		"qemu+tls://kvm2:16514/system",
		"qemu+tls://kvm2/session",
		"qemu+tls://kvm2/system/",
		"qemu+tls://kvm2/system#x",
		"qemu+tls:///system",
		"QEMU+TLS://kvm2/system",
		"qemu+tls://kvm2/system\n",
		"qemu+tls://[fe80::1%25eth0]/system",
		"qemu+tls://fd00::4/system",
		"qemu+tls://127.1/system",
		"qemu+tls://0x7f.1/system",
		"qemu+tls://kvm_2/system",
		"qemu+tls://kvm2%2Fx/system",
	} {
		ae := wantCode(t, uri, c.MigrateVM(ctx, "web1", api.MigrateRequest{DestURI: uri}), http.StatusBadRequest, api.CodeBadRequest)
		mustContain(t, ae.Message, "dest_uri")
	}
	if n := migrations.Load(); n != 0 {
		t.Fatalf("a refused dest_uri reached the hypervisor %d times", n)
	}
	// The forms kvmctl builds pass the check (the fake knows kvm2 only).
	for _, uri := range []string{"qemu+tls://kvm3.example.net/system", "qemu+tls://10.0.0.12/system", "qemu+tls://[fd00::4]/system"} {
		wantCode(t, uri, c.MigrateVM(ctx, "web1", api.MigrateRequest{DestURI: uri}), http.StatusNotImplemented, api.CodeMigrationUnsupported)
	}

	// Allowed in maintenance: it moves a VM out.
	if _, err := c.EnterMaintenance(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.MigrateVM(ctx, "web1", api.MigrateRequest{DestURI: "qemu+tls://kvm2/system", TimeoutS: 60}); err != nil {
		t.Fatalf("MigrateVM: %v", err)
	}
	if vms, _ := src.ListVMs(); len(vms) != 0 {
		t.Errorf("source still has %+v", vms)
	}
	if vms, _ := dst.ListVMs(); len(vms) != 1 || vms[0].State != virt.StateRunning {
		t.Errorf("target has %+v, want web1 running", vms)
	}
}

func TestVMErrors(t *testing.T) {
	f := newFleet(t)
	c := f.client("kvm1", serveWeb1(t, f))
	ctx := context.Background()

	_, err := c.VMXML(ctx, "nope")
	mustContain(t, wantCode(t, "VMXML unknown", err, http.StatusNotFound, api.CodeNotFound).Message, "nope")
	wantCode(t, "RemoveVM unknown", c.RemoveVM(ctx, "nope"), http.StatusNotFound, api.CodeNotFound)
	wantCode(t, "StartVM unknown", c.StartVM(ctx, "nope"), http.StatusNotFound, api.CodeNotFound)

	wantCode(t, "StartVM running", c.StartVM(ctx, "web1"), http.StatusConflict, api.CodeConflict)
	x, err := c.VMXML(ctx, "web1")
	if err != nil {
		t.Fatal(err)
	}
	wantCode(t, "define running", c.DefineAndStartVM(ctx, x), http.StatusConflict, api.CodeConflict)

	wantCode(t, "define empty", c.DefineAndStartVM(ctx, " "), http.StatusBadRequest, api.CodeBadRequest)
	wantCode(t, "define garbage", c.DefineAndStartVM(ctx, "<domain"), http.StatusBadRequest, api.CodeBadRequest)
	if err := c.StartVM(ctx, ""); err == nil || api.IsCode(err, api.CodeNotFound) {
		t.Errorf("StartVM(\"\") = %v, want a client-side refusal", err)
	}
}

func TestDefineAnswersVM(t *testing.T) {
	f := newFleet(t)
	hv := virt.NewFake(virt.Capacity{CPUs: 4, MemoryMiB: 4096})
	addr := serve(t, f.testConfig("kvm1", "b"), hv)
	x, err := virt.RenderDomainXML(virt.VMSpec{Name: "my vm/1", VCPUs: 2, MemoryMiB: 256, Tags: []string{"gpu"}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(api.DefineVMRequest{XML: x})
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: f.operatorTLS("kvm1")}}
	resp, err := hc.Post("https://"+addr+api.PathVMs, "application/json", strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var vm api.VM
	if err := json.NewDecoder(resp.Body).Decode(&vm); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusCreated || vm.Name != "my vm/1" || vm.State != "running" || vm.VCPUs != 2 || len(vm.Tags) != 1 {
		t.Errorf("POST %s = %d %+v, want 201 with the VM running", api.PathVMs, resp.StatusCode, vm)
	}

	// A name that needs escaping reaches the right VM.
	c := f.client("kvm1", addr)
	ctx := context.Background()
	if got, err := c.VMXML(ctx, "my vm/1"); err != nil || got != x {
		t.Errorf("VMXML(%q) = %v", "my vm/1", err)
	}
	if err := c.RemoveVM(ctx, "my vm/1"); err != nil {
		t.Fatalf("RemoveVM: %v", err)
	}
	if vms, _ := hv.ListVMs(); len(vms) != 0 {
		t.Errorf("after RemoveVM: %+v", vms)
	}
}

func TestHypervisorName(t *testing.T) {
	for uri, want := range map[string]string{
		"test:///default":          api.HypervisorTest,
		"test:///var/lab/kvm1.xml": api.HypervisorTest,
		"qemu:///system":           api.HypervisorQEMU,
		"qemu+tls://kvm2/system":   api.HypervisorQEMU,
		"QEMU+ssh://root@h/system": api.HypervisorQEMU,
		"":                         "",
	} {
		if got := hypervisorName(uri); got != want {
			t.Errorf("hypervisorName(%q) = %q, want %q", uri, got, want)
		}
	}
}
