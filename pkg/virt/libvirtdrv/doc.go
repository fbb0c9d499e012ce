// Package libvirtdrv is virt.Hypervisor on libvirt, the only code of kvmctl that links libvirt
// (cgo, libvirt.org/go/libvirt). Only the kvmagent command imports it, so that kvmctl and the
// kvmagent-stage runner build without cgo and start without loading libvirt's shared libraries.
//
// In production the agent opens a qemu URI (qemu:///system). In the lab each simulated host
// opens its own test-driver node file (test:///abs/node.xml); because the test driver keeps its
// state in memory only, Libvirt rewrites that file after every change (with virt's node-file
// helpers) so that an agent restart sees the same VMs.
package libvirtdrv
