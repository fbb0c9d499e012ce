package orchestrate

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/kvmctl/kvmctl/pkg/clock"
	"github.com/kvmctl/kvmctl/pkg/state"
	"github.com/kvmctl/kvmctl/pkg/virt"
)

// DefinitionClient is the part of an agent client that fetches a VM's definition.
type DefinitionClient interface {
	VMXML(ctx context.Context, name string) (string, error)
}

// DefinitionDial returns a client for the agent of host h.
type DefinitionDial func(h state.Host) (DefinitionClient, error)

// KeepDefinitions keeps kvmctl's copy of the definition of every VM the checks saw: a VM whose
// definition hash differs from the kept one (or has none kept) has its definition fetched from its
// host, checked by the VM policy's shape check, and stored by uuid. HA starts a dead host's VMs
// elsewhere from these copies. It returns what it could not keep, one line per VM; a failure to
// fetch one VM never stops the others.
func KeepDefinitions(ctx context.Context, store state.DB, checks []HostCheck, dial DefinitionDial, clk clock.Clock, timeout time.Duration) []string {
	type want struct {
		host state.Host
		vm   state.VMRecord
	}
	var wants []want
	err := store.View(func(tx state.Tx) error {
		for _, c := range checks {
			if c.Err != nil {
				continue
			}
			for _, vm := range c.Status.VMs {
				if vm.UUID == "" || vm.DefinitionHash == "" {
					continue
				}
				d, ok, err := state.GetVMDef(tx, vm.UUID)
				if err != nil {
					return err
				}
				if ok && d.Hash == vm.DefinitionHash && d.Host == c.Host.Name {
					continue
				}
				wants = append(wants, want{host: c.Host, vm: vm})
			}
		}
		return nil
	})
	if err != nil {
		return []string{fmt.Sprintf("read the kept VM definitions: %v", err)}
	}
	var problems []string
	var keep []state.VMDef
	for _, w := range wants {
		c, err := dial(w.host)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s on %s: %v", w.vm.Name, w.host.Name, err))
			continue
		}
		cctx, cancel := clock.WithTimeout(ctx, clk, timeout)
		xml, err := c.VMXML(cctx, w.vm.Name)
		cancel()
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s on %s: fetch its definition: %v", w.vm.Name, w.host.Name, err))
			continue
		}
		if err := virt.CheckDomainShape(xml); err != nil {
			problems = append(problems, fmt.Sprintf("%s on %s: its definition is not kept: %v", w.vm.Name, w.host.Name, err))
			continue
		}
		// The hash of what was fetched: a definition that changed since the status was taken is
		// fetched again at the next refresh, its hash then differing from the kept one.
		sum := sha256.Sum256([]byte(xml))
		keep = append(keep, state.VMDef{UUID: w.vm.UUID, Name: w.vm.Name, Hash: hex.EncodeToString(sum[:]), XML: xml,
			Host: w.host.Name, Cluster: w.host.Cluster, Seen: clk.Now().UTC()})
	}
	if len(keep) == 0 {
		return problems
	}
	err = store.Update(func(tx state.Tx) error {
		for _, d := range keep {
			old, ok, err := state.GetVMDef(tx, d.UUID)
			if err != nil {
				return err
			}
			if ok {
				d.Unknown = old.Unknown
			}
			if err := state.PutVMDef(tx, d); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		problems = append(problems, fmt.Sprintf("store %d VM definitions: %v", len(keep), err))
	}
	return problems
}
