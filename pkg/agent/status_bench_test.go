package agent

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/kvmctl/kvmctl/pkg/virt"
	"github.com/kvmctl/kvmctl/pkg/virt/libvirtdrv"
)

// BenchmarkStatus measures GET /v1/status's gathering on libvirt's test driver with 100 VMs: the
// listing alone, and with each VM's definition fetched and hashed (api.VM.DefinitionHash). The
// test driver runs in-process; on qemu:///system each definition is one more call to libvirtd.
func BenchmarkStatus(b *testing.B) {
	spec := virt.NodeSpec{HostName: "kvm1", CPUs: 64, MemoryMiB: 1 << 20}
	for i := range 100 {
		spec.VMs = append(spec.VMs, virt.VMSpec{Name: fmt.Sprintf("vm%03d", i), VCPUs: 1, MemoryMiB: 1024,
			Disks: []string{fmt.Sprintf("/var/lib/libvirt/images/vm%03d.qcow2", i)}, Running: i%2 == 0})
	}
	xml, err := virt.NodeXML(spec)
	if err != nil {
		b.Fatal(err)
	}
	node := filepath.Join(b.TempDir(), "node.xml")
	writeFile(b, node, xml)
	hv, err := libvirtdrv.Open("test://" + node)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { hv.Close() })
	b.Run("list", func(b *testing.B) {
		for b.Loop() {
			if _, err := hv.ListVMs(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("list+definitions", func(b *testing.B) {
		for b.Loop() {
			vms, err := hv.ListVMs()
			if err != nil {
				b.Fatal(err)
			}
			for _, vm := range vms {
				x, err := hv.DomainXML(vm.Name)
				if err != nil {
					b.Fatal(err)
				}
				_ = definitionHash(x)
			}
		}
	})
}
