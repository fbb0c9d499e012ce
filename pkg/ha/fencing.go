package ha

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/kvmctl/kvmctl/pkg/clock"
	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/fence"
	"github.com/kvmctl/kvmctl/pkg/journal"
	"github.com/kvmctl/kvmctl/pkg/notify"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// Fence retry backoff: the first retry after this, doubled up to fenceBackoffMax.
const (
	fenceBackoff    = 2 * time.Second
	fenceBackoffMax = 30 * time.Second
)

// decide is called when a host's INACTIVE streak reached kvm.ha.activity.check.max.attempts: if
// every guard allows it, the decision is written with its evidence, then the host's HA action
// runs through the fence path.
func (m *Monitor) decide(ctx context.Context, rt *hostRT) {
	now := m.clock().Now()
	name := rt.rec.Host
	action := m.fleet.action[name]
	reason := fmt.Sprintf("no good health answer since %s, and %d activity checks in a row found no activity",
		rt.lastOK.UTC().Format(time.RFC3339), rt.rec.Streak)
	evidence := m.evidence(rt)
	req := fence.Request{Host: name, Action: fence.Action(action), Reason: "ha: " + reason, Evidence: evidence, QuietFailure: true}
	if guard, why := m.guard(rt, action, now); guard != "" {
		m.refuse(ctx, rt, req, guard, why)
		return
	}
	rt.rec.Guard, rt.rec.Action = "", action
	e := events.Event{Type: events.HAFencing, Action: action, Evidence: evidence, Reason: reason}
	switch action {
	case "off", "reboot", "blink":
		if State(rt.rec.State) == Fencing {
			reason = fmt.Sprintf("retry %d: %s", rt.rec.FenceFailures, reason)
		}
		m.transition(rt, Fencing, reason, e)
		m.tell(ctx, rt, key(notify.KindHAFencing), action+" through the BMC", reason)
		m.startFence(ctx, rt, req)
	default:
		if m.cfg.RecoverWithoutFence {
			m.transition(rt, Fencing, reason+"; HA action none: not fenced (kvm.ha.recover.without.fence)", e)
			m.fenced(ctx, rt, "declared down without a fence: HA action none and kvm.ha.recover.without.fence", "")
			return
		}
		m.transition(rt, Fencing, reason+"; HA action none: waiting for `kvmctl ha confirm-down "+name+"`", e)
		m.tell(ctx, rt, key(notify.KindHAFencing), "waiting for confirm-down",
			"Its HA action is none: kvmctl does not power it off. Once you know it is off, `kvmctl ha confirm-down "+name+"` lets its VMs start elsewhere.")
	}
}

// guard names the guard that stops a fence of the host now, and why; "" when none does.
func (m *Monitor) guard(rt *hostRT, action string, now time.Time) (string, error) {
	if up := now.Sub(m.started); up < m.cfg.StartupGrace {
		return GuardStartup, fmt.Errorf("ha watch started %s ago: it fences nothing during its first %s (kvm.ha.fence.startup.grace), it has not watched the fleet long enough",
			up.Round(time.Second), m.cfg.StartupGrace)
	}
	cluster := m.fleet.hosts[rt.rec.Host].Cluster
	total, down, answering := 0, 0, 0
	for name, o := range m.hosts {
		if m.healthy(o) {
			answering++
		}
		if !m.fleet.enabled[name] || m.fleet.hosts[name].Cluster != cluster {
			continue
		}
		total++
		if !m.healthy(o) {
			down++
		}
	}
	if answering == 0 {
		return GuardStorm, errors.New("no agent answers the watch at all: its own network is more likely down than every host")
	}
	if down >= 2 && float64(down) > m.cfg.StormRatio*float64(total) {
		return GuardStorm, fmt.Errorf("%d of the %d HA hosts of cluster %s do not answer (kvm.ha.storm.ratio %g): an outage of network or storage, not crashed hosts",
			down, total, cluster, m.cfg.StormRatio)
	}
	if !rt.rec.FencedAt.IsZero() && now.Sub(rt.rec.FencedAt) < m.cfg.QuietTime {
		return GuardQuiet, fmt.Errorf("it was fenced %s ago: not again within kvm.ha.fence.quiet.time (%s)",
			now.Sub(rt.rec.FencedAt).Round(time.Second), m.cfg.QuietTime)
	}
	if action == "off" || action == "reboot" {
		var refusal error
		err := m.Store.View(func(tx state.Tx) (err error) { refusal, err = fence.CapCheck(tx, cluster, now); return err })
		if err != nil {
			return GuardCap, fmt.Errorf("the rate cap cannot be read: %w", err)
		}
		if refusal != nil {
			return GuardCap, refusal
		}
	}
	return "", nil
}

