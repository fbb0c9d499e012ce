package ha

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/clock"
	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/notify"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// maxCheckedDisks bounds the disks of one activity check (the agent refuses more).
const maxCheckedDisks = 256

// CheckRequest is what neighbours are asked to read of host: its heartbeat file (as its agent
// last said) and the disks of the VMs it last ran, but for VMs known to run elsewhere now (a VM
// that moved writes its disks from its new host: that is no sign of life of this one).
func CheckRequest(rec state.HAHost, st state.HostStatus, elsewhere map[string]bool) api.ActivityCheckRequest {
	req := api.ActivityCheckRequest{Host: rec.Host, HeartbeatFile: rec.HeartbeatFile}
	seen := map[string]bool{}
	for _, vm := range st.VMs {
		if (vm.State != "running" && vm.State != "paused") || elsewhere[vm.UUID] {
			continue
		}
		for _, d := range vm.Disks {
			if d != "" && !seen[d] && len(req.Disks) < maxCheckedDisks {
				seen[d] = true
				req.Disks = append(req.Disks, d)
			}
		}
	}
	return req
}

// Ask runs one activity check of req on every neighbour at once, each bounded by timeout.
func Ask(ctx context.Context, clk clock.Clock, agents Agents, neighbours []state.Host, req api.ActivityCheckRequest, timeout time.Duration) []Answer {
	answers := make([]Answer, len(neighbours))
	var wg sync.WaitGroup
	for i, n := range neighbours {
		wg.Go(func() {
			cctx, cancel := clock.WithTimeout(ctx, clk, timeout)
			defer cancel()
			res, err := agents.ActivityCheck(cctx, n, req)
			answers[i] = Answer{Checker: n.Name, Result: res, Err: err}
		})
	}
	wg.Wait()
	return answers
}

// startCheck asks up to kvm.ha.activity.check.neighbours healthy neighbours to read the host's
// heartbeat and disks.
func (m *Monitor) startCheck(ctx context.Context, rt *hostRT) {
	now := m.clock().Now()
	rt.nextCheck = now.Add(m.cfg.CheckInterval)
	elsewhere := map[string]bool{}
	for name, st := range m.fleet.status {
		if name == rt.rec.Host || st.Connection != state.ConnUp {
			continue
		}
		for _, vm := range st.VMs {
			if vm.State == "running" || vm.State == "paused" {
				elsewhere[vm.UUID] = true
			}
		}
	}
	req := CheckRequest(rt.rec, m.fleet.status[rt.rec.Host], elsewhere)
	nbs := m.neighbours(rt, m.cfg.Neighbours)
	if len(nbs) == 0 || (req.HeartbeatFile == "" && len(req.Disks) == 0) {
		why := "no healthy neighbour in its cluster to read its files"
		if len(nbs) > 0 {
			why = "nothing to read: its agent never said where its heartbeat is and it ran no VM with disks"
		}
		m.onCheck(ctx, rt, req, []Answer{{Checker: "-", Err: errors.New(why)}}, 0)
		return
	}
	rt.inCheck = true
	rt.checkers = nil
	for _, n := range nbs {
		rt.checkers = append(rt.checkers, n.Name)
	}
	timeout := m.to.Activity
	m.async(ctx, func(ctx context.Context) func() {
		clk := m.clock()
		start := clk.Now()
		answers := Ask(ctx, clk, m.Agents, nbs, req, timeout)
		took := clk.Now().Sub(start)
		return func() {
			rt.inCheck = false
			m.onCheck(ctx, rt, req, answers, took)
		}
	})
}

