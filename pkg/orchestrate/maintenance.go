package orchestrate

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/clock"
	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/holds"
	"github.com/kvmctl/kvmctl/pkg/inventory"
	"github.com/kvmctl/kvmctl/pkg/journal"
	"github.com/kvmctl/kvmctl/pkg/settings"
	"github.com/kvmctl/kvmctl/pkg/sshx"
	"github.com/kvmctl/kvmctl/pkg/state"
	"github.com/kvmctl/kvmctl/pkg/virt"
)

// MaintenanceAgent is what the maintenance engine needs of one host's agent.
type MaintenanceAgent interface {
	Status(ctx context.Context) (api.Status, error)
	EnterMaintenance(ctx context.Context) (api.Maintenance, error)
	CancelMaintenance(ctx context.Context) (api.Maintenance, error)
	VMXML(ctx context.Context, name string) (string, error)
	DefineAndStartVM(ctx context.Context, xml string) error
	RemoveVM(ctx context.Context, name string) error
	MigrateVM(ctx context.Context, name string, req api.MigrateRequest) error
}

// AgentDialer returns a client for the agent of host h.
type AgentDialer func(h state.Host) (MaintenanceAgent, error)

// SSHRunner runs one command on a host over SSH.
type SSHRunner interface {
	Run(ctx context.Context, t sshx.Target, command string) (string, error)
}

// Maintenance puts hosts into maintenance and takes them out again. A standalone enable or
// cancel is a journal stream of its own and holds its host (and, while an enable plans and moves
// VMs, its cluster), so two never plan on the same free capacity; under a rolling run it writes
// to the run's stream and works inside the run's holds. It never holds the store open while it
// waits on agents.
type Maintenance struct {
	Store  Store
	Dial   AgentDialer
	SSH    SSHRunner
	Events events.Sink
	Clock  clock.Clock
	// Holds says who this process is and who is alive; the zero value is this process.
	Holds holds.Table
	Waits Waits
	// SkipFinalRefresh leaves out the status refresh after enable and cancel, for a caller
	// (rolling maintenance) that refreshes before its next plan anyway.
	SkipFinalRefresh bool
	// Under is the rolling run this engine works for, nil for a standalone action.
	Under *Under
}

// Under is the run a maintenance engine works for: the clusters it holds are open to the
// engine, and its events go to the run's journal stream.
type Under struct {
	Ref    holds.Ref
	Stream string
}

// MaintenanceResult is what enable and cancel report.
type MaintenanceResult struct {
	Host          string        `json:"host"`
	ResourceState string        `json:"resource_state"`
	AgentState    string        `json:"agent_state,omitempty"`
	DryRun        bool          `json:"dry_run,omitempty"`
	Plan          []Placement   `json:"plan"`
	Unplaced      []Unplaced    `json:"unplaced,omitempty"`
	Migrated      []string      `json:"migrated"`
	Failed        []VMFailure   `json:"failed,omitempty"`
	AgentRestart  *AgentRestart `json:"agent_restart,omitempty"`
	Reason        string        `json:"reason,omitempty"`
}

// VMFailure is a VM that could not be moved, and why.
type VMFailure struct {
	VM    string `json:"vm"`
	To    string `json:"to"`
	Error string `json:"error"`
}

// AgentRestart records a restart of a disconnected agent over SSH during cancel.
type AgentRestart struct {
	Command string `json:"command"`
	Output  string `json:"output,omitempty"`
}

// EnableOptions change how Enable works.
type EnableOptions struct {
	// DryRun plans and changes nothing.
	DryRun bool
	// Prepared accepts a host already marked PrepareForMaintenance, as rolling maintenance marks
	// every host of a batch before it empties the first, so that none is a target for another.
	Prepared bool
	// Fresh plans with the statuses in the store, which the caller has just refreshed.
	Fresh bool
	// Prefer names hosts to fill first (see CapacityInput.Prefer).
	Prefer []string
}

// ErrDoesNotFit fails enable when some running VM has nowhere to go; nothing was changed.
var ErrDoesNotFit = errors.New("the host's VMs do not fit on the rest of its cluster")

// ErrWaitTimeout fails enable when kvm.rolling.maintenance.wait.maintenance.timeout passed before
// the host was empty.
var ErrWaitTimeout = errors.New("the host did not reach maintenance within kvm.rolling.maintenance.wait.maintenance.timeout")

func (m *Maintenance) clock() clock.Clock { return clock.OrReal(m.Clock) }

func (m *Maintenance) now() time.Time { return m.clock().Now().UTC() }

func (m *Maintenance) waits() Waits { return m.Waits.withDefaults() }

func (m *Maintenance) table() holds.Table { return m.Holds.OrLocal() }

func (m *Maintenance) under() holds.Ref {
	if m.Under == nil {
		return holds.Ref{}
	}
	return m.Under.Ref
}

