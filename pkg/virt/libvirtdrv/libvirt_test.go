package libvirtdrv

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/kvmctl/kvmctl/pkg/virt"
)

// writeNode writes a node file for spec into a temp dir and returns its test:// URI.
func writeNode(t *testing.T, dir string, spec virt.NodeSpec) (uri, path string) {
	t.Helper()
	data, err := virt.NodeXML(spec)
	if err != nil {
		t.Fatalf("NodeXML: %v", err)
	}
	path = filepath.Join(dir, spec.HostName+".xml")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return "test://" + path, path
}

// policy is the agent's check of a definition with vm.disk.dirs = dir.
func policy(dir string) virt.DomainCheck {
	return func(x string) error { return virt.CheckDomain(x, []string{dir}) }
}

func open(t *testing.T, uri string) *Libvirt {
	t.Helper()
	h, err := Open(uri)
	if err != nil {
		t.Fatalf("Open(%s): %v", uri, err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

func listVMs(t *testing.T, h virt.Hypervisor) []virt.VM {
	t.Helper()
	vms, err := h.ListVMs()
	if err != nil {
		t.Fatalf("ListVMs: %v", err)
	}
	return vms
}

func vmNames(vms []virt.VM) map[string]virt.State {
	m := map[string]virt.State{}
	for _, vm := range vms {
		m[vm.Name] = vm.State
	}
	return m
}

func TestNodeXMLLoadsInTestDriver(t *testing.T) {
	dir := t.TempDir()
	disk := func(n string) string { return filepath.Join(dir, n+".img") }
	spec := virt.NodeSpec{HostName: "kvm1", CPUs: 8, MemoryMiB: 16384, VMs: []virt.VMSpec{
		{Name: "db1", VCPUs: 1, MemoryMiB: 1024, Disks: []string{disk("db1-root"), disk("db1-data")},
			Tags: []string{"ssd"}, Groups: []virt.AffinityGroup{{Name: "db", Type: virt.GroupHostAntiAffinity}}, Running: true},
		{Name: "web1", VCPUs: 1, MemoryMiB: 1024, Disks: []string{disk("web1")},
			Groups: []virt.AffinityGroup{{Name: "web", Type: virt.GroupHostAntiAffinity}, {Name: "front", Type: virt.GroupHostAffinity}}, Running: true},
		{Name: "web2", UUID: "0b8c1f0e-5f7c-4c1e-9a57-2f1d0c6c8a11", VCPUs: 1, MemoryMiB: 1024, Disks: []string{disk("web2")},
			Tags: []string{"ssd", "gpu"}, Running: true},
	}}
	uri, _ := writeNode(t, dir, spec)
	h := open(t, uri)

	got, err := h.NodeInfo()
	if err != nil {
		t.Fatal(err)
	}
	if want := (virt.Capacity{CPUs: 8, MemoryMiB: 16384}); got != want {
		t.Errorf("NodeInfo = %+v, want %+v", got, want)
	}

	want := []virt.VM{
		{Name: "db1", UUID: virt.NameUUID("db1"), State: virt.StateRunning, VCPUs: 1, MemoryMiB: 1024,
			Disks: []string{disk("db1-root"), disk("db1-data")}, RequiredTags: []string{"ssd"},
			AffinityGroups: []virt.AffinityGroup{{Name: "db", Type: virt.GroupHostAntiAffinity}}},
		{Name: "web1", UUID: virt.NameUUID("web1"), State: virt.StateRunning, VCPUs: 1, MemoryMiB: 1024,
			Disks:          []string{disk("web1")},
			AffinityGroups: []virt.AffinityGroup{{Name: "web", Type: virt.GroupHostAntiAffinity}, {Name: "front", Type: virt.GroupHostAffinity}}},
		{Name: "web2", UUID: "0b8c1f0e-5f7c-4c1e-9a57-2f1d0c6c8a11", State: virt.StateRunning, VCPUs: 1, MemoryMiB: 1024,
			Disks: []string{disk("web2")}, RequiredTags: []string{"ssd", "gpu"}},
	}
	if vms := listVMs(t, h); !reflect.DeepEqual(vms, want) {
		t.Errorf("ListVMs =\n%+v\nwant\n%+v", vms, want)
	}
	if a := virt.Allocation(want); a != (virt.Capacity{CPUs: 3, MemoryMiB: 3072}) {
		t.Errorf("Allocation = %+v", a)
	}
}

func TestNodeXMLStoppedVM(t *testing.T) {
	uri, _ := writeNode(t, t.TempDir(), virt.NodeSpec{HostName: "kvm1", CPUs: 2, MemoryMiB: 2048, VMs: []virt.VMSpec{
		{Name: "off", VCPUs: 1, MemoryMiB: 256},
		{Name: "on", VCPUs: 1, MemoryMiB: 256, Running: true},
	}})
	h := open(t, uri)
	if got, want := vmNames(listVMs(t, h)), map[string]virt.State{"off": virt.StateShutoff, "on": virt.StateRunning}; !reflect.DeepEqual(got, want) {
		t.Fatalf("states = %v, want %v", got, want)
	}
	if err := h.Start("off"); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if got := vmNames(listVMs(t, h))["off"]; got != virt.StateRunning {
		t.Fatalf("after Start: %s", got)
	}
}

func TestPersistAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	uri, path := writeNode(t, dir, virt.NodeSpec{HostName: "kvm1", CPUs: 4, MemoryMiB: 8192})
	def, err := virt.RenderDomainXML(virt.VMSpec{Name: "app", VCPUs: 2, MemoryMiB: 512,
		Disks: []string{filepath.Join(dir, "app.img")}, Tags: []string{"ssd"},
		Groups: []virt.AffinityGroup{{Name: "app", Type: virt.GroupHostAffinity}}})
	if err != nil {
		t.Fatal(err)
	}

	reopen := func(step string, want map[string]virt.State) []virt.VM {
		t.Helper()
		h := open(t, uri)
		defer h.Close()
		if c, err := h.NodeInfo(); err != nil || c != (virt.Capacity{CPUs: 4, MemoryMiB: 8192}) {
			t.Fatalf("%s: NodeInfo = %+v, %v", step, c, err)
		}
		vms := listVMs(t, h)
		if got := vmNames(vms); !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: after reopen %v, want %v", step, got, want)
		}
		return vms
	}

	h := open(t, uri)
	if err := h.DefineAndStart(def, policy(dir)); err != nil {
		t.Fatalf("DefineAndStart: %v", err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	vms := reopen("define", map[string]virt.State{"app": virt.StateRunning})
	want := virt.VM{Name: "app", UUID: virt.NameUUID("app"), State: virt.StateRunning, VCPUs: 2, MemoryMiB: 512,
		Disks: []string{filepath.Join(dir, "app.img")}, RequiredTags: []string{"ssd"},
		AffinityGroups: []virt.AffinityGroup{{Name: "app", Type: virt.GroupHostAffinity}}}
	if !reflect.DeepEqual(vms[0], want) {
		t.Errorf("reopened vm = %+v, want %+v", vms[0], want)
	}

	h = open(t, uri)
	if err := h.Destroy("app"); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	h.Close()
	reopen("destroy", map[string]virt.State{"app": virt.StateShutoff})

	h = open(t, uri)
	if err := h.Start("app"); err != nil {
		t.Fatalf("Start: %v", err)
	}
	h.Close()
	reopen("start", map[string]virt.State{"app": virt.StateRunning})

	h = open(t, uri)
	if err := h.Destroy("app"); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	if err := h.Undefine("app"); err != nil {
		t.Fatalf("Undefine: %v", err)
	}
	h.Close()
	reopen("undefine", map[string]virt.State{})

	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `name="kvm1"`) {
		t.Errorf("rewritten node file lost the host annotation:\n%s", data)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("node file mode = %v, want 0600", fi.Mode().Perm())
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*tmp*")); len(left) > 0 {
		t.Errorf("temp files left behind: %v", left)
	}
}

// A lab machine that loses power rewrites its host's node file with virt.PowerOffNode (the agent
// is dead by then): the test driver must load every VM shut off from it, whether the file was
// written by NodeXML or by persist.
func TestPowerOffNodeLoadsShutOff(t *testing.T) {
	dir := t.TempDir()
	uri, path := writeNode(t, dir, virt.NodeSpec{HostName: "kvm1", CPUs: 4, MemoryMiB: 8192, VMs: []virt.VMSpec{
		{Name: "a", VCPUs: 1, MemoryMiB: 512, Disks: []string{filepath.Join(dir, "a.img")}, Running: true},
	}})
	def, err := virt.RenderDomainXML(virt.VMSpec{Name: "b", VCPUs: 1, MemoryMiB: 512, Disks: []string{filepath.Join(dir, "b.img")}})
	if err != nil {
		t.Fatal(err)
	}
	h := open(t, uri)
	if err := h.DefineAndStart(def, policy(dir)); err != nil {
		t.Fatalf("DefineAndStart: %v", err)
	}
	h.Close()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	off, err := virt.PowerOffNode(data)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, off, 0o600); err != nil {
		t.Fatal(err)
	}
	h = open(t, uri)
	if got := vmNames(listVMs(t, h)); !reflect.DeepEqual(got, map[string]virt.State{"a": virt.StateShutoff, "b": virt.StateShutoff}) {
		t.Errorf("after a power loss the test driver loads %v, want a and b shut off", got)
	}
	// And they start again, as after a boot.
	if err := h.Start("a"); err != nil {
		t.Errorf("Start(a) after the power loss: %v", err)
	}
}

func TestDefaultURIDoesNotPersist(t *testing.T) {
	h := open(t, "test:///default")
	if h.nodeFile != "" {
		t.Fatalf("test:///default has node file %q", h.nodeFile)
	}
	if _, ok := vmNames(listVMs(t, h))["test"]; !ok {
		t.Fatal("test:///default has no vm named test")
	}
}

func TestErrors(t *testing.T) {
	dir := t.TempDir()
	uri, _ := writeNode(t, dir, virt.NodeSpec{HostName: "kvm1", CPUs: 2, MemoryMiB: 2048, VMs: []virt.VMSpec{
		{Name: "vm1", VCPUs: 1, MemoryMiB: 256, Running: true},
	}})
	h := open(t, uri)

	for name, err := range map[string]error{
		"Start":     h.Start("nope"),
		"Destroy":   h.Destroy("nope"),
		"Undefine":  h.Undefine("nope"),
		"DomainXML": func() error { _, err := h.DomainXML("nope"); return err }(),
	} {
		if !errors.Is(err, virt.ErrVMNotFound) {
			t.Errorf("%s(nope) = %v, want ErrVMNotFound", name, err)
		}
	}
	if err := h.Undefine("vm1"); !errors.Is(err, virt.ErrVMRunning) {
		t.Errorf("Undefine(running) = %v, want ErrVMRunning", err)
	}
	def, err := h.DomainXML("vm1")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.DefineAndStart(def, policy(dir)); !errors.Is(err, virt.ErrVMRunning) {
		t.Errorf("DefineAndStart(running) = %v, want ErrVMRunning", err)
	}
	if err := h.Migrate("vm1", "qemu+tls://kvm2/system", virt.MigrateOptions{}); !errors.Is(err, virt.ErrMigrationUnsupported) {
		t.Errorf("Migrate = %v, want ErrMigrationUnsupported", err)
	}
	if err := h.DefineAndStart("<domain", policy(dir)); err == nil {
		t.Error("DefineAndStart(garbage) succeeded")
	}
	// Destroy is idempotent; redefining a stopped VM is allowed.
	for range 2 {
		if err := h.Destroy("vm1"); err != nil {
			t.Fatalf("Destroy: %v", err)
		}
	}
	if err := h.DefineAndStart(def, policy(dir)); err != nil {
		t.Fatalf("DefineAndStart(stopped) = %v", err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := h.ListVMs(); err == nil {
		t.Error("ListVMs after Close succeeded")
	}
	if err := h.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	if _, err := Open("test:///" + filepath.Join(dir, "missing.xml")); err == nil {
		t.Error("Open(missing node file) succeeded")
	}
}

func TestConcurrentUse(t *testing.T) {
	dir := t.TempDir()
	var vms []virt.VMSpec
	for _, n := range []string{"a", "b", "c", "d"} {
		vms = append(vms, virt.VMSpec{Name: n, VCPUs: 1, MemoryMiB: 128, Running: true})
	}
	uri, _ := writeNode(t, dir, virt.NodeSpec{HostName: "kvm1", CPUs: 8, MemoryMiB: 4096, VMs: vms})
	h := open(t, uri)
	var wg sync.WaitGroup
	for _, vm := range vms {
		wg.Go(func() {
			for range 5 {
				if err := h.Destroy(vm.Name); err != nil {
					t.Error(err)
				}
				if err := h.Start(vm.Name); err != nil {
					t.Error(err)
				}
			}
		})
		wg.Go(func() {
			for range 5 {
				if _, err := h.ListVMs(); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	h.Close()
	h = open(t, uri)
	if got := virt.Allocation(listVMs(t, h)); got != (virt.Capacity{CPUs: 4, MemoryMiB: 512}) {
		t.Errorf("Allocation after reopen = %+v", got)
	}
}
