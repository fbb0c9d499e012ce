package ha

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/clock"
	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/holds"
	"github.com/kvmctl/kvmctl/pkg/journal"
	"github.com/kvmctl/kvmctl/pkg/notify"
	"github.com/kvmctl/kvmctl/pkg/orchestrate"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// WatchStream is the journal stream of the watch itself: its starts and stops.
const WatchStream = "ha-watch"

// Monitor is `kvmctl ha watch`: one loop that checks health, runs activity checks, decides,
// fences and recovers. Every field but Restart, Events, Observe and Log is required.
type Monitor struct {
	Store   state.DB
	Clock   clock.Clock
	Agents  Agents
	Fence   Fencer
	Notify  Notifier
	Restart Restarter
	Holds   holds.Table
	// Events receives every event once journaled (the live view, --events, plain lines).
	Events events.Sink
	// Who names the watch in the journal and the audit ("ha watch pid N on MACHINE").
	Who      string
	Timeouts Timeouts
	// Observe, when set, is called after every tick with the hosts as the watch sees them.
	Observe func(Snapshot)
	// Metrics, when set, counts checks, fences and refusals (Prometheus in the CLI).
	Metrics Metrics
	Log     *slog.Logger

	started  time.Time
	cfg      Config
	to       Timeouts
	hosts    map[string]*hostRT
	fleet    *fleet
	results  chan func()
	workers  sync.WaitGroup
	lastSave time.Time
	lease    holds.Ref
	// the status refresh of the answering hosts: their VMs and the VMs' definitions
	inStatus   bool
	nextStatus time.Time
}

// statusEvery is how often the watch asks the answering hosts for their status, to know which
// VMs each runs (what to recover, whose disks show a host alive) and to keep their definitions.
const statusEvery = 10 * time.Second

// refreshStatus asks every answering watched host for its status, stores it, and keeps the
// definitions of their VMs.
func (m *Monitor) refreshStatus(ctx context.Context) {
	m.nextStatus = m.clock().Now().Add(statusEvery)
	var hosts []state.Host
	prev := map[string]state.HostStatus{}
	for _, name := range m.fleet.order {
		if rt := m.hosts[name]; rt != nil && m.healthy(rt) {
			hosts = append(hosts, m.fleet.hosts[name])
			prev[name] = m.fleet.status[name]
		}
	}
	if len(hosts) == 0 {
		return
	}
	m.inStatus = true
	timeout := m.to.Status
	m.async(ctx, func(ctx context.Context) func() {
		clk := m.clock()
		dial := func(h state.Host) (orchestrate.StatusClient, error) { return statusOf{m.Agents, h}, nil }
		checks := orchestrate.CheckHosts(ctx, hosts, prev, dial, clk, timeout)
		err := m.Store.Update(func(tx state.Tx) error {
			for _, c := range checks {
				if c.Err != nil {
					continue // a host that does not answer keeps what was last known of it
				}
				if _, err := state.GetHost(tx, c.Host.Name); state.IsNotFound(err) {
					continue
				}
				if err := state.PutHostStatus(tx, c.Host.Name, c.Status); err != nil {
					return err
				}
			}
			return nil
		})
		var problems []string
		if err == nil {
			ddial := func(h state.Host) (orchestrate.DefinitionClient, error) { return definitionsOf{m.Agents, h}, nil }
			problems = orchestrate.KeepDefinitions(ctx, m.Store, checks, ddial, clk, timeout)
		}
		return func() {
			m.inStatus = false
			if err != nil {
				m.log().Error("ha watch: store the hosts' status", "err", err)
			}
			for _, p := range problems {
				m.log().Warn("ha watch: VM definition", "problem", p)
			}
		}
	})
}

// definitionsOf adapts Agents to orchestrate's definition client of one host.
type definitionsOf struct {
	a Agents
	h state.Host
}

func (d definitionsOf) VMXML(ctx context.Context, name string) (string, error) {
	return d.a.VMXML(ctx, d.h, name)
}

// Metrics receives what the watch measures; every method must be safe to call from any
// goroutine.
type Metrics interface {
	HealthCheck(ok bool, took time.Duration)
	ActivityCheck(v Verdict, took time.Duration)
	Fence(result string)
	GuardRefusal(guard string)
}

