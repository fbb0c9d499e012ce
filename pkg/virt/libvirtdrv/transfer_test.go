package libvirtdrv

import (
	"errors"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/kvmctl/kvmctl/pkg/virt"
)

// virt.Transfer between two test-driver nodes: the move sticks across a reopen (an agent restart).
func TestTransferBetweenTestNodes(t *testing.T) {
	dir := t.TempDir()
	disk := filepath.Join(dir, "vm1.img")
	uriA, _ := writeNode(t, dir, virt.NodeSpec{HostName: "kvm1", CPUs: 4, MemoryMiB: 4096, VMs: []virt.VMSpec{
		{Name: "vm1", VCPUs: 2, MemoryMiB: 1024, Disks: []string{disk}, Tags: []string{"ssd"}, Running: true},
	}})
	uriB, _ := writeNode(t, dir, virt.NodeSpec{HostName: "kvm2", CPUs: 4, MemoryMiB: 4096})
	a, b := open(t, uriA), open(t, uriB)
	before := listVMs(t, a)

	if err := virt.Transfer(a, b, "vm1", policy(dir)); err != nil {
		t.Fatalf("Transfer: %v", err)
	}
	if vms := listVMs(t, a); len(vms) != 0 {
		t.Errorf("source still has %+v", vms)
	}
	if vms := listVMs(t, b); !reflect.DeepEqual(vms, before) {
		t.Errorf("target has %+v, want %+v", vms, before)
	}

	// Agents restart: the move sticks on both sides.
	a.Close()
	b.Close()
	if vms := listVMs(t, open(t, uriA)); len(vms) != 0 {
		t.Errorf("source after restart has %+v", vms)
	}
	if vms := listVMs(t, open(t, uriB)); !reflect.DeepEqual(vms, before) {
		t.Errorf("target after restart has %+v, want %+v", vms, before)
	}
}

func TestTransferTargetFailsLeavesSource(t *testing.T) {
	dir := t.TempDir()
	spec := virt.VMSpec{Name: "vm1", VCPUs: 1, MemoryMiB: 256, Running: true}
	uriA, _ := writeNode(t, dir, virt.NodeSpec{HostName: "kvm1", CPUs: 2, MemoryMiB: 2048, VMs: []virt.VMSpec{spec}})
	// The target already runs a VM of that name, so it refuses the definition.
	uriB, _ := writeNode(t, dir, virt.NodeSpec{HostName: "kvm2", CPUs: 2, MemoryMiB: 2048, VMs: []virt.VMSpec{spec}})
	a, b := open(t, uriA), open(t, uriB)

	err := virt.Transfer(a, b, "vm1", policy(dir))
	if !errors.Is(err, virt.ErrVMRunning) {
		t.Fatalf("Transfer = %v, want ErrVMRunning", err)
	}
	if got := vmNames(listVMs(t, a)); got["vm1"] != virt.StateRunning {
		t.Errorf("source = %v, want vm1 running", got)
	}
	if err := virt.Transfer(a, b, "nope", policy(dir)); !errors.Is(err, virt.ErrVMNotFound) {
		t.Errorf("Transfer(nope) = %v, want ErrVMNotFound", err)
	}
}