// maintenanceConfig is what one enable or cancel reads from the store before it acts.
type maintenanceConfig struct {
	host           state.Host
	cluster        []state.Host
	prev           map[string]state.HostStatus
	parallel       int
	cpuF, memF     float64
	waitTimeout    time.Duration
	sshToAgent     bool
	restartTimeout time.Duration
}

func (m *Maintenance) load(name string) (maintenanceConfig, error) {
	var c maintenanceConfig
	err := m.Store.View(func(tx state.Tx) error {
		h, err := getHost(tx, name)
		if err != nil {
			return err
		}
		c.host = h
		if c.cluster, err = inventory.ClusterHosts(tx, h.Cluster); err != nil {
			return err
		}
		c.prev = map[string]state.HostStatus{}
		for _, o := range c.cluster {
			if c.prev[o.Name], err = state.GetHostStatus(tx, o.Name); err != nil {
				return err
			}
		}
		par, err := settings.GetInt(tx, settings.MaxParallelMigrations)
		if err != nil {
			return err
		}
		c.parallel = int(par)
		if c.cpuF, err = settings.GetFloat(tx, settings.CPUOverprovisioning); err != nil {
			return err
		}
		if c.memF, err = settings.GetFloat(tx, settings.MemOverprovisioning); err != nil {
			return err
		}
		wait, err := settings.GetInt(tx, settings.WaitMaintenanceTimeout)
		if err != nil {
			return err
		}
		c.waitTimeout = time.Duration(wait) * time.Second
		if c.sshToAgent, err = settings.GetBool(tx, settings.SSHToAgent); err != nil {
			return err
		}
		rt, err := settings.GetInt(tx, settings.AgentRestartTimeout)
		c.restartTimeout = time.Duration(rt) * time.Second
		return err
	})
	return c, err
}

func getHost(tx state.Tx, name string) (state.Host, error) {
	h, err := state.GetHost(tx, name)
	if state.IsNotFound(err) {
		return h, inventory.NotFound("host", name, "hosts")
	}
	return h, err
}

// refresh asks every host of the cluster for its status and records the answers.
func (m *Maintenance) refresh(ctx context.Context, c *maintenanceConfig) error {
	dial := func(h state.Host) (StatusClient, error) { return m.Dial(h) }
	checks := CheckHosts(ctx, c.cluster, c.prev, dial, m.clock(), m.waits().AgentCall)
	for _, ch := range checks {
		c.prev[ch.Host.Name] = ch.Status
	}
	return m.Store.Update(func(tx state.Tx) error {
		for _, ch := range checks {
			if err := state.PutHostStatus(tx, ch.Host.Name, ch.Status); err != nil {
				return err
			}
		}
		return nil
	})
}

// CapacityHosts turns the cluster and its statuses into the planner's input. A host's latest
// resource state in the store counts, so a host another kvmctl put into maintenance is no target.
func CapacityHosts(cluster []state.Host, status map[string]state.HostStatus) []CapacityHost {
	out := make([]CapacityHost, 0, len(cluster))
	for _, h := range cluster {
		s := status[h.Name]
		ch := CapacityHost{Name: h.Name, Cluster: h.Cluster, ResourceState: h.ResourceState, Connection: s.Connection,
			AgentState: s.AgentState, CPUs: s.Capacity.CPUs, MemoryMiB: s.Capacity.MemoryMiB, Tags: h.Tags}
		for _, vm := range s.VMs {
			cv := CapacityVM{Name: vm.Name, UUID: vm.UUID, State: vm.State, VCPUs: vm.VCPUs, MemoryMiB: vm.MemoryMiB, RequiredTags: vm.Tags}
			for _, g := range vm.Groups {
				cv.Groups = append(cv.Groups, AffinityGroup{Name: g.Name, Type: GroupType(g.Type)})
			}
			ch.VMs = append(ch.VMs, cv)
		}
		out = append(out, ch)
	}
	return out
}

// action is one enable or cancel: the stream its events go to and, standalone, what it holds.
type action struct {
	m       *Maintenance
	verb    string
	host    string
	cluster string
	stream  string    // "" for a dry run: its events are shown, not journaled
	ref     holds.Ref // the holder it acts as: its own, or the run's
	own     bool      // a standalone action: it owns its stream and its holds
}