// hostRT is what the watch knows of one host: its record (persisted on every transition) and
// what lives only in memory (the last good answer, the reads to compare with, what runs).
type hostRT struct {
	rec     state.HAHost
	dirty   bool // live fields changed since the last save
	lastOK  time.Time
	lastErr string
	// in flight: at most one call of each kind per host
	inHealth, inCheck, inFence, inRecover, inRestart bool
	nextCheck                                        time.Time
	nextRecover                                      time.Time
	checkers                                         []string
	samples                                          map[string]sample
	// streakReads keeps the reads of the INACTIVE streak: the evidence of a fence.
	streakReads []string
	// told are the notices sent once per streak (a kind, or a kind and a guard).
	told map[string]bool
	// starting are the VMs whose start this watch has asked and not heard back of.
	starting map[string]bool
	// cleanedBoot is the boot of the host whose stale VM copies were removed; inClean while
	// that runs.
	cleanedBoot string
	inClean     bool
}

func (m *Monitor) clock() clock.Clock { return clock.OrReal(m.Clock) }

func (m *Monitor) log() *slog.Logger {
	if m.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return m.Log
}

// Run watches until ctx ends. It refuses to start while another watch holds the state file's
// lease, naming it; it takes over the lease of a watch that died, and settles what that one left
// (fences without a result, VM starts) before anything new.
func (m *Monitor) Run(ctx context.Context) error {
	clk := m.clock()
	m.started = clk.Now()
	m.hosts = map[string]*hostRT{}
	m.results = make(chan func(), 64)
	if err := m.takeLease(); err != nil {
		return err
	}
	defer m.releaseLease()
	m.record(WatchStream, nil, events.Event{Type: events.HAWatchStarted, Who: m.Who,
		Message: "ha watch started; it fences nothing during its startup grace"})
	if err := m.reconcile(ctx); err != nil {
		return err
	}
	defer func() {
		m.workers.Wait()
		m.saveLive(true)
		m.record(WatchStream, nil, events.Event{Type: events.HAWatchStopped, Who: m.Who, Message: "ha watch stopped"})
	}()
	for {
		m.tick(ctx)
		interval := m.cfg.HealthInterval
		if interval <= 0 {
			interval = time.Second
		}
		t := clk.NewTimer(interval)
	wait:
		for {
			select {
			case <-ctx.Done():
				t.Stop()
				m.drain()
				return nil
			case apply := <-m.results:
				apply()
			case <-t.C():
				break wait
			}
		}
	}
}

// drain applies the results of the workers still running as they end.
func (m *Monitor) drain() {
	done := make(chan struct{})
	go func() { m.workers.Wait(); close(done) }()
	for {
		select {
		case apply := <-m.results:
			apply()
		case <-done:
			for {
				select {
				case apply := <-m.results:
					apply()
				default:
					return
				}
			}
		}
	}
}

// async runs work in a worker; the function it returns is applied in the loop.
func (m *Monitor) async(ctx context.Context, work func(ctx context.Context) func()) {
	m.workers.Add(1)
	go func() {
		defer m.workers.Done()
		apply := work(ctx)
		if apply != nil {
			m.results <- apply
		}
	}()
}

func (m *Monitor) takeLease() error {
	m.lease = holds.Ref{Kind: holds.HAWatch, ID: fmt.Sprintf("ha-watch-%d", m.Holds.OrLocal().Self.PID)}
	return m.Store.Update(func(tx state.Tx) error {
		_, err := m.Holds.OrLocal().Take(tx, holds.Hold{Kind: holds.HAWatch, ID: m.lease.ID, Since: m.started.UTC(),
			What: m.Who}, []holds.Subject{holds.HAWatchLease}, holds.HAWatch)
		return err
	})
}

func (m *Monitor) releaseLease() {
	_ = m.Store.Update(func(tx state.Tx) error { return holds.Release(tx, m.lease, holds.HAWatchLease) })
}

