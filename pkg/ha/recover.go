package ha

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/clock"
	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/notify"
	"github.com/kvmctl/kvmctl/pkg/orchestrate"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// recoverEvery is how often a recovery with VMs left to start looks again (capacity may have
// appeared, a host may answer again).
const recoverEvery = 5 * time.Second

// VM recovery states (state.VMRecovery.State).
const (
	vmPending  = "pending"
	vmStarting = "starting"
	vmRunning  = "running"
	vmUnplaced = "unplaced"
	vmNoDef    = "no-definition"
)

// decision is what a recovery round found for one VM.
type decision struct {
	uuid   string
	state  string // running (found there), place (start on to), unplaced, wait, nodef
	to     string
	reason string
	xml    string
}

// startRecovery runs one recovery round: every other host of the cluster is asked for its
// status, each VM still to recover is looked up by uuid across them (never started twice), and
// the rest are placed by the capacity planner and started, kvm.ha.recover.max.parallel at a time.
func (m *Monitor) startRecovery(ctx context.Context, rt *hostRT) {
	now := m.clock().Now()
	rt.nextRecover = now.Add(recoverEvery)
	f := m.fleet
	dead := f.hosts[rt.rec.Host]
	var others []state.Host
	prev := map[string]state.HostStatus{}
	for _, name := range f.order {
		h := f.hosts[name]
		if h.Cluster == dead.Cluster && name != dead.Name {
			others = append(others, h)
			prev[name] = f.status[name]
		}
	}
	todo := append([]state.VMRecovery(nil), rt.rec.Recovery...)
	last := f.status[dead.Name]
	cpuF, memF := f.cfg.CPUFactor, f.cfg.MemFactor
	timeout := m.to.Status
	rt.inRecover = true
	m.async(ctx, func(ctx context.Context) func() {
		dial := func(h state.Host) (orchestrate.StatusClient, error) { return statusOf{m.Agents, h}, nil }
		checks := orchestrate.CheckHosts(ctx, others, prev, dial, m.clock(), timeout)
		ds := plan(dead, last, todo, checks, cpuF, memF)
		// The kept definitions of the VMs to place.
		_ = m.Store.View(func(tx state.Tx) error {
			for i := range ds {
				if ds[i].state != "place" {
					continue
				}
				d, ok, err := state.GetVMDef(tx, ds[i].uuid)
				if err != nil || !ok {
					ds[i].state, ds[i].reason = "nodef", "kvmctl kept no definition of it (it was never seen by `host status` or `ha watch`)"
					continue
				}
				ds[i].xml = d.XML
			}
			return nil
		})
		return func() {
			rt.inRecover = false
			m.onRecoveryRound(ctx, rt, ds)
		}
	})
}

// statusOf adapts Agents to orchestrate's status client of one host.
type statusOf struct {
	a Agents
	h state.Host
}

func (s statusOf) Status(ctx context.Context) (api.Status, error) { return s.a.Status(ctx, s.h) }

// plan decides for each VM still to recover: running somewhere already (by uuid, on a host that
// answered), waiting (its last start went to a host that did not answer, or it is pinned there),
// or placed by the capacity planner on a host that answered.
func plan(dead state.Host, last state.HostStatus, todo []state.VMRecovery, checks []orchestrate.HostCheck, cpuF, memF float64) []decision {
	where := map[string]string{}
	answered := map[string]bool{}
	var hosts []state.Host
	status := map[string]state.HostStatus{}
	for _, c := range checks {
		if c.Err != nil {
			continue
		}
		answered[c.Host.Name] = true
		hosts = append(hosts, c.Host)
		status[c.Host.Name] = c.Status
		for _, vm := range c.Status.VMs {
			if vm.State == "running" || vm.State == "paused" || vm.State == "blocked" {
				where[vm.UUID] = c.Host.Name
			}
		}
	}
	var out []decision
	place := map[string]bool{}
	for _, v := range todo {
		switch {
		case v.State == vmRunning:
			continue
		case where[v.UUID] != "":
			out = append(out, decision{uuid: v.UUID, state: "running", to: where[v.UUID]})
		case (v.State == vmStarting || v.Pinned) && !answered[v.To]:
			out = append(out, decision{uuid: v.UUID, state: "wait", to: v.To, reason: v.To + " does not answer: its last start may have run there"})
		case v.State == vmStarting || v.Pinned:
			// A start that may have run (a lost answer, a watch killed while it asked) is
			// only ever asked again of the same host: never a second copy elsewhere.
			out = append(out, decision{uuid: v.UUID, state: "place", to: v.To, reason: "started again where its last start may have run"})
		default:
			place[v.UUID] = true
		}
	}
	if len(place) == 0 {
		return out
	}
	// The dead host carries the VMs to place, as running: the planner empties it.
	deadCap := state.HostStatus{Capacity: last.Capacity}
	for _, vm := range last.VMs {
		if place[vm.UUID] {
			vm.State = "running"
			deadCap.VMs = append(deadCap.VMs, vm)
		}
	}
	status[dead.Name] = deadCap
	in := orchestrate.CapacityInput{Hosts: orchestrate.CapacityHosts(append(hosts, dead), status), Empty: []string{dead.Name}, CPUFactor: cpuF, MemFactor: memF}
	p, err := orchestrate.PlanCapacity(in)
	if err != nil {
		for u := range place {
			out = append(out, decision{uuid: u, state: "unplaced", reason: "the planner refused: " + err.Error()})
		}
		return out
	}
	for _, pl := range p.Placements {
		out = append(out, decision{uuid: pl.UUID, state: "place", to: pl.To})
	}
	for _, u := range p.Unplaced {
		out = append(out, decision{uuid: u.UUID, state: "unplaced", reason: u.Reason})
	}
	return out
}