// begin starts verb on host name. A standalone action takes its holds (host, plus the subjects
// in also), checks the host's state with check and opens its journal stream, all in one
// transaction; under a run or in a dry run it only checks. Every refusal changes nothing.
func (m *Maintenance) begin(verb, name string, dryRun bool, also func(state.Host) (take, check []holds.Subject), check func(h state.Host, tookOver bool) error) (*action, error) {
	a := &action{m: m, verb: verb, host: name}
	t := m.table()
	if m.Under != nil || dryRun {
		if m.Under != nil {
			a.stream, a.ref = m.Under.Stream, m.Under.Ref
		}
		return a, m.Store.View(func(tx state.Tx) error {
			h, err := getHost(tx, name)
			if err != nil {
				return err
			}
			a.cluster = h.Cluster
			take, chk := also(h)
			if err := t.Check(tx, a.ref, append(append([]holds.Subject{holds.Host(name)}, take...), chk...)); err != nil {
				return err
			}
			return check(h, false)
		})
	}
	now := m.now()
	a.stream, a.own = newID("m", now), true
	a.ref = holds.Ref{Kind: holds.Maintenance, ID: a.stream}
	var written []events.Event
	err := m.Store.Update(func(tx state.Tx) error {
		h, err := getHost(tx, name)
		if err != nil {
			return err
		}
		a.cluster = h.Cluster
		if err := clearStaleRunHolds(tx); err != nil {
			return err
		}
		take, chk := also(h)
		hold := holds.Hold{Kind: holds.Maintenance, ID: a.stream, Host: name, Since: now, What: fmt.Sprintf("`maintenance %s %s`", verb, name)}
		// A maintenance action whose kvmctl died left this host (or cluster) held: its own verbs
		// finish or undo what it left, so this one takes its hold over and ends its stream.
		replaced, err := t.Take(tx, hold, append([]holds.Subject{holds.Host(name)}, take...), holds.Maintenance)
		if err != nil {
			return err
		}
		if err := t.Check(tx, a.ref, chk, holds.Maintenance); err != nil {
			return err
		}
		tookOver := false
		for _, old := range replaced {
			tookOver = tookOver || old.Subject == holds.Host(name)
		}
		if err := check(h, tookOver); err != nil {
			return err
		}
		for _, old := range endDead(tx, replaced, a.stream, now) {
			written = append(written, old)
		}
		ret, err := retention(tx)
		if err != nil {
			return err
		}
		if _, err := journal.Prune(tx, ret, now); err != nil {
			return err
		}
		if err := journal.Open(tx, a.stream, journal.Maintenance, string(holds.Host(name)), "", now); err != nil {
			return err
		}
		started, _, err := journal.AppendTx(tx, a.stream, events.Event{Type: events.ActionStarted, Action: verb, Host: name, Cluster: h.Cluster}, now)
		written = append(written, started)
		return err
	})
	if err != nil {
		return nil, err
	}
	for _, e := range written {
		a.emit(e)
	}
	return a, nil
}

// endDead ends, in tx, the maintenance actions whose kvmctl died and whose holds stream by has
// just taken over: their other holds are released and their streams ended. It returns the events
// it wrote. A stream already ended, or unreadable, is left as it is.
func endDead(tx state.Tx, replaced []holds.Hold, by string, now time.Time) []events.Event {
	var out []events.Event
	seen := map[string]bool{}
	for _, h := range replaced {
		if seen[h.ID] {
			continue
		}
		seen[h.ID] = true
		// The dead action is over: its other holds (the cluster it planned in) go too.
		if err := holds.Release(tx, h.Ref()); err != nil {
			continue
		}
		s, err := journal.GetStream(tx, h.ID)
		if err != nil || s.Ended {
			continue
		}
		e, _, err := journal.AppendTx(tx, h.ID, events.Event{Type: events.ActionFinished, Host: h.Host, RunState: events.RunFailed,
			Message: fmt.Sprintf("its kvmctl (pid %d) died; %s took its hold over", h.Owner.PID, by)}, now)
		if err == nil && journal.End(tx, h.ID, now) == nil {
			out = append(out, e)
		}
	}
	return out
}

func (a *action) emit(e events.Event) {
	if a.m.Events != nil {
		if e.Time.IsZero() {
			e.Time = a.m.now()
		}
		_ = a.m.Events.Emit(e)
	}
}

// record journals e (with change, in one transaction) in the action's stream, then emits it; a
// dry run only emits.
func (a *action) record(e events.Event, change func(tx state.Tx) error) error {
	if a.m.Under != nil {
		e.RunID = a.m.Under.Stream
	}
	if a.stream == "" {
		a.emit(e)
		return nil
	}
	j := journal.Journal{DB: a.m.Store, Clock: a.m.clock(), Sink: a.m.Events}
	_, err := j.Append(a.stream, e, change)
	return err
}

// done records the action's last change with its event (e may be nil) and, for a standalone
// action, its end in the same transaction: holds released, stream ended, the outcome journaled.
func (a *action) done(e *events.Event, change func(tx state.Tx) error, st events.RunState, msg string) error {
	if !a.own {
		if e == nil {
			return nil
		}
		return a.record(*e, change)
	}
	now := a.m.now()
	var written []events.Event
	err := a.m.Store.Update(func(tx state.Tx) error {
		if change != nil {
			if err := change(tx); err != nil {
				return err
			}
		}
		if e != nil {
			w, _, err := journal.AppendTx(tx, a.stream, *e, now)
			if err != nil {
				return err
			}
			written = append(written, w)
		}
		w, _, err := journal.AppendTx(tx, a.stream, events.Event{Type: events.ActionFinished, Action: a.verb, Host: a.host, Cluster: a.cluster, RunState: st, Message: msg}, now)
		if err != nil {
			return err
		}
		written = append(written, w)
		if err := holds.Release(tx, a.ref); err != nil {
			return err
		}
		return journal.End(tx, a.stream, now)
	})
	for _, w := range written {
		a.emit(w)
	}
	return err
}

