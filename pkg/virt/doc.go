// Package virt is the agent's view of its hypervisor: a small Hypervisor interface and a fake
// of it, the kvmctl placement metadata kept in each domain's XML, and the lab helpers that build
// and rewrite libvirt test-driver node files. It is pure Go.
//
// The libvirt implementation of Hypervisor is in virt/libvirtdrv, the only package that links
// libvirt (cgo); only the kvmagent command imports it, so that kvmctl, which uses this package
// through the lab, builds with CGO_ENABLED=0.
package virt