// tick reads the fleet, applies the operators' words, starts what is due and decides what the
// answers so far allow.
func (m *Monitor) tick(ctx context.Context) {
	var f *fleet
	if err := m.Store.View(func(tx state.Tx) (err error) { f, err = loadFleet(tx); return err }); err != nil {
		m.log().Error("ha watch: read the state file", "err", err)
		return
	}
	m.fleet, m.cfg = f, f.cfg
	m.to = m.Timeouts.withDefaults(f.cfg)
	now := m.clock().Now()
	for name := range m.hosts {
		if !f.watched[name] && !m.busyRT(m.hosts[name]) {
			delete(m.hosts, name)
		}
	}
	for _, name := range f.order {
		if !f.watched[name] {
			continue
		}
		rt := m.hosts[name]
		if rt == nil {
			rec := f.records[name]
			rec.Host = name
			if rec.State == "" {
				rec.State = string(Disabled)
			}
			rt = &hostRT{rec: rec, lastOK: now, samples: map[string]sample{}, told: map[string]bool{}}
			m.hosts[name] = rt
		}
		if r, ok := f.requests[name]; ok {
			m.applyRequest(ctx, rt, r)
		}
		m.eligibility(ctx, rt)
		if !rt.inHealth {
			m.startHealth(ctx, rt)
		}
		m.timeouts(rt)
		m.due(ctx, rt)
	}
	if !m.inStatus && !now.Before(m.nextStatus) {
		m.refreshStatus(ctx)
	}
	m.saveLive(false)
	if m.Observe != nil {
		m.Observe(m.snapshot())
	}
}

func (m *Monitor) busyRT(rt *hostRT) bool {
	return rt.inHealth || rt.inCheck || rt.inFence || rt.inRecover || rt.inRestart || rt.inClean || len(rt.starting) > 0
}

// eligibility moves a host in or out of Disabled and Ineligible as its switch, its maintenance,
// its holds and its BMC settings say.
func (m *Monitor) eligibility(ctx context.Context, rt *hostRT) {
	f, name := m.fleet, rt.rec.Host
	st := State(rt.rec.State)
	switch {
	case !f.enabled[name]:
		if st != Disabled && !rt.inFence && !rt.inRecover {
			m.transition(rt, Disabled, "HA is disabled for it (`kvmctl ha enable`)", events.Event{})
		}
		return
	case st == Disabled:
		m.fresh(rt)
		m.transition(rt, Available, "HA enabled", events.Event{})
		st = Available
	}
	why := f.busy[name]
	if why == "" && (f.action[name] == "off" || f.action[name] == "reboot") && f.noBMC[name] != "" {
		why = "its HA action is " + f.action[name] + " but " + f.noBMC[name]
	}
	switch st {
	case Available, Suspect, Checking, Degraded, Ineligible:
		if rt.inFence {
			return
		}
		if why != "" && (st != Ineligible || rt.rec.Reason != why) {
			m.transition(rt, Ineligible, why, events.Event{})
			return
		}
		if why == "" && st == Ineligible {
			m.fresh(rt)
			m.transition(rt, Available, "eligible again", events.Event{})
		}
	case Fenced, Recovering, Recovered:
		// The host stays out until an operator cancels its maintenance: then, answering, it is
		// Available again.
		h := f.hosts[name]
		if h.ResourceState == state.Enabled && m.healthy(rt) && !rt.inRecover && st != Fenced {
			m.fresh(rt)
			rt.rec.Recovery, rt.rec.ConfirmedDown, rt.rec.FenceFailures = nil, false, 0
			m.transition(rt, Available, "its maintenance was cancelled and it answers", events.Event{})
		}
	}
}

// fresh forgets what was read of a host: its next suspicion starts from a new baseline.
func (m *Monitor) fresh(rt *hostRT) {
	rt.lastOK = m.clock().Now()
	rt.samples, rt.checkers, rt.streakReads = map[string]sample{}, nil, nil
	rt.rec.Streak, rt.rec.Guard, rt.rec.Verdict = 0, "", ""
	rt.told = map[string]bool{}
}

// healthy reports whether the host's last good answer is recent.
func (m *Monitor) healthy(rt *hostRT) bool {
	return rt.lastErr == "" && m.clock().Now().Sub(rt.lastOK) < max(m.cfg.HealthTimeout, time.Second)
}

// startHealth asks the host's agent for its health.
func (m *Monitor) startHealth(ctx context.Context, rt *hostRT) {
	h := m.fleet.hosts[rt.rec.Host]
	rt.inHealth = true
	timeout := m.to.Health
	m.async(ctx, func(ctx context.Context) func() {
		clk := m.clock()
		start := clk.Now()
		cctx, cancel := clock.WithTimeout(ctx, clk, timeout)
		rep, err := m.Agents.Health(cctx, h)
		cancel()
		took := clk.Now().Sub(start)
		if m.Metrics != nil {
			m.Metrics.HealthCheck(err == nil, took)
		}
		return func() { m.onHealth(ctx, rt, rep, err) }
	})
}