// fail ends the action as failed and returns err.
func (a *action) fail(err error) error {
	// The journal keeps a one-line summary; the caller prints the whole error.
	summary := strings.TrimSuffix(firstLine(err.Error()), ":")
	if derr := a.done(nil, nil, events.RunFailed, summary); derr != nil {
		return errors.Join(err, fmt.Errorf("record the end of `maintenance %s %s`: %w", a.verb, a.host, derr))
	}
	return err
}

// setState is the change that gives host name a resource state and the reason for it.
func setState(name, to, reason string) func(tx state.Tx) error {
	return func(tx state.Tx) error {
		h, err := state.GetHost(tx, name)
		if err != nil {
			return err
		}
		h.ResourceState, h.StateReason = to, reason
		return state.PutHost(tx, h)
	}
}

// Enable puts host name into maintenance: plan where its running VMs go (refusing, with nothing
// changed, when one fits nowhere), mark it PrepareForMaintenance, tell its agent to enter
// hostInMaintenance, move the VMs at most `host.maintenance.max.parallel.migrations` at a time,
// and mark it Maintenance. A failure leaves it ErrorInMaintenance with the reason.
func (m *Maintenance) Enable(ctx context.Context, name string, opts EnableOptions) (MaintenanceResult, error) {
	res := MaintenanceResult{Host: name, DryRun: opts.DryRun, Plan: []Placement{}, Migrated: []string{}}
	var before string
	a, err := m.begin("enable", name, opts.DryRun, func(h state.Host) ([]holds.Subject, []holds.Subject) {
		// The cluster is held while the action plans and moves VMs: two enables never plan on
		// the same free capacity.
		return []holds.Subject{holds.Cluster(h.Cluster)}, nil
	}, func(h state.Host, _ bool) error {
		before = h.ResourceState
		switch h.ResourceState {
		case state.Enabled, state.Disabled, state.ErrorInMaintenance:
			return nil
		case state.PrepareForMaintenance:
			// Under a run: the run marked it. Standalone: nobody alive holds it (the holds were
			// just taken), so a kvmctl died putting it into maintenance; this one finishes.
			return nil
		case state.Maintenance:
			if opts.Prepared {
				return nil
			}
		}
		return errs.Refusedf("host %s is in %s: `kvmctl maintenance cancel %s` first, or leave it", name, h.ResourceState, name)
	})
	if err != nil {
		return res, err
	}
	res.ResourceState = before
	if before == state.Maintenance {
		// A run that died between marking the host Maintenance and journaling it: the host is
		// where the run wants it.
		return res, nil
	}
	c, err := m.load(name)
	if err != nil {
		return res, a.fail(err)
	}
	if !opts.Fresh {
		if err := m.refresh(ctx, &c); err != nil {
			return res, a.fail(err)
		}
	}
	if s := c.prev[name]; s.Connection != state.ConnUp {
		return res, a.fail(fmt.Errorf("the agent of %s does not answer, so it cannot enter maintenance: %s", name, firstLine(s.LastError)))
	}
	if !opts.DryRun {
		if err := m.finishTransfers(ctx, a, &c); err != nil {
			return res, a.fail(err)
		}
	}
	plan, err := PlanCapacity(CapacityInput{Hosts: CapacityHosts(c.cluster, c.prev), Empty: []string{name}, CPUFactor: c.cpuF, MemFactor: c.memF, Prefer: opts.Prefer})
	if err != nil {
		return res, a.fail(err)
	}
	res.Plan, res.Unplaced = nonNilPlacements(plan.Placements), plan.Unplaced
	planned := events.Event{Type: events.HostMaintenancePlan, Host: name, Cluster: c.host.Cluster, VMs: len(plan.Placements), Unplaced: len(plan.Unplaced)}
	if m.Under != nil {
		// A run journals the plan of its batch itself; the host's own is shown, not recorded twice.
		a.emit(planned)
	} else if err := a.record(planned, nil); err != nil {
		return res, a.fail(err)
	}
	if !plan.OK() {
		var lines []string
		for _, u := range plan.Unplaced {
			lines = append(lines, fmt.Sprintf("  %s: %s", u.VM, u.Reason))
		}
		// Say which hosts were not targets and why: cancelling another host's maintenance or
		// starting its agent is often the way out.
		var not []string
		for _, h := range CapacityHosts(c.cluster, c.prev) {
			if h.Name == name {
				continue
			}
			if why := ineligibility(&h); why != "" {
				not = append(not, h.Name+" ("+why+")")
			}
		}
		if len(not) > 0 {
			lines = append(lines, "  not taken as targets: "+strings.Join(not, ", "))
		}
		return res, a.fail(fmt.Errorf("%w; nothing was changed. VMs with no place:\n%s", ErrDoesNotFit, strings.Join(lines, "\n")))
	}
	if opts.DryRun {
		return res, nil
	}

	// Record the intent and the state to return to before the first action.
	if before != state.PrepareForMaintenance {
		if err := a.record(events.Event{Type: events.HostMaintenancePrep, Host: name, Cluster: c.host.Cluster, Message: "was " + before},
			setState(name, state.PrepareForMaintenance, "entering maintenance (was "+before+")")); err != nil {
			return res, a.fail(err)
		}
	}
	res.ResourceState = state.PrepareForMaintenance

	wctx, cancel := clock.WithTimeout(ctx, m.clock(), c.waitTimeout)
	defer cancel()
	fail := func(reason string) (MaintenanceResult, error) {
		res.Reason = reason
		res.ResourceState = state.ErrorInMaintenance
		e := events.Event{Type: events.HostMaintenanceError, Host: name, Cluster: c.host.Cluster, Message: reason}
		err := fmt.Errorf("host %s: %s; it is ErrorInMaintenance: fix the cause, then `kvmctl maintenance enable %s` again or `kvmctl maintenance cancel %s`", name, reason, name, name)
		if clock.Expired(wctx) && ctx.Err() == nil {
			err = fmt.Errorf("%w: %w", ErrWaitTimeout, err)
		}
		if derr := a.done(&e, setState(name, state.ErrorInMaintenance, reason), events.RunFailed, "left ErrorInMaintenance"); derr != nil {
			err = errors.Join(err, derr)
		}
		return res, err
	}
	src, err := m.Dial(c.host)
	if err != nil {
		return fail(err.Error())
	}
	ms, err := src.EnterMaintenance(wctx)
	if err != nil {
		return fail("agent did not enter maintenance: " + firstLine(err.Error()))
	}
	res.AgentState = ms.AgentState
	byName := map[string]state.Host{}
	for _, h := range c.cluster {
		byName[h.Name] = h
	}
	res.Migrated, res.Failed = m.migrateAll(wctx, a, src, c, byName, plan.Placements)
	if len(res.Failed) > 0 && clock.Expired(wctx) {
		return fail(fmt.Sprintf("kvm.rolling.maintenance.wait.maintenance.timeout (%s) passed with %d of %d VMs not moved", c.waitTimeout, len(res.Failed), len(plan.Placements)))
	}
	if len(res.Failed) > 0 {
		return fail(fmt.Sprintf("%d of %d VMs could not be moved (first: %s: %s)", len(res.Failed), len(plan.Placements), res.Failed[0].VM, res.Failed[0].Error))
	}
	if err := m.waitEmpty(wctx, src); err != nil {
		return fail(err.Error())
	}
	e := events.Event{Type: events.HostMaintenanceIn, Host: name, Cluster: c.host.Cluster, VMs: len(res.Migrated)}
	if err := a.done(&e, setState(name, state.Maintenance, "in maintenance since "+m.now().Format(time.RFC3339)), events.RunSucceeded, ""); err != nil {
		return res, err
	}
	res.ResourceState = state.Maintenance
	if !m.SkipFinalRefresh {
		_ = m.refresh(ctx, &c)
	}
	return res, nil
}