// onRecoveryRound applies a round's decisions: VMs found running are recovered, the placed ones
// started (each start journaled before it is asked), the unplaced said once.
func (m *Monitor) onRecoveryRound(ctx context.Context, rt *hostRT, ds []decision) {
	if State(rt.rec.State) != Recovering {
		return
	}
	idx := map[string]int{}
	for i, v := range rt.rec.Recovery {
		idx[v.UUID] = i
	}
	inFlight := len(rt.starting)
	stream := StreamID(rt.rec.Host)
	for _, d := range ds {
		i, ok := idx[d.uuid]
		if !ok {
			continue
		}
		v := &rt.rec.Recovery[i]
		switch d.state {
		case "running":
			v.State, v.To, v.Error, v.Pinned = vmRunning, d.to, "", false
			m.record(stream, rt, events.Event{Type: events.VMRecovered, VM: v.Name, UUID: v.UUID, To: d.to, HAState: rt.rec.State,
				Message: "found running on " + d.to})
		case "unplaced":
			first := v.State != vmUnplaced
			v.State, v.Error = vmUnplaced, d.reason
			if first {
				m.record(stream, rt, events.Event{Type: events.VMUnplaced, VM: v.Name, UUID: v.UUID, HAState: rt.rec.State, Message: d.reason})
				m.tell(ctx, rt, key(notify.KindVMUnplaced, v.UUID), v.Name+" fits on no host", d.reason+"; it is retried as capacity appears")
			}
		case "nodef":
			first := v.State != vmNoDef
			v.State, v.Error = vmNoDef, d.reason
			if first {
				m.record(stream, rt, events.Event{Type: events.VMUnplaced, VM: v.Name, UUID: v.UUID, HAState: rt.rec.State, Message: d.reason})
				m.tell(ctx, rt, key(notify.KindVMUnplaced, v.UUID), v.Name+" cannot be started", d.reason+"; start it by hand, then `kvmctl ha clear "+rt.rec.Host+"`")
			}
		case "place":
			if rt.starting[v.UUID] {
				continue // its start is in flight
			}
			if inFlight >= max(m.cfg.RecoverParallel, 1) {
				continue
			}
			inFlight++
			v.State, v.To, v.Error = vmStarting, d.to, ""
			// Written before the start is asked: a killed watch finds it and looks first.
			m.record(stream, rt, events.Event{Type: events.VMRecoverIntent, VM: v.Name, UUID: v.UUID, To: d.to, HAState: rt.rec.State,
				Message: "starting it on " + d.to + " from kvmctl's kept definition"})
			m.startVM(ctx, rt, v.UUID, d.to, d.xml)
		}
	}
	m.maybeRecovered(ctx, rt)
}

// startVM defines and starts one VM on host to.
func (m *Monitor) startVM(ctx context.Context, rt *hostRT, uuid, to, xml string) {
	h := m.fleet.hosts[to]
	if rt.starting == nil {
		rt.starting = map[string]bool{}
	}
	rt.starting[uuid] = true
	timeout := m.to.Start
	m.async(ctx, func(ctx context.Context) func() {
		cctx, cancel := clock.WithTimeout(context.WithoutCancel(ctx), m.clock(), timeout)
		err := m.Agents.DefineAndStartVM(cctx, h, xml)
		cancel()
		return func() { m.onStart(ctx, rt, uuid, to, err) }
	})
}