func (m *Monitor) onHealth(ctx context.Context, rt *hostRT, rep api.HealthReport, err error) {
	rt.inHealth = false
	now := m.clock().Now()
	if err == nil && !rep.OK {
		err = fmt.Errorf("the agent reports not ok")
	}
	if err != nil {
		rt.lastErr = healthWords(err)
		m.timeouts(rt)
		return
	}
	rt.lastOK, rt.lastErr = now, ""
	rt.rec.LastHealth, rt.rec.BootID = now.UTC(), rep.BootID
	if hb := rep.Heartbeat; hb != nil {
		rt.rec.HeartbeatFile, rt.rec.HeartbeatSeq, rt.rec.HeartbeatErr = hb.File, hb.Seq, hb.LastError
		if hb.LastOK != nil {
			rt.rec.HeartbeatOK = hb.LastOK.UTC()
		}
		if hb.Stuck && hb.LastError == "" {
			rt.rec.HeartbeatErr = "a heartbeat write is stuck (shared storage hung?)"
		}
	}
	rt.dirty = true
	switch State(rt.rec.State) {
	case Suspect, Checking, Degraded:
		told := rt.told[key(notify.KindHASuspect)]
		m.fresh(rt)
		m.transition(rt, Available, "its agent answers again", events.Event{})
		if told {
			// Whoever was told it stopped answering is told it is back.
			m.tell(ctx, rt, key(notify.KindHAAvailable), "answers again", "")
		}
	case Recovered:
		if !rt.inClean && rt.cleanedBoot != rep.BootID {
			m.cleanStale(ctx, rt)
		}
	case Fencing:
		if !rt.inFence {
			m.fresh(rt)
			m.transition(rt, Available, "its agent answers again: the fence is abandoned", events.Event{})
			m.tell(ctx, rt, key(notify.KindHAAvailable), "answers again, not fenced", "")
		}
	}
}

// timeouts moves an Available host whose health has failed for the health timeout to Suspect.
func (m *Monitor) timeouts(rt *hostRT) {
	if State(rt.rec.State) != Available || rt.lastErr == "" {
		return
	}
	now := m.clock().Now()
	if now.Sub(rt.lastOK) < m.cfg.HealthTimeout {
		return
	}
	m.fresh(rt)
	rt.lastOK = now.Add(-m.cfg.HealthTimeout) // fresh reset it: keep when it stopped answering
	rt.nextCheck = now
	m.transition(rt, Suspect, fmt.Sprintf("no good health answer for %s: %s", m.cfg.HealthTimeout, rt.lastErr), events.Event{})
	m.tell(context.Background(), rt, key(notify.KindHASuspect), "not answering", rt.rec.Reason)
}

// due starts the activity checks, fences and recoveries whose time has come.
func (m *Monitor) due(ctx context.Context, rt *hostRT) {
	now := m.clock().Now()
	st := State(rt.rec.State)
	switch st {
	case Suspect, Checking, Degraded, Fencing:
		if !rt.inCheck && !rt.inFence && !now.Before(rt.nextCheck) {
			m.startCheck(ctx, rt)
		}
	}
	if st == Degraded {
		m.softStep(ctx, rt)
	}
	if st == Fencing && !rt.inFence && !rt.rec.ConfirmedDown && rt.rec.Streak >= m.cfg.MaxAttempts && !now.Before(rt.rec.NextFence) &&
		(rt.rec.Action == "off" || rt.rec.Action == "reboot") {
		m.decide(ctx, rt)
	}
	if st == Recovering && !rt.inRecover && !now.Before(rt.nextRecover) {
		m.startRecovery(ctx, rt)
	}
}

// transition writes the host's new state and the event saying so in one transaction, then
// emits it. e carries the event's own fields (reads, verdict, guard); its type is the state's.
func (m *Monitor) transition(rt *hostRT, to State, reason string, e events.Event) {
	m.transitionWith(rt, to, reason, e, nil)
}

// transitionWith is transition with a change of the state file made in the same transaction
// (a fenced host put into Maintenance).
func (m *Monitor) transitionWith(rt *hostRT, to State, reason string, e events.Event, change func(tx state.Tx) error) {
	now := m.clock().Now().UTC()
	from := State(rt.rec.State)
	if e.Type == "" {
		e.Type = stateEvent(to)
	}
	e.FromState, e.HAState, e.Message = string(from), string(to), reason
	if from != to {
		rt.rec.Since = now
	}
	rt.rec.State, rt.rec.Reason = string(to), reason
	m.recordWith(StreamID(rt.rec.Host), rt, e, change)
}

