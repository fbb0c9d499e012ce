package virt

import (
	"errors"
	"testing"
)

func TestTransferRollsBackWhenSourceWontStop(t *testing.T) {
	src := NewFake(Capacity{CPUs: 2, MemoryMiB: 2048}, VM{Name: "vm1", State: StateRunning, VCPUs: 1, MemoryMiB: 256})
	dst := NewFake(Capacity{CPUs: 2, MemoryMiB: 2048})
	boom := errors.New("boom")
	src.Fail = func(method, _ string) error {
		if method == "Destroy" {
			return boom
		}
		return nil
	}
	if err := Transfer(src, dst, "vm1", func(string) error { return nil }); !errors.Is(err, boom) {
		t.Fatalf("Transfer = %v, want boom", err)
	}
	if vms, err := dst.ListVMs(); err != nil || len(vms) != 0 {
		t.Errorf("target not rolled back: %+v, %v", vms, err)
	}
	if vms, err := src.ListVMs(); err != nil || len(vms) != 1 || vms[0].State != StateRunning {
		t.Errorf("source = %+v, %v; want vm1 running", vms, err)
	}
}