// onCheck judges the answers and moves the host as the verdict says.
func (m *Monitor) onCheck(ctx context.Context, rt *hostRT, req api.ActivityCheckRequest, answers []Answer, took time.Duration) {
	st := State(rt.rec.State)
	switch st {
	case Suspect, Checking, Degraded, Fencing:
	default:
		return // its health came back meanwhile
	}
	v, reads, next := Judge(req, rt.samples, answers)
	rt.samples = next
	if m.Metrics != nil {
		m.Metrics.ActivityCheck(v, took)
	}
	prev := Verdict(rt.rec.Verdict)
	rt.rec.Verdict, rt.rec.VerdictAt = string(v), m.clock().Now().UTC()
	summary := events.ReadsSummary(reads)
	rt.rec.Evidence = summary
	if v == Inactive {
		rt.rec.Streak++
		rt.streakReads = append(rt.streakReads, summary)
		if n := m.cfg.MaxAttempts; len(rt.streakReads) > n {
			rt.streakReads = rt.streakReads[len(rt.streakReads)-n:]
		}
	} else {
		rt.rec.Streak, rt.streakReads = 0, nil
	}
	e := events.Event{Type: events.HAActivityCheck, Verdict: string(v), Attempt: rt.rec.Streak, Reads: reads}
	why := verdictWords(v, rt.rec.Streak, m.cfg.MaxAttempts)

	switch st {
	case Suspect, Checking:
		switch v {
		case Active:
			m.transition(rt, Degraded, "alive: "+why+"; its agent or its link failed, it is never fenced", e)
			m.tell(ctx, rt, key(notify.KindHADegraded), "alive but its agent does not answer", rt.rec.Reason+" ("+summary+")")
			m.softStep(ctx, rt)
		case Unknown:
			if prev == Unknown && st == Suspect {
				// The same "cannot tell" again: the record says so, the journal does not grow
				// by an event every check while no neighbour can read.
				rt.dirty = true
				return
			}
			m.transition(rt, Suspect, why, e)
			m.tell(ctx, rt, key(notify.KindHACannotTell), "cannot tell whether it is alive", why+" ("+summary+")")
		case Baseline:
			m.transition(rt, Checking, why, e)
		case Inactive:
			m.transition(rt, Checking, why, e)
			if rt.rec.Streak >= m.cfg.MaxAttempts {
				m.decide(ctx, rt)
			}
		}
	case Degraded:
		switch v {
		case Inactive:
			m.transition(rt, Checking, "its activity stopped: "+why, e)
		default:
			if v != prev {
				m.transition(rt, Degraded, rt.rec.Reason, e)
			}
		}
	case Fencing:
		switch v {
		case Active:
			m.transition(rt, Degraded, "activity seen while fencing waited: the fence is abandoned; "+why, e)
			m.tell(ctx, rt, key(notify.KindHADegraded), "alive: fence abandoned", summary)
		default:
			// Waiting (a retry's backoff, a confirm-down) may last: journal a change of verdict,
			// not every check; the record keeps the streak a retry needs.
			if v != prev {
				m.record(StreamID(rt.rec.Host), rt, e)
			} else {
				rt.dirty = true
			}
		}
	}
}

func verdictWords(v Verdict, streak, max int) string {
	switch v {
	case Active:
		return "activity seen on the shared storage"
	case Inactive:
		return fmt.Sprintf("no activity (%d of %d in a row)", streak, max)
	case Baseline:
		return "first reads taken: the next check compares with them"
	}
	return "cannot tell: not every file could be read; never fenced on that"
}

// softStep restarts a Degraded host's agent over SSH, at most once per
// kvm.ha.degraded.restart.interval, when kvm.ssh.to.agent allows it.
func (m *Monitor) softStep(ctx context.Context, rt *hostRT) {
	now := m.clock().Now()
	if m.Restart == nil || !m.cfg.SSHToAgent || rt.inRestart || (!rt.rec.LastRestart.IsZero() && now.Sub(rt.rec.LastRestart) < m.cfg.RestartEvery) {
		return
	}
	h := m.fleet.hosts[rt.rec.Host]
	rt.inRestart = true
	rt.rec.LastRestart = now.UTC()
	m.record(StreamID(rt.rec.Host), rt, events.Event{Type: events.HostAgentRestart, HAState: rt.rec.State,
		Message: "restarting its agent over SSH (kvm.ssh.to.agent)"})
	timeout := m.to.Restart
	m.async(ctx, func(ctx context.Context) func() {
		cctx, cancel := clock.WithTimeout(ctx, m.clock(), timeout)
		err := m.Restart.RestartAgent(cctx, h)
		cancel()
		return func() {
			rt.inRestart = false
			msg := "its agent was restarted over SSH"
			if err != nil {
				msg = "the SSH restart of its agent failed: " + firstLine(err.Error())
			}
			m.record(StreamID(rt.rec.Host), rt, events.Event{Type: events.HostAgentRestart, HAState: rt.rec.State, Message: msg})
		}
	})
}

// evidence is what a fence rests on, for the audit: the health failure and the reads of the
// streak.
func (m *Monitor) evidence(rt *hostRT) string {
	var b strings.Builder
	fmt.Fprintf(&b, "no good health answer since %s (%s)", rt.lastOK.UTC().Format(time.RFC3339), orDash(rt.lastErr))
	for i, r := range rt.streakReads {
		fmt.Fprintf(&b, "; check %d INACTIVE: %s", i+1, r)
	}
	return b.String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