func nonNilPlacements(p []Placement) []Placement {
	if p == nil {
		return []Placement{}
	}
	return p
}

// migrateAll moves every planned VM, at most c.parallel at once.
func (m *Maintenance) migrateAll(ctx context.Context, a *action, src MaintenanceAgent, c maintenanceConfig, hosts map[string]state.Host, plan []Placement) ([]string, []VMFailure) {
	var (
		mu       sync.Mutex
		migrated = []string{}
		failed   []VMFailure
		wg       sync.WaitGroup
		slots    = make(chan struct{}, max(c.parallel, 1))
	)
	srcKind := c.prev[c.host.Name].Hypervisor
	for _, p := range plan {
		wg.Add(1)
		go func(p Placement) {
			defer wg.Done()
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				mu.Lock()
				failed = append(failed, VMFailure{VM: p.VM, To: p.To, Error: ctx.Err().Error()})
				mu.Unlock()
				return
			}
			defer func() { <-slots }()
			// A move is recorded before it starts: a killed kvmctl's successor knows a VM may be
			// on its way (finishTransfers settles it).
			if err := a.record(events.Event{Type: events.VMMigrating, Host: c.host.Name, Cluster: c.host.Cluster, VM: p.VM, To: p.To}, nil); err != nil {
				mu.Lock()
				failed = append(failed, VMFailure{VM: p.VM, To: p.To, Error: err.Error()})
				mu.Unlock()
				return
			}
			start := m.now()
			err := m.moveVM(ctx, src, c.host, srcKind, hosts[p.To], p.VM)
			if err != nil {
				_ = a.record(events.Event{Type: events.VMMigrationFailed, Host: c.host.Name, Cluster: c.host.Cluster, VM: p.VM, To: p.To, Message: err.Error()}, nil)
				mu.Lock()
				failed = append(failed, VMFailure{VM: p.VM, To: p.To, Error: firstLine(err.Error())})
				mu.Unlock()
				return
			}
			_ = a.record(events.Event{Type: events.VMMigrated, Host: c.host.Name, Cluster: c.host.Cluster, VM: p.VM, To: p.To, DurationMS: m.now().Sub(start).Milliseconds()}, nil)
			mu.Lock()
			migrated = append(migrated, p.VM)
			mu.Unlock()
		}(p)
	}
	wg.Wait()
	sort.Strings(migrated)
	sort.Slice(failed, func(i, j int) bool { return failed[i].VM < failed[j].VM })
	return migrated, failed
}

