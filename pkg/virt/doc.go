// Package virt is the agent's view of its hypervisor: a small Hypervisor
// interface, its libvirt implementation, the kvmctl placement metadata kept in
// each domain's XML, and the lab helpers that build libvirt test-driver node
// files.
//
// In production the agent opens a qemu URI (qemu:///system). In the lab each
// simulated host opens its own test-driver node file (test:///abs/node.xml);
// because the test driver keeps its state in memory only, Libvirt rewrites
// that file after every change so that an agent restart sees the same VMs.
package virt