// record appends e to stream, with rt's record when given, in one transaction; then emits it.
func (m *Monitor) record(stream string, rt *hostRT, e events.Event) {
	m.recordWith(stream, rt, e, nil)
}

// recordWith is record with a change made in the same transaction.
func (m *Monitor) recordWith(stream string, rt *hostRT, e events.Event, change func(tx state.Tx) error) {
	now := m.clock().Now().UTC()
	if rt != nil {
		e.Host = rt.rec.Host
		if m.fleet != nil {
			e.Cluster = m.fleet.hosts[rt.rec.Host].Cluster
		}
	}
	if e.Who == "" {
		e.Who = m.Who
	}
	err := m.Store.Update(func(tx state.Tx) error {
		if err := journal.Open(tx, stream, journal.HA, "", "", now); err != nil {
			return err
		}
		if change != nil {
			if err := change(tx); err != nil {
				return err
			}
		}
		if rt != nil {
			if err := state.PutHAHost(tx, rt.rec); err != nil {
				return err
			}
		}
		var err error
		e, _, err = journal.AppendTx(tx, stream, e, now)
		return err
	})
	if err != nil {
		m.log().Error("ha watch: record", "stream", stream, "event", e.Type, "err", err)
		return
	}
	if rt != nil {
		rt.dirty = false
	}
	if m.Events != nil {
		_ = m.Events.Emit(e)
	}
}

// saveLive writes the live fields of the hosts (last health, heartbeat) every few seconds, in one
// transaction, for `ha status` in another shell.
func (m *Monitor) saveLive(force bool) {
	now := m.clock().Now()
	if !force && now.Sub(m.lastSave) < 5*time.Second {
		return
	}
	var dirty []*hostRT
	for _, rt := range m.hosts {
		if rt.dirty {
			dirty = append(dirty, rt)
		}
	}
	m.lastSave = now
	if len(dirty) == 0 {
		return
	}
	err := m.Store.Update(func(tx state.Tx) error {
		for _, rt := range dirty {
			if _, err := state.GetHost(tx, rt.rec.Host); state.IsNotFound(err) {
				continue
			}
			if err := state.PutHAHost(tx, rt.rec); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		m.log().Error("ha watch: save", "err", err)
		return
	}
	for _, rt := range dirty {
		rt.dirty = false
	}
}

func stateEvent(s State) events.Type {
	switch s {
	case Disabled:
		return events.HADisabled
	case Ineligible:
		return events.HAIneligible
	case Available:
		return events.HAAvailable
	case Suspect:
		return events.HASuspect
	case Checking:
		return events.HAActivityCheck
	case Degraded:
		return events.HADegraded
	case Fencing:
		return events.HAFencing
	case Fenced:
		return events.HAFenced
	case Recovering:
		return events.HARecovering
	case Recovered:
		return events.HARecovered
	}
	return events.Type("ha." + string(s))
}

// neighbours picks up to n healthy hosts of host's cluster to read its files: those that read
// last time first (their reads are the baseline), then by name.
func (m *Monitor) neighbours(rt *hostRT, n int) []state.Host {
	f := m.fleet
	cluster := f.hosts[rt.rec.Host].Cluster
	var cand []string
	for _, name := range f.order {
		o := m.hosts[name]
		if name == rt.rec.Host || o == nil || f.hosts[name].Cluster != cluster || !m.healthy(o) {
			continue
		}
		switch State(o.rec.State) {
		case Suspect, Checking, Degraded, Fencing:
			continue
		}
		cand = append(cand, name)
	}
	slices.SortStableFunc(cand, func(a, b string) int {
		ia, ib := slices.Index(rt.checkers, a) >= 0, slices.Index(rt.checkers, b) >= 0
		switch {
		case ia && !ib:
			return -1
		case ib && !ia:
			return 1
		}
		return 0
	})
	if len(cand) > n {
		cand = cand[:n]
	}
	out := make([]state.Host, 0, len(cand))
	for _, c := range cand {
		out = append(out, f.hosts[c])
	}
	return out
}

// healthWords says a failed health check in a few words, for the record and the evidence (the
// client's hint on how to start an agent is for people at a prompt).
func healthWords(err error) string {
	var u *api.UnreachableError
	if errors.As(err, &u) && u.Err != nil {
		return "unreachable: " + firstLine(u.Err.Error())
	}
	return firstLine(err.Error())
}

func firstLine(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			return s[:i]
		}
	}
	return s
}