// refuse records a guard's refusal once per guard: in the host's stream, in the audit, and to
// the notification channels.
func (m *Monitor) refuse(ctx context.Context, rt *hostRT, req fence.Request, guard string, why error) {
	if m.Metrics != nil {
		m.Metrics.GuardRefusal(guard)
	}
	if rt.rec.Guard == guard {
		return
	}
	rt.rec.Guard = guard
	id, err := m.Fence.Refuse(req, fmt.Errorf("HA guard %s: %w", guard, why))
	if err != nil {
		m.log().Error("ha watch: audit a refusal", "host", rt.rec.Host, "err", err)
	}
	m.record(StreamID(rt.rec.Host), rt, events.Event{Type: events.HAGuard, Guard: guard, AuditID: id, HAState: rt.rec.State,
		Action: string(req.Action), Message: "not fenced: " + why.Error()})
	k, result := key(notify.KindHAGuard, guard), guard
	if guard == GuardCap {
		k, result = key(notify.KindFenceCapReached), "rate cap reached"
	}
	m.tell(ctx, rt, k, result, why.Error())
}

// startFence runs the host's action through the fence path; the decision is already written.
func (m *Monitor) startFence(ctx context.Context, rt *hostRT, req fence.Request) {
	rt.inFence = true
	timeout := m.to.Fence
	m.async(ctx, func(ctx context.Context) func() {
		// A fence once started is seen through: stopping the watch waits for it.
		cctx, cancel := clock.WithTimeout(context.WithoutCancel(ctx), m.clock(), timeout)
		res, err := m.Fence.Do(cctx, req)
		cancel()
		return func() { m.onFence(ctx, rt, req, res, err) }
	})
}

