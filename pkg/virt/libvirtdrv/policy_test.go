package libvirtdrv

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/kvmctl/kvmctl/pkg/virt"
	"github.com/kvmctl/kvmctl/pkg/virt/virttest"
)

// The check runs on libvirt's own reading of a definition: a refusal undefines a new VM, or puts
// back the definition a redefine replaced, and the node file keeps neither.
func TestDefineChecksLibvirtsReading(t *testing.T) {
	dir := t.TempDir()
	uri, _ := writeNode(t, dir, virt.NodeSpec{HostName: "kvm1", CPUs: 4, MemoryMiB: 4096, VMs: []virt.VMSpec{
		{Name: "old", VCPUs: 1, MemoryMiB: 256},
	}})
	h := open(t, uri)
	// libvirt adds <clock> to every definition: a check that refuses it sees libvirt's reading.
	noClock := func(x string) error {
		if strings.Contains(x, "<clock") {
			return fmt.Errorf("%w: <clock> found", virt.ErrDomainRefused)
		}
		return nil
	}
	fresh, _ := virt.RenderDomainXML(virt.VMSpec{Name: "new", VCPUs: 1, MemoryMiB: 256})
	if strings.Contains(fresh, "<clock") {
		t.Fatal("the definition sent already has <clock>")
	}
	if err := h.DefineAndStart(fresh, noClock); !errors.Is(err, virt.ErrDomainRefused) || !strings.Contains(err.Error(), "libvirt's reading") {
		t.Errorf("DefineAndStart(new) = %v, want a refusal of libvirt's reading", err)
	}
	redefine, _ := virt.RenderDomainXML(virt.VMSpec{Name: "old", VCPUs: 3, MemoryMiB: 256})
	if err := h.DefineAndStart(redefine, noClock); !errors.Is(err, virt.ErrDomainRefused) {
		t.Errorf("DefineAndStart(redefine) = %v, want a refusal", err)
	}
	if err := h.DefineAndStart(fresh, nil); err == nil || !strings.Contains(err.Error(), "no domain check") {
		t.Errorf("DefineAndStart without a check = %v, want a refusal", err)
	}
	h.Close()
	vms := listVMs(t, open(t, uri))
	if len(vms) != 1 || vms[0].Name != "old" || vms[0].VCPUs != 1 || vms[0].State != virt.StateShutoff {
		t.Errorf("after refused defines, reopened: %+v; want only old, as it was (1 vCPU, shut off)", vms)
	}
}

// Called without the agent's check before it, the attack definitions are caught on libvirt's
// own reading (a namespaced or DOCTYPE-defaulted type='block' reads back as a plain one) and
// undefined again, but for what libvirt drops as it reads (the test driver of libvirt 9.0 drops
// a <dataStore>): what libvirt understood is what runs.
func TestDefineRefusesAttacksOnLibvirtsReading(t *testing.T) {
	dir := t.TempDir()
	attacks, err := virttest.Attacks(dir)
	if err != nil {
		t.Fatal(err)
	}
	uri, _ := writeNode(t, dir, virt.NodeSpec{HostName: "kvm1", CPUs: 4, MemoryMiB: 4096})
	h := open(t, uri)
	for _, a := range attacks {
		err := h.DefineAndStart(a.XML, policy(dir))
		if err == nil {
			x, _ := h.DomainXML("evil")
			t.Logf("%s: libvirt dropped what the policy refuses", a.Name)
			if cerr := virt.CheckDomain(x, []string{dir}); cerr != nil {
				t.Errorf("%s: defined although libvirt's reading is refused: %v", a.Name, cerr)
			}
			_ = h.Destroy("evil")
			_ = h.Undefine("evil")
			continue
		}
		if vms := listVMs(t, h); len(vms) != 0 {
			t.Fatalf("%s: %v; left %+v defined", a.Name, err, vms)
		}
	}
	for _, name := range []string{"namespaced attributes", "DOCTYPE attribute defaults"} {
		for _, a := range attacks {
			if a.Name == name {
				err := h.DefineAndStart(a.XML, policy(dir))
				if !strings.Contains(errString(err), "libvirt's reading of the definition: domain xml refused: disk 2: type='block' is not allowed") {
					t.Errorf("%s: %v; want libvirt's reading refused for its block disk", name, err)
				}
			}
		}
	}
	for _, d := range virttest.Normal(dir) {
		if d.Name == "full vm" {
			continue // a qemu domain: the test driver defines type 'test' only
		}
		if err := h.DefineAndStart(d.XML, policy(dir)); err != nil {
			t.Errorf("%s: %v", d.Name, err)
		}
		vm, _ := virt.ParseDomainXML(d.XML)
		if err := h.Destroy(vm.Name); err != nil {
			t.Fatal(err)
		}
		if err := h.Undefine(vm.Name); err != nil {
			t.Fatal(err)
		}
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