func runsVMs(st api.Status) bool {
	for _, vm := range st.VMs {
		if vm.State == "running" {
			return true
		}
	}
	return false
}

// finishTransfers completes lab transfers that a killed kvmctl left half done: a VM of the host
// being emptied that already runs on another lab host of the cluster (same UUID) was started
// there and not yet removed here, so it is removed here now. Only lab hosts move VMs by transfer
// (see transfers); a libvirt live migration never leaves two running copies.
func (m *Maintenance) finishTransfers(ctx context.Context, a *action, c *maintenanceConfig) error {
	name := c.host.Name
	src := c.prev[name]
	if !transfers(c.host, src.Hypervisor) {
		return nil
	}
	elsewhere := map[string]string{}
	for _, h := range c.cluster {
		if h.Name == name || !h.Lab || c.prev[h.Name].Connection != state.ConnUp {
			continue
		}
		for _, vm := range c.prev[h.Name].VMs {
			if vm.State == "running" && vm.UUID != "" {
				elsewhere[vm.UUID] = h.Name
			}
		}
	}
	var agent MaintenanceAgent
	fixed := 0
	for _, vm := range src.VMs {
		other, dup := elsewhere[vm.UUID]
		if vm.State != "running" || !dup {
			continue
		}
		if agent == nil {
			ag, err := m.Dial(c.host)
			if err != nil {
				return err
			}
			agent = ag
		}
		if err := agent.RemoveVM(ctx, vm.Name); err != nil {
			return fmt.Errorf("finish the interrupted move of %s to %s: %w", vm.Name, other, err)
		}
		fixed++
		if err := a.record(events.Event{Type: events.VMMigrated, Host: name, Cluster: c.host.Cluster, VM: vm.Name, To: other,
			Message: "finished a move a killed kvmctl left half done"}, nil); err != nil {
			return err
		}
	}
	if fixed == 0 {
		return nil
	}
	return m.refresh(ctx, c)
}

// transfers reports whether VMs leave host h by a lab transfer: only when kvmctl's inventory says
// h is a lab host (`kvmctl lab up` made it), and its agent reports the test driver, which cannot
// migrate. What a host reports alone never makes kvmctl carry its definitions to another host.
func transfers(h state.Host, reported string) bool {
	return h.Lab && reported == api.HypervisorTest
}

// moveVM moves one running VM from srcHost to dst: a libvirt live migration where the hypervisor
// can do it; between lab hosts (see transfers), whose test driver cannot migrate, a transfer
// through the two agents (define and start on the target first, only then remove from the
// source). kvmctl checks the definition it carries with the VM policy first (all but the
// target's vm.disk.dirs, which its agent checks): a refusal leaves the VM on its source.
func (m *Maintenance) moveVM(ctx context.Context, src MaintenanceAgent, srcHost state.Host, srcKind string, dst state.Host, vm string) error {
	switch {
	case srcKind == api.HypervisorTest && !srcHost.Lab:
		return fmt.Errorf("move %s: %s reports libvirt's test driver, which cannot migrate, but %s is not a lab host in kvmctl's inventory: kvmctl carries VM definitions only between hosts that `kvmctl lab up` made", vm, srcHost.Name, srcHost.Name)
	case transfers(srcHost, srcKind) && !dst.Lab:
		return fmt.Errorf("move %s: %s is a lab host and %s is not a lab host: a lab VM moves only to another lab host", vm, srcHost.Name, dst.Name)
	case !transfers(srcHost, srcKind):
		host, _, err := net.SplitHostPort(dst.Address)
		if err != nil {
			return err
		}
		uri, err := api.MigrationURI(host)
		if err != nil {
			return fmt.Errorf("migrate %s to %s: %w", vm, dst.Name, err)
		}
		return src.MigrateVM(ctx, vm, api.MigrateRequest{DestURI: uri})
	}
	xml, err := src.VMXML(ctx, vm)
	if err != nil {
		return fmt.Errorf("read %s's definition: %w", vm, err)
	}
	if err := checkCarried(xml, vm); err != nil {
		return fmt.Errorf("the definition %s sent for %s was refused, the VM stays there: %w", srcHost.Name, vm, err)
	}
	to, err := m.Dial(dst)
	if err != nil {
		return err
	}
	if err := to.DefineAndStartVM(ctx, xml); err != nil {
		return fmt.Errorf("start %s on %s: %w", vm, dst.Name, err)
	}
	if err := src.RemoveVM(ctx, vm); err != nil {
		// The VM now runs on dst; leaving it on the source too would run it twice. The clean-up
		// gets its own time: the wait timeout that may have ended ctx must not stop it.
		cctx, cancel := clock.WithTimeout(context.WithoutCancel(ctx), m.clock(), m.waits().Cleanup)
		defer cancel()
		if rerr := to.RemoveVM(cctx, vm); rerr != nil {
			return fmt.Errorf("remove %s from the source: %w (and from %s again: %w)", vm, err, dst.Name, rerr)
		}
		return fmt.Errorf("remove %s from the source: %w", vm, err)
	}
	return nil
}

