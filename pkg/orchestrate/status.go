package orchestrate

import (
	"context"
	"sync"
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/clock"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// StatusClient is the part of an agent client that a status check needs.
type StatusClient interface {
	Status(ctx context.Context) (api.Status, error)
}

// DialFunc returns a client for the agent of host h.
type DialFunc func(h state.Host) (StatusClient, error)

// HostCheck is the outcome of asking one host's agent for its status.
type HostCheck struct {
	Host   state.Host
	Status state.HostStatus
	Err    error
}

// CheckHosts asks every host's agent for its status at once, each with its own timeout, so one
// dead host costs its timeout and not the sum. A host that does not answer is Disconnected and
// keeps what was last known of it (boot id, capacity, VMs): the VMs that ran on a host that went
// silent are exactly what HA needs to know. prev holds the stored statuses by host name.
func CheckHosts(ctx context.Context, hosts []state.Host, prev map[string]state.HostStatus, dial DialFunc, clk clock.Clock, timeout time.Duration) []HostCheck {
	out := make([]HostCheck, len(hosts))
	var wg sync.WaitGroup
	for i, h := range hosts {
		wg.Add(1)
		go func(i int, h state.Host) {
			defer wg.Done()
			st, err := checkOne(ctx, h, dial, clk, timeout)
			out[i] = HostCheck{Host: h, Err: err, Status: MergeStatus(prev[h.Name], st, err, clk.Now())}
		}(i, h)
	}
	wg.Wait()
	return out
}

func checkOne(ctx context.Context, h state.Host, dial DialFunc, clk clock.Clock, timeout time.Duration) (api.Status, error) {
	c, err := dial(h)
	if err != nil {
		return api.Status{}, err
	}
	ctx, cancel := clock.WithTimeout(ctx, clk, timeout)
	defer cancel()
	return c.Status(ctx)
}

// MergeStatus folds one answer (or error) of an agent into what was known of its host.
func MergeStatus(prev state.HostStatus, st api.Status, err error, now time.Time) state.HostStatus {
	if err != nil {
		prev.Connection = state.ConnDisconnected
		prev.CheckedAt = now
		prev.LastError = err.Error()
		if prev.VMs == nil {
			prev.VMs = []state.VMRecord{}
		}
		return prev
	}
	s := state.HostStatus{
		Connection:   state.ConnUp,
		CheckedAt:    now,
		LastSeen:     now,
		AgentState:   string(st.AgentState),
		AgentVersion: st.AgentVersion,
		Hypervisor:   st.Hypervisor,
		BootID:       st.BootID,
		StartedAt:    st.StartedAt,
		Capacity:     state.Resources{CPUs: st.Capacity.CPUs, MemoryMiB: st.Capacity.MemoryMiB},
		Allocation:   state.Resources{CPUs: st.Allocation.CPUs, MemoryMiB: st.Allocation.MemoryMiB},
		VMs:          make([]state.VMRecord, 0, len(st.VMs)),
	}
	for _, vm := range st.VMs {
		r := state.VMRecord{Name: vm.Name, UUID: vm.UUID, State: vm.State, VCPUs: vm.VCPUs, MemoryMiB: vm.MemoryMiB, Disks: vm.Disks, Tags: vm.Tags,
			DefinitionHash: vm.DefinitionHash}
		for _, g := range vm.Groups {
			r.Groups = append(r.Groups, state.Group{Name: g.Name, Type: g.Type})
		}
		s.VMs = append(s.VMs, r)
	}
	return s
}