func (m *Monitor) onStart(ctx context.Context, rt *hostRT, uuid, to string, err error) {
	delete(rt.starting, uuid)
	var v *state.VMRecovery
	for i := range rt.rec.Recovery {
		if rt.rec.Recovery[i].UUID == uuid {
			v = &rt.rec.Recovery[i]
		}
	}
	if v == nil {
		return
	}
	stream := StreamID(rt.rec.Host)
	if err == nil {
		v.State, v.To, v.Error, v.Pinned = vmRunning, to, "", false
		m.record(stream, rt, events.Event{Type: events.VMRecovered, VM: v.Name, UUID: uuid, To: to, HAState: rt.rec.State, Message: "started on " + to})
		m.maybeRecovered(ctx, rt)
		return
	}
	// A refusal the agent answered (4xx) did nothing; anything else may have started it on to.
	var ae *api.Error
	definite := errors.As(err, &ae) && ae.Status >= 400 && ae.Status < http.StatusInternalServerError
	v.State, v.Error = vmPending, firstLine(err.Error())
	msg := "its start on " + to + " failed: " + v.Error
	if !definite {
		v.Pinned, v.To = true, to
		msg += "; it may have started there, so it is only ever started there again"
	}
	m.record(stream, rt, events.Event{Type: events.VMRecoverFailed, VM: v.Name, UUID: uuid, To: to, HAState: rt.rec.State, Message: msg})
}

// maybeRecovered ends a recovery whose VMs all run.
func (m *Monitor) maybeRecovered(ctx context.Context, rt *hostRT) {
	if State(rt.rec.State) != Recovering {
		return
	}
	var where []string
	for _, v := range rt.rec.Recovery {
		if v.State != vmRunning {
			return
		}
		where = append(where, v.Name+"@"+v.To)
	}
	what := fmt.Sprintf("%d VMs run on other hosts: %s", len(rt.rec.Recovery), strings.Join(where, ", "))
	m.transition(rt, Recovered, what, events.Event{VMs: len(rt.rec.Recovery)})
	m.tell(ctx, rt, key(notify.KindHARecovered), fmt.Sprintf("%d VMs recovered", len(rt.rec.Recovery)), what)
}

// cleanStale removes from a fenced host that answers again the copies of the VMs HA started
// elsewhere: a copy left defined could be started by hand, or by libvirt's autostart on the
// host's boot, and run twice. A copy found running is stopped: the one HA started has run on
// the shared disk since the recovery. Once per boot of the host.
func (m *Monitor) cleanStale(ctx context.Context, rt *hostRT) {
	moved := map[string]string{}
	for _, v := range rt.rec.Recovery {
		if v.State == vmRunning && v.To != "" && v.To != rt.rec.Host {
			moved[v.UUID] = v.To
		}
	}
	rt.cleanedBoot = rt.rec.BootID
	if len(moved) == 0 {
		return
	}
	h := m.fleet.hosts[rt.rec.Host]
	rt.inClean = true
	timeout := m.to.Status
	m.async(ctx, func(ctx context.Context) func() {
		cctx, cancel := clock.WithTimeout(ctx, m.clock(), timeout)
		st, err := m.Agents.Status(cctx, h)
		cancel()
		type removal struct {
			vm, uuid, to, state string
			err                 error
		}
		var done []removal
		if err == nil {
			for _, vm := range st.VMs {
				to, ok := moved[vm.UUID]
				if !ok {
					continue
				}
				cctx, cancel := clock.WithTimeout(ctx, m.clock(), timeout)
				rerr := m.Agents.RemoveVM(cctx, h, vm.Name)
				cancel()
				done = append(done, removal{vm: vm.Name, uuid: vm.UUID, to: to, state: vm.State, err: rerr})
			}
		}
		return func() {
			rt.inClean = false
			if err != nil {
				rt.cleanedBoot = "" // try again at its next answer
				return
			}
			for _, r := range done {
				msg := fmt.Sprintf("its copy here (%s) was removed: the VM runs on %s since HA started it there", r.state, r.to)
				if r.err != nil {
					rt.cleanedBoot = ""
					msg = fmt.Sprintf("its copy here (%s) could NOT be removed (%s): it must not be started, the VM runs on %s", r.state, firstLine(r.err.Error()), r.to)
				}
				m.record(StreamID(rt.rec.Host), rt, events.Event{Type: events.VMStaleRemoved, VM: r.vm, UUID: r.uuid, To: r.to, HAState: rt.rec.State, Message: msg})
			}
		}
	})
}