func (m *Monitor) onFence(ctx context.Context, rt *hostRT, req fence.Request, res fence.Result, err error) {
	rt.inFence = false
	now := m.clock().Now()
	if res.AuditID != "" {
		rt.rec.AuditID = res.AuditID
	}
	result := "failed"
	switch {
	case err == nil && res.Outcome.Fenced:
		result = "fenced"
		what := "power confirmed off"
		if req.Action == fence.ActionReboot {
			what = "power confirmed off, then on"
		}
		if res.Outcome.Note != "" {
			what += " (" + res.Outcome.Note + ")"
		}
		m.fenced(ctx, rt, what, res.AuditID)
	case err == nil && req.Action == fence.ActionBlink:
		result = "blinked"
		if m.cfg.RecoverWithoutFence {
			m.fenced(ctx, rt, "its chassis blinks; declared down without a fence (kvm.ha.recover.without.fence)", res.AuditID)
			break
		}
		m.transition(rt, Fencing, "its chassis light blinks: waiting for `kvmctl ha confirm-down "+rt.rec.Host+"`",
			events.Event{Type: events.HAFencing, Action: string(req.Action), AuditID: res.AuditID})
		m.tell(ctx, rt, key(notify.KindHAFencing, "blink"), "blinking, waiting for confirm-down",
			"Its HA action is blink: kvmctl does not power it off. Once you know it is off, `kvmctl ha confirm-down "+rt.rec.Host+"` lets its VMs start elsewhere.")
	case err != nil && errs.IsRefused(err):
		result = "refused"
		guard := GuardHeld
		rt.rec.NextFence = now.Add(10 * time.Second)
		if errors.Is(err, fence.ErrCapReached) {
			guard = GuardCap
			rt.rec.NextFence = now.Add(time.Minute)
		}
		if m.Metrics != nil {
			m.Metrics.GuardRefusal(guard)
		}
		if rt.rec.Guard != guard {
			rt.rec.Guard = guard
			m.record(StreamID(rt.rec.Host), rt, events.Event{Type: events.HAGuard, Guard: guard, AuditID: res.AuditID, HAState: rt.rec.State,
				Action: string(req.Action), Message: "not fenced: " + firstLine(err.Error())})
		}
	default:
		if err == nil {
			err = errors.New("the power was not confirmed off")
		}
		rt.rec.FenceFailures++
		wait := fenceBackoff << min(rt.rec.FenceFailures-1, 8)
		rt.rec.NextFence = now.Add(min(wait, fenceBackoffMax))
		m.record(StreamID(rt.rec.Host), rt, events.Event{Type: events.HAFenceFailed, HAState: rt.rec.State, Action: string(req.Action),
			AuditID: res.AuditID, Attempt: rt.rec.FenceFailures,
			Message: fmt.Sprintf("NOT fenced (%s); retried from %s while it stays inactive: %s", ordinal(rt.rec.FenceFailures),
				rt.rec.NextFence.UTC().Format(time.RFC3339), firstLine(err.Error()))})
		m.tellAudit(ctx, rt, key(notify.KindFenceFailed), firstLine(err.Error()),
			"HA could not fence it and retries while it stays inactive; its VMs are not started elsewhere until it is fenced or `kvmctl ha confirm-down "+
				rt.rec.Host+"`.", res.AuditID)
	}
	if m.Metrics != nil {
		m.Metrics.Fence(result)
	}
}

func ordinal(n int) string {
	switch n {
	case 1:
		return "1st failure"
	case 2:
		return "2nd failure"
	case 3:
		return "3rd failure"
	}
	return fmt.Sprintf("%dth failure", n)
}

// fenced records the host fenced (its power confirmed off, or the operator's word): the host is
// put into Maintenance in the same transaction, and its VMs are to start elsewhere.
func (m *Monitor) fenced(ctx context.Context, rt *hostRT, what, auditID string) {
	now := m.clock().Now().UTC()
	name := rt.rec.Host
	rt.rec.FencedAt, rt.rec.FenceFailures, rt.rec.NextFence, rt.rec.Guard = now, 0, time.Time{}, ""
	toMaintenance := func(tx state.Tx) error {
		h, err := state.GetHost(tx, name)
		if err != nil {
			return err
		}
		h.ResourceState = state.Maintenance
		return state.PutHost(tx, h)
	}
	m.transitionWith(rt, Fenced, what, events.Event{Type: events.HAFenced, AuditID: auditID, Action: rt.rec.Action}, toMaintenance)
	m.tellAudit(ctx, rt, key(notify.KindHAFenced), what, "Its VMs are started on other hosts of its cluster. It stays in Maintenance until an operator repairs it and runs `kvmctl maintenance cancel "+
		name+"`.", auditID)

	// The VMs it ran when last seen are to start elsewhere.
	var rec []state.VMRecovery
	for _, vm := range m.fleet.status[name].VMs {
		if vm.State == "running" || vm.State == "paused" {
			rec = append(rec, state.VMRecovery{Name: vm.Name, UUID: vm.UUID, State: "pending"})
		}
	}
	rt.rec.Recovery = rec
	rt.nextRecover = m.clock().Now()
	if len(rec) == 0 {
		m.transition(rt, Recovered, "it ran no VM when last seen: nothing to recover", events.Event{})
		return
	}
	var names []string
	for _, r := range rec {
		names = append(names, r.Name)
	}
	m.transition(rt, Recovering, fmt.Sprintf("%d VMs to start on other hosts: %s", len(rec), strings.Join(names, ", ")),
		events.Event{VMs: len(rec)})
	m.startRecovery(ctx, rt)
}

