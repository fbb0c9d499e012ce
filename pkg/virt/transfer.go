package virt

import (
	"errors"
	"fmt"
)

// Transfer moves a VM from src to dst the way the lab does without live
// migration: it defines and starts the VM on dst first, and only then
// destroys and undefines it on src. If dst fails, src is left untouched. If
// src cannot be stopped, the copy on dst is destroyed and undefined again so
// that the VM never stays running twice. The VM ends up running on dst even
// if it was off on src.
//
// Transfer is for the lab (libvirt's test driver): on real hosts two running
// copies would write the same disks, so use Hypervisor.Migrate there. check is
// dst's check of the definition (see Hypervisor.DefineAndStart).
func Transfer(src, dst Hypervisor, name string, check DomainCheck) error {
	def, err := src.DomainXML(name)
	if err != nil {
		return fmt.Errorf("transfer vm %q: read definition on source: %w", name, err)
	}
	if err := dst.DefineAndStart(def, check); err != nil {
		return fmt.Errorf("transfer vm %q: start on target, source untouched: %w", name, err)
	}
	if err := src.Destroy(name); err != nil {
		if errors.Is(err, ErrVMNotFound) {
			return nil // gone from the source meanwhile: the target holds the only copy
		}
		rollback := errors.Join(dst.Destroy(name), dst.Undefine(name))
		if rollback != nil {
			return fmt.Errorf("transfer vm %q: stop on source: %w; and rolling back the target failed, the vm may run on both hosts: %w", name, err, rollback)
		}
		return fmt.Errorf("transfer vm %q: stop on source, target rolled back: %w", name, err)
	}
	if err := src.Undefine(name); err != nil && !errors.Is(err, ErrVMNotFound) {
		return fmt.Errorf("transfer vm %q: running on target, but undefine on source failed: %w", name, err)
	}
	return nil
}