// checkCarried checks a definition kvmctl is about to carry to another host: it is the VM's own
// and passes the VM policy's shape check (the target's agent checks the rest).
func checkCarried(xml, vm string) error {
	parsed, err := virt.ParseDomainXML(xml)
	if err != nil {
		return err
	}
	if parsed.Name != vm {
		return fmt.Errorf("it is the definition of %q", parsed.Name)
	}
	return virt.CheckDomainShape(xml)
}

// waitEmpty waits until the source agent reports no running VM.
func (m *Maintenance) waitEmpty(ctx context.Context, src MaintenanceAgent) error {
	w := m.waits()
	for {
		sctx, cancel := clock.WithTimeout(ctx, m.clock(), w.AgentCall)
		st, err := src.Status(sctx)
		cancel()
		if err == nil && !runsVMs(st) {
			return nil
		}
		if clock.Sleep(ctx, m.clock(), w.Poll) != nil {
			return fmt.Errorf("the host still runs VMs after kvm.rolling.maintenance.wait.maintenance.timeout")
		}
	}
}

// Cancel takes host name out of maintenance, as CloudStack's table says: a connected agent is
// told to cancel whatever kvm.ssh.to.agent says; a disconnected one is restarted over SSH first
// when kvm.ssh.to.agent allows it, and the cancel fails saying what to do when it does not.
// VMs do not move back by themselves.
func (m *Maintenance) Cancel(ctx context.Context, name string) (MaintenanceResult, error) {
	res := MaintenanceResult{Host: name, Plan: []Placement{}, Migrated: []string{}}
	nothing := false
	// An agent whose maintenance file was damaged starts in hostInMaintenance (it starts no VM)
	// and says to cancel maintenance to rewrite it, while kvmctl has the host Enabled: that
	// cancel is accepted, and only the agent is told.
	agentOnly := m.Under == nil && m.agentInMaintenanceAlone(ctx, name)
	a, err := m.begin("cancel", name, false, func(h state.Host) ([]holds.Subject, []holds.Subject) {
		// A rolling run owns its cluster's maintenance: cancelling in it would make a host whose
		// Maintenance script still runs a migration target. Another host's maintenance action
		// in the cluster is no conflict.
		return nil, []holds.Subject{holds.Cluster(h.Cluster)}
	}, func(h state.Host, tookOver bool) error {
		res.ResourceState = h.ResourceState
		switch h.ResourceState {
		case state.PrepareForMaintenance, state.Maintenance, state.ErrorInMaintenance:
			return nil
		}
		if agentOnly {
			return nil
		}
		if tookOver {
			// A `maintenance enable` died before it changed the host: there is nothing to undo
			// but the hold it left, which this cancel has just taken over.
			nothing = true
			return nil
		}
		return errs.Refusedf("host %s is %s, not in maintenance: nothing to cancel", name, h.ResourceState)
	})
	if err != nil {
		return res, err
	}
	if nothing {
		res.Reason = "it was not in maintenance; the hold a killed kvmctl left on it was released"
		return res, a.done(nil, nil, events.RunSucceeded, res.Reason)
	}
	c, err := m.load(name)
	if err != nil {
		return res, a.fail(err)
	}
	agent, err := m.Dial(c.host)
	if err != nil {
		return res, a.fail(err)
	}
	sctx, cancel := clock.WithTimeout(ctx, m.clock(), m.waits().AgentCall)
	srcStatus, statusErr := agent.Status(sctx)
	cancel()
	if statusErr != nil && ctx.Err() != nil {
		return res, a.fail(ctx.Err())
	}
	if statusErr != nil {
		if !c.sshToAgent {
			return res, a.fail(fmt.Errorf("the agent on %s must be connected to cancel maintenance; start it, or set kvm.ssh.to.agent=true so kvmctl can restart it over SSH", name))
		}
		restart, err := m.restartAgent(ctx, a, c, agent)
		res.AgentRestart = restart
		if err != nil {
			return res, a.fail(err)
		}
	}
	// A lab transfer cut short (kvmctl killed between start on the target and removal here)
	// leaves a VM running twice; this host was the source, so its copy goes.
	if statusErr == nil && transfers(c.host, srcStatus.Hypervisor) && runsVMs(srcStatus) {
		if err := m.refresh(ctx, &c); err == nil {
			if err := m.finishTransfers(ctx, a, &c); err != nil {
				return res, a.fail(err)
			}
		}
	}
	ms, err := agent.CancelMaintenance(ctx)
	if err != nil {
		return res, a.fail(fmt.Errorf("the agent on %s did not cancel maintenance: %w", name, err))
	}
	res.AgentState = ms.AgentState
	e := events.Event{Type: events.HostMaintenanceCancel, Host: name, Cluster: c.host.Cluster}
	change := setState(name, state.Enabled, "maintenance cancelled "+m.now().Format(time.RFC3339))
	if agentOnly {
		// The host's own state is kvmctl's and stays as it is (Enabled or Disabled).
		e.Message = "the agent was in maintenance alone (its maintenance file was unreadable); it was told to leave it"
		res.Reason, change = e.Message, nil
	}
	if err := a.done(&e, change, events.RunSucceeded, ""); err != nil {
		return res, err
	}
	if !agentOnly {
		res.ResourceState = state.Enabled
	}
	if !m.SkipFinalRefresh {
		_ = m.refresh(ctx, &c)
	}
	return res, nil
}