// applyRequest applies an operator's word (confirm-down, clear) and removes it.
func (m *Monitor) applyRequest(ctx context.Context, rt *hostRT, r state.HARequest) {
	if rt.inFence || rt.inRecover {
		return // applied once what runs has ended
	}
	name := rt.rec.Host
	drop := func(tx state.Tx) error { return state.DeleteHARequest(tx, name) }
	st := State(rt.rec.State)
	switch {
	case r.ConfirmDown:
		switch {
		case m.healthy(rt):
			m.recordWith(StreamID(name), rt, events.Event{Type: events.HAConfirmedDown, Who: r.Who, HAState: string(st),
				Message: "confirm-down ignored: its agent answers, the host is not down"}, drop)
		case st == Suspect || st == Checking || st == Fencing:
			rt.rec.ConfirmedDown = true
			audit := func(tx state.Tx) error {
				if err := drop(tx); err != nil {
					return err
				}
				now := m.clock().Now().UTC()
				if err := journal.Open(tx, fence.AuditStream, journal.Fence, "", "", now); err != nil {
					return err
				}
				_, _, err := journal.AppendTx(tx, fence.AuditStream, events.Event{Type: events.HAConfirmedDown, Host: name,
					Cluster: m.fleet.hosts[name].Cluster, Who: r.Who, Reason: r.Reason, Message: "the operator confirmed the host down"}, now)
				return err
			}
			m.recordWith(StreamID(name), rt, events.Event{Type: events.HAConfirmedDown, Who: r.Who, Reason: r.Reason, HAState: string(st),
				Message: "the operator confirmed it down"}, audit)
			m.fenced(ctx, rt, "confirmed down by "+r.Who, "")
		default:
			m.recordWith(StreamID(name), rt, events.Event{Type: events.HAConfirmedDown, Who: r.Who, HAState: string(st),
				Message: "confirm-down ignored: the host is " + string(st)}, drop)
		}
	case r.Clear:
		m.fresh(rt)
		rt.rec.Recovery, rt.rec.ConfirmedDown, rt.rec.FenceFailures, rt.rec.NextFence = nil, false, 0, time.Time{}
		m.transitionWith(rt, Available, "cleared by "+r.Who, events.Event{Who: r.Who}, drop)
	default:
		_ = m.Store.Update(drop)
	}
}

// key is what a notice is sent once per streak for: its kind, and a detail (a guard, a VM).
func key(k notify.Kind, detail ...string) string {
	return strings.Join(append([]string{string(k)}, detail...), "/")
}

// tell sends a notice once per streak (key: a kind, or "kind/detail"), without waiting.
func (m *Monitor) tell(ctx context.Context, rt *hostRT, once, result, message string) {
	m.tellAudit(ctx, rt, once, result, message, "")
}

func (m *Monitor) tellAudit(ctx context.Context, rt *hostRT, once, result, message, auditID string) {
	if m.Notify == nil || rt.told[once] {
		return
	}
	rt.told[once] = true
	kind, _, _ := strings.Cut(once, "/")
	n := notify.Notice{Kind: notify.Kind(kind), Time: m.clock().Now().UTC(), Host: rt.rec.Host, Cluster: m.fleet.hosts[rt.rec.Host].Cluster,
		Action: rt.rec.Action, Result: result, Message: message, AuditID: auditID}
	timeout := m.to.Notify
	m.async(ctx, func(ctx context.Context) func() {
		cctx, cancel := clock.WithTimeout(context.WithoutCancel(ctx), m.clock(), timeout)
		err := m.Notify.Notify(cctx, n)
		cancel()
		if err == nil {
			return nil
		}
		return func() {
			m.record(StreamID(rt.rec.Host), rt, events.Event{Type: events.NotifyFailed, HAState: rt.rec.State,
				Message: fmt.Sprintf("notice %s not sent: %s", kind, firstLine(err.Error()))})
		}
	})
}
