package virt

import (
	"fmt"
	"slices"
	"strings"
	"sync"
)

// Fake is an in-memory Hypervisor for unit tests of the packages that use
// one. It keeps VMs by name and stores their domain XML as given.
type Fake struct {
	mu       sync.Mutex
	capacity Capacity
	vms      map[string]fakeVM

	// Fail, when set, is called first by every method with the method name
	// ("NodeInfo", "ListVMs", "DomainXML", "DefineAndStart", "Start",
	// "Destroy", "Undefine", "Migrate", "Close") and the VM name (or ""). A
	// non-nil result is returned instead of doing the call.
	Fail func(method, name string) error

	// Peers maps a destination URI to the Fake that Migrate moves VMs to;
	// Migrate to an unknown URI returns ErrMigrationUnsupported.
	Peers map[string]*Fake
}

type fakeVM struct {
	vm  VM
	xml string
}

var _ Hypervisor = (*Fake)(nil)

// NewFake returns a Fake host of the given size holding vms.
func NewFake(capacity Capacity, vms ...VM) *Fake {
	f := &Fake{capacity: capacity, vms: map[string]fakeVM{}}
	for _, vm := range vms {
		f.Put(vm)
	}
	return f
}

// Put adds or replaces a VM as is, with its state.
func (f *Fake) Put(vm VM) {
	f.mu.Lock()
	defer f.mu.Unlock()
	vm.Disks = slices.Clone(vm.Disks)
	vm.RequiredTags = slices.Clone(vm.RequiredTags)
	vm.AffinityGroups = slices.Clone(vm.AffinityGroups)
	f.vms[vm.Name] = fakeVM{vm: vm}
}

func (f *Fake) fail(method, name string) error {
	if f.Fail == nil {
		return nil
	}
	return f.Fail(method, name)
}

// NodeInfo returns the capacity given to NewFake.
func (f *Fake) NodeInfo() (Capacity, error) {
	if err := f.fail("NodeInfo", ""); err != nil {
		return Capacity{}, err
	}
	return f.capacity, nil
}

// ListVMs returns copies of the VMs, sorted by name.
func (f *Fake) ListVMs() ([]VM, error) {
	if err := f.fail("ListVMs", ""); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]VM, 0, len(f.vms))
	for _, v := range f.vms {
		vm := v.vm
		vm.Disks = slices.Clone(vm.Disks)
		vm.RequiredTags = slices.Clone(vm.RequiredTags)
		vm.AffinityGroups = slices.Clone(vm.AffinityGroups)
		out = append(out, vm)
	}
	slices.SortFunc(out, func(a, b VM) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// DomainXML returns the XML the VM was defined with, or renders one.
func (f *Fake) DomainXML(name string) (string, error) {
	if err := f.fail("DomainXML", name); err != nil {
		return "", err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.vms[name]
	if !ok {
		return "", fmt.Errorf("domain xml: vm %q: %w", name, ErrVMNotFound)
	}
	if v.xml != "" {
		return v.xml, nil
	}
	return RenderDomainXML(VMSpec{
		Name: v.vm.Name, UUID: v.vm.UUID, VCPUs: v.vm.VCPUs, MemoryMiB: v.vm.MemoryMiB,
		Disks: v.vm.Disks, Tags: v.vm.RequiredTags, Groups: v.vm.AffinityGroups,
	})
}

// DefineAndStart parses the XML with ParseDomainXML and adds the VM running. The fake reads a
// definition exactly as written, so check runs on xml itself.
func (f *Fake) DefineAndStart(xml string, check DomainCheck) error {
	vm, err := ParseDomainXML(xml)
	if err != nil {
		return fmt.Errorf("define vm: %w", err)
	}
	if check == nil {
		return fmt.Errorf("define vm %q: %w", vm.Name, errNoCheck)
	}
	if err := check(xml); err != nil {
		return fmt.Errorf("define vm %q: the hypervisor's reading of the definition: %w", vm.Name, err)
	}
	if err := f.fail("DefineAndStart", vm.Name); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if old, ok := f.vms[vm.Name]; ok && old.vm.State.Active() {
		return fmt.Errorf("define vm %q: %w", vm.Name, ErrVMRunning)
	}
	vm.State = StateRunning
	f.vms[vm.Name] = fakeVM{vm: vm, xml: xml}
	return nil
}

// Start marks the VM running.
func (f *Fake) Start(name string) error {
	return f.update("Start", name, func(v *fakeVM) error {
		if v.vm.State.Active() {
			return fmt.Errorf("start vm %q: %w", name, ErrVMRunning)
		}
		v.vm.State = StateRunning
		return nil
	})
}

// Destroy marks the VM shut off.
func (f *Fake) Destroy(name string) error {
	return f.update("Destroy", name, func(v *fakeVM) error {
		v.vm.State = StateShutoff
		return nil
	})
}

// Undefine removes a VM that is not running.
func (f *Fake) Undefine(name string) error {
	return f.update("Undefine", name, func(v *fakeVM) error {
		if v.vm.State.Active() {
			return fmt.Errorf("undefine vm %q: %w", name, ErrVMRunning)
		}
		delete(f.vms, name)
		return nil
	})
}

func (f *Fake) update(method, name string, op func(*fakeVM) error) error {
	if err := f.fail(method, name); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.vms[name]
	if !ok {
		return fmt.Errorf("%s: vm %q: %w", strings.ToLower(method), name, ErrVMNotFound)
	}
	if err := op(&v); err != nil {
		return err
	}
	if _, still := f.vms[name]; still {
		f.vms[name] = v
	}
	return nil
}

// Migrate moves the VM, running, to the Peers entry for destURI.
func (f *Fake) Migrate(name, destURI string, _ MigrateOptions) error {
	if err := f.fail("Migrate", name); err != nil {
		return err
	}
	dst, ok := f.Peers[destURI]
	if !ok {
		return fmt.Errorf("migrate vm %q: %w", name, ErrMigrationUnsupported)
	}
	f.mu.Lock()
	v, ok := f.vms[name]
	if ok {
		delete(f.vms, name)
	}
	f.mu.Unlock()
	if !ok {
		return fmt.Errorf("migrate vm %q: %w", name, ErrVMNotFound)
	}
	v.vm.State = StateRunning
	dst.mu.Lock()
	dst.vms[name] = v
	dst.mu.Unlock()
	return nil
}

// Close does nothing but honour Fail.
func (f *Fake) Close() error {
	return f.fail("Close", "")
}