// agentInMaintenanceAlone reports whether host name is not in maintenance for kvmctl while its
// agent says it is (see Cancel).
func (m *Maintenance) agentInMaintenanceAlone(ctx context.Context, name string) bool {
	var h state.Host
	if err := m.Store.View(func(tx state.Tx) (err error) { h, err = getHost(tx, name); return err }); err != nil {
		return false
	}
	switch h.ResourceState {
	case state.PrepareForMaintenance, state.Maintenance, state.ErrorInMaintenance:
		return false
	}
	agent, err := m.Dial(h)
	if err != nil {
		return false
	}
	sctx, cancel := clock.WithTimeout(ctx, m.clock(), m.waits().AgentCall)
	defer cancel()
	st, err := agent.Status(sctx)
	return err == nil && st.AgentState == api.AgentStateInMaintenance
}

// AgentRestartTarget is where and what to run over SSH to restart host h's agent: its SSH
// address (the agent's host, on its SSH port), user and keys, and its restart command.
func AgentRestartTarget(h state.Host) (sshx.Target, string, error) {
	host, _, err := net.SplitHostPort(h.Address)
	if err != nil {
		return sshx.Target{}, "", err
	}
	addr := host
	if h.SSH.Port != 0 {
		addr = net.JoinHostPort(host, fmt.Sprint(h.SSH.Port))
	}
	cmd := h.RestartCommand
	if cmd == "" {
		cmd = sshx.DefaultRestartCommand
	}
	return sshx.Target{Host: h.Name, Addr: addr, User: h.SSH.User, KeyFile: h.SSH.KeyFile, KnownHostsFile: h.SSH.KnownHostsFile}, cmd, nil
}

// restartAgent runs the host's restart command over SSH and waits for the agent to answer.
func (m *Maintenance) restartAgent(ctx context.Context, a *action, c maintenanceConfig, agent MaintenanceAgent) (*AgentRestart, error) {
	h := c.host
	if m.SSH == nil {
		return nil, fmt.Errorf("cannot restart the agent on %s: no SSH runner", h.Name)
	}
	target, cmd, err := AgentRestartTarget(h)
	if err != nil {
		return nil, err
	}
	r := &AgentRestart{Command: cmd}
	if err := a.record(events.Event{Type: events.HostAgentRestart, Host: h.Name, Cluster: h.Cluster, Message: "agent disconnected; restarting it over SSH: " + cmd}, nil); err != nil {
		return r, err
	}
	out, err := m.SSH.Run(ctx, target, cmd)
	r.Output = out
	if err != nil {
		return r, fmt.Errorf("restart the agent on %s over SSH: %w", h.Name, err)
	}
	w := m.waits()
	wctx, cancel := clock.WithTimeout(ctx, m.clock(), c.restartTimeout)
	defer cancel()
	for {
		sctx, scancel := clock.WithTimeout(wctx, m.clock(), w.AgentCall)
		_, err := agent.Status(sctx)
		scancel()
		if err == nil {
			return r, nil
		}
		if clock.Sleep(wctx, m.clock(), w.Poll) != nil {
			return r, fmt.Errorf("the agent on %s did not answer within %s of its restart over SSH (%s): maintenance was not cancelled", h.Name, c.restartTimeout, firstLine(err.Error()))
		}
	}
}
