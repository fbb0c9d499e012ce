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
	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/inventory"
	"github.com/kvmctl/kvmctl/pkg/settings"
	"github.com/kvmctl/kvmctl/pkg/sshx"
	"github.com/kvmctl/kvmctl/pkg/state"
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

// Store is the state file as engines see it: transactions, opened per call.
type Store interface {
	View(func(state.Tx) error) error
	Update(func(state.Tx) error) error
}

// SSHRunner runs one command on a host over SSH.
type SSHRunner interface {
	Run(ctx context.Context, t sshx.Target, command string) (string, error)
}

// Maintenance puts hosts into maintenance and takes them out again. It journals every state
// change in the store before it acts, and never holds the store open while it waits on agents.
type Maintenance struct {
	Store  Store
	Dial   AgentDialer
	SSH    SSHRunner
	Events events.Sink
	Now    func() time.Time
	// StatusTimeout bounds one status call to an agent.
	StatusTimeout time.Duration
	// PollInterval is how often a wait (VMs gone, agent back) looks again.
	PollInterval time.Duration
	// SkipFinalRefresh leaves out the status refresh after enable and cancel, for a caller
	// (rolling maintenance) that refreshes before its next plan anyway.
	SkipFinalRefresh bool
	// RunID is the rolling run this engine works for: the clusters it holds are open to it.
	// Without it, a cluster held by a running run is refused, naming the run.
	RunID string
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

func (m *Maintenance) now() time.Time {
	if m.Now == nil {
		return time.Now()
	}
	return m.Now()
}

func (m *Maintenance) emit(e events.Event) {
	if m.Events == nil {
		return
	}
	e.Time = m.now()
	_ = m.Events.Emit(e)
}

func (m *Maintenance) statusTimeout() time.Duration {
	if m.StatusTimeout <= 0 {
		return 5 * time.Second
	}
	return m.StatusTimeout
}

func (m *Maintenance) pollInterval() time.Duration {
	if m.PollInterval <= 0 {
		return 200 * time.Millisecond
	}
	return m.PollInterval
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
		h, err := state.GetHost(tx, name)
		if state.IsNotFound(err) {
			return inventory.NotFound("host", name, "hosts")
		}
		if err != nil {
			return err
		}
		c.host = h
		// Another kvmctl's rolling run owns this cluster's maintenance: `maintenance enable`
		// would take a second host down behind --max-unavailable, `cancel` would make a host
		// whose Maintenance script still runs a migration target.
		if err := lockConflictExcept(tx, []string{h.Cluster}, m.RunID); err != nil {
			return err
		}
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

// refresh asks every host of the cluster for its status and records the answers.
func (m *Maintenance) refresh(ctx context.Context, c *maintenanceConfig) error {
	dial := func(h state.Host) (StatusClient, error) { return m.Dial(h) }
	checks := CheckHosts(ctx, c.cluster, c.prev, dial, m.statusTimeout(), m.now)
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

// capacityHosts turns the cluster and its statuses into the planner's input. A host's latest
// resource state in the store counts, so a host another kvmctl put into maintenance is no target.
func capacityHosts(cluster []state.Host, status map[string]state.HostStatus) []CapacityHost {
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

// Enable puts host name into maintenance: plan where its running VMs go (refusing, with nothing
// changed, when one fits nowhere), mark it PrepareForMaintenance, tell its agent to enter
// hostInMaintenance, move the VMs at most `host.maintenance.max.parallel.migrations` at a time,
// and mark it Maintenance. A failure leaves it ErrorInMaintenance with the reason.
func (m *Maintenance) Enable(ctx context.Context, name string, opts EnableOptions) (MaintenanceResult, error) {
	dryRun := opts.DryRun
	res := MaintenanceResult{Host: name, DryRun: dryRun, Plan: []Placement{}, Migrated: []string{}}
	c, err := m.load(name)
	if err != nil {
		return res, err
	}
	res.ResourceState = c.host.ResourceState
	switch c.host.ResourceState {
	case state.Enabled, state.Disabled, state.ErrorInMaintenance:
	case state.Maintenance:
		if opts.Prepared {
			// A run that died between marking the host Maintenance and journaling it: the host
			// is where the run wants it.
			return res, nil
		}
		return res, errs.Refusedf("host %s is in %s: `kvmctl maintenance cancel %s` first, or leave it", name, c.host.ResourceState, name)
	case state.PrepareForMaintenance:
		if !opts.Prepared {
			return res, errs.Refusedf("host %s is in %s: another kvmctl is putting it into maintenance; wait, or `kvmctl maintenance cancel %s`", name, c.host.ResourceState, name)
		}
	default:
		return res, errs.Refusedf("host %s is in %s: `kvmctl maintenance cancel %s` first, or leave it", name, c.host.ResourceState, name)
	}
	if !opts.Fresh {
		if err := m.refresh(ctx, &c); err != nil {
			return res, err
		}
	}
	if s := c.prev[name]; s.Connection != state.ConnUp {
		return res, fmt.Errorf("the agent of %s does not answer, so it cannot enter maintenance: %s", name, firstLine(s.LastError))
	}
	if !dryRun {
		if err := m.finishTransfers(ctx, &c); err != nil {
			return res, err
		}
	}
	plan, err := PlanCapacity(CapacityInput{Hosts: capacityHosts(c.cluster, c.prev), Empty: []string{name}, CPUFactor: c.cpuF, MemFactor: c.memF, Prefer: opts.Prefer})
	if err != nil {
		return res, err
	}
	res.Plan, res.Unplaced = nonNilPlacements(plan.Placements), plan.Unplaced
	m.emit(events.Event{Type: events.HostMaintenancePlan, Host: name, Cluster: c.host.Cluster,
		Fields: map[string]any{"vms": len(plan.Placements), "unplaced": len(plan.Unplaced)}})
	if !plan.OK() {
		var lines []string
		for _, u := range plan.Unplaced {
			lines = append(lines, fmt.Sprintf("  %s: %s", u.VM, u.Reason))
		}
		// Say which hosts were not targets and why: cancelling another host's maintenance or
		// starting its agent is often the way out.
		var not []string
		for _, h := range capacityHosts(c.cluster, c.prev) {
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
		return res, fmt.Errorf("%w; nothing was changed. VMs with no place:\n%s", ErrDoesNotFit, strings.Join(lines, "\n"))
	}
	if dryRun {
		return res, nil
	}

	// Journal the intent and the state to return to before the first action.
	before := c.host.ResourceState
	if before != state.PrepareForMaintenance {
		if err := m.setState(name, state.PrepareForMaintenance, "entering maintenance (was "+before+")"); err != nil {
			return res, err
		}
	}
	res.ResourceState = state.PrepareForMaintenance
	if before != state.PrepareForMaintenance {
		m.emit(events.Event{Type: events.HostMaintenancePrep, Host: name, Cluster: c.host.Cluster, Message: "was " + before})
	}

	fail := func(reason string) (MaintenanceResult, error) {
		res.Reason = reason
		res.ResourceState = state.ErrorInMaintenance
		_ = m.setState(name, state.ErrorInMaintenance, reason)
		m.emit(events.Event{Type: events.HostMaintenanceError, Host: name, Cluster: c.host.Cluster, Message: reason})
		return res, fmt.Errorf("host %s: %s; it is ErrorInMaintenance: fix the cause, then `kvmctl maintenance enable %s` again or `kvmctl maintenance cancel %s`", name, reason, name, name)
	}
	wctx, cancel := context.WithTimeout(ctx, c.waitTimeout)
	defer cancel()
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
	res.Migrated, res.Failed = m.migrateAll(wctx, src, c, byName, plan.Placements)
	if len(res.Failed) > 0 && errors.Is(wctx.Err(), context.DeadlineExceeded) {
		return fail(fmt.Sprintf("kvm.rolling.maintenance.wait.maintenance.timeout (%s) passed with %d of %d VMs not moved", c.waitTimeout, len(res.Failed), len(plan.Placements)))
	}
	if len(res.Failed) > 0 {
		return fail(fmt.Sprintf("%d of %d VMs could not be moved (first: %s: %s)", len(res.Failed), len(plan.Placements), res.Failed[0].VM, res.Failed[0].Error))
	}
	if err := m.waitEmpty(wctx, src); err != nil {
		return fail(err.Error())
	}
	if err := m.setState(name, state.Maintenance, "in maintenance since "+m.now().UTC().Format(time.RFC3339)); err != nil {
		return res, err
	}
	res.ResourceState = state.Maintenance
	m.emit(events.Event{Type: events.HostMaintenanceIn, Host: name, Cluster: c.host.Cluster, Fields: map[string]any{"vms_moved": len(res.Migrated)}})
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
func (m *Maintenance) migrateAll(ctx context.Context, src MaintenanceAgent, c maintenanceConfig, hosts map[string]state.Host, plan []Placement) ([]string, []VMFailure) {
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
			m.emit(events.Event{Type: events.VMMigrating, Host: c.host.Name, Cluster: c.host.Cluster, VM: p.VM, Fields: map[string]any{"to": p.To}})
			start := m.now()
			err := m.moveVM(ctx, src, srcKind, hosts[p.To], p.VM)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed = append(failed, VMFailure{VM: p.VM, To: p.To, Error: firstLine(err.Error())})
				m.emit(events.Event{Type: events.VMMigrationFailed, Host: c.host.Name, Cluster: c.host.Cluster, VM: p.VM, Message: err.Error(), Fields: map[string]any{"to": p.To}})
				return
			}
			migrated = append(migrated, p.VM)
			m.emit(events.Event{Type: events.VMMigrated, Host: c.host.Name, Cluster: c.host.Cluster, VM: p.VM,
				Fields: map[string]any{"to": p.To, "ms": m.now().Sub(start).Milliseconds()}})
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
// being emptied that already runs on another host of the cluster (same UUID) was started there
// and not yet removed here, so it is removed here now. Only the lab's test driver moves VMs by
// transfer; a libvirt live migration never leaves two running copies.
func (m *Maintenance) finishTransfers(ctx context.Context, c *maintenanceConfig) error {
	name := c.host.Name
	src := c.prev[name]
	if src.Hypervisor != api.HypervisorTest {
		return nil
	}
	elsewhere := map[string]string{}
	for _, h := range c.cluster {
		if h.Name == name || c.prev[h.Name].Connection != state.ConnUp {
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
			a, err := m.Dial(c.host)
			if err != nil {
				return err
			}
			agent = a
		}
		if err := agent.RemoveVM(ctx, vm.Name); err != nil {
			return fmt.Errorf("finish the interrupted move of %s to %s: %w", vm.Name, other, err)
		}
		fixed++
		m.emit(events.Event{Type: events.VMMigrated, Host: name, Cluster: c.host.Cluster, VM: vm.Name,
			Message: "finished a move a killed kvmctl left half done", Fields: map[string]any{"to": other}})
	}
	if fixed == 0 {
		return nil
	}
	return m.refresh(ctx, c)
}

// moveVM moves one running VM to dst: a libvirt live migration where the hypervisor can do it;
// on the lab's test driver, which cannot migrate, a transfer through the two agents (define
// and start on the target first, only then remove from the source), which is lab-only.
func (m *Maintenance) moveVM(ctx context.Context, src MaintenanceAgent, srcKind string, dst state.Host, vm string) error {
	if srcKind != api.HypervisorTest {
		host, _, err := net.SplitHostPort(dst.Address)
		if err != nil {
			return err
		}
		return src.MigrateVM(ctx, vm, api.MigrateRequest{DestURI: "qemu+tls://" + host + "/system"})
	}
	xml, err := src.VMXML(ctx, vm)
	if err != nil {
		return fmt.Errorf("read %s's definition: %w", vm, err)
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
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if rerr := to.RemoveVM(cctx, vm); rerr != nil {
			return fmt.Errorf("remove %s from the source: %w (and from %s again: %v)", vm, err, dst.Name, rerr)
		}
		return fmt.Errorf("remove %s from the source: %w", vm, err)
	}
	return nil
}

// waitEmpty waits until the source agent reports no running VM.
func (m *Maintenance) waitEmpty(ctx context.Context, src MaintenanceAgent) error {
	for {
		sctx, cancel := context.WithTimeout(ctx, m.statusTimeout())
		st, err := src.Status(sctx)
		cancel()
		if err == nil {
			running := 0
			for _, vm := range st.VMs {
				if vm.State == "running" {
					running++
				}
			}
			if running == 0 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the host still runs VMs after kvm.rolling.maintenance.wait.maintenance.timeout")
		case <-time.After(m.pollInterval()):
		}
	}
}

func (m *Maintenance) setState(name, to, reason string) error {
	return m.Store.Update(func(tx state.Tx) error {
		h, err := state.GetHost(tx, name)
		if err != nil {
			return err
		}
		h.ResourceState, h.StateReason = to, reason
		return state.PutHost(tx, h)
	})
}

// Cancel takes host name out of maintenance, as CloudStack's table says: a connected agent is
// told to cancel whatever kvm.ssh.to.agent says; a disconnected one is restarted over SSH first
// when kvm.ssh.to.agent allows it, and the cancel fails saying what to do when it does not.
// VMs do not move back by themselves.
func (m *Maintenance) Cancel(ctx context.Context, name string) (MaintenanceResult, error) {
	res := MaintenanceResult{Host: name, Plan: []Placement{}, Migrated: []string{}}
	c, err := m.load(name)
	if err != nil {
		return res, err
	}
	res.ResourceState = c.host.ResourceState
	switch c.host.ResourceState {
	case state.PrepareForMaintenance, state.Maintenance, state.ErrorInMaintenance:
	default:
		return res, errs.Refusedf("host %s is %s, not in maintenance: nothing to cancel", name, c.host.ResourceState)
	}
	agent, err := m.Dial(c.host)
	if err != nil {
		return res, err
	}
	sctx, cancel := context.WithTimeout(ctx, m.statusTimeout())
	srcStatus, statusErr := agent.Status(sctx)
	cancel()
	if statusErr != nil && ctx.Err() != nil {
		return res, ctx.Err()
	}
	if statusErr != nil {
		if !c.sshToAgent {
			return res, fmt.Errorf("the agent on %s must be connected to cancel maintenance; start it, or set kvm.ssh.to.agent=true so kvmctl can restart it over SSH", name)
		}
		restart, err := m.restartAgent(ctx, c, agent)
		res.AgentRestart = restart
		if err != nil {
			return res, err
		}
	}
	// A lab transfer cut short (kvmctl killed between start on the target and removal here)
	// leaves a VM running twice; this host was the source, so its copy goes.
	if statusErr == nil && srcStatus.Hypervisor == api.HypervisorTest && runsVMs(srcStatus) {
		if err := m.refresh(ctx, &c); err == nil {
			if err := m.finishTransfers(ctx, &c); err != nil {
				return res, err
			}
		}
	}
	ms, err := agent.CancelMaintenance(ctx)
	if err != nil {
		return res, fmt.Errorf("the agent on %s did not cancel maintenance: %w", name, err)
	}
	res.AgentState = ms.AgentState
	if err := m.setState(name, state.Enabled, "maintenance cancelled "+m.now().UTC().Format(time.RFC3339)); err != nil {
		return res, err
	}
	res.ResourceState = state.Enabled
	m.emit(events.Event{Type: events.HostMaintenanceCancel, Host: name, Cluster: c.host.Cluster})
	if !m.SkipFinalRefresh {
		_ = m.refresh(ctx, &c)
	}
	return res, nil
}

// restartAgent runs the host's restart command over SSH and waits for the agent to answer.
func (m *Maintenance) restartAgent(ctx context.Context, c maintenanceConfig, agent MaintenanceAgent) (*AgentRestart, error) {
	h := c.host
	if m.SSH == nil {
		return nil, fmt.Errorf("cannot restart the agent on %s: no SSH runner", h.Name)
	}
	host, _, err := net.SplitHostPort(h.Address)
	if err != nil {
		return nil, err
	}
	addr := host
	if h.SSH.Port != 0 {
		addr = net.JoinHostPort(host, fmt.Sprint(h.SSH.Port))
	}
	cmd := h.RestartCommand
	if cmd == "" {
		cmd = sshx.DefaultRestartCommand
	}
	r := &AgentRestart{Command: cmd}
	m.emit(events.Event{Type: events.HostAgentRestart, Host: h.Name, Cluster: h.Cluster, Message: "agent disconnected; restarting it over SSH: " + cmd})
	out, err := m.SSH.Run(ctx, sshx.Target{Host: h.Name, Addr: addr, User: h.SSH.User, KeyFile: h.SSH.KeyFile, KnownHostsFile: h.SSH.KnownHostsFile}, cmd)
	r.Output = out
	if err != nil {
		return r, fmt.Errorf("restart the agent on %s over SSH: %w", h.Name, err)
	}
	wctx, cancel := context.WithTimeout(ctx, c.restartTimeout)
	defer cancel()
	for {
		sctx, scancel := context.WithTimeout(wctx, m.statusTimeout())
		_, err := agent.Status(sctx)
		scancel()
		if err == nil {
			return r, nil
		}
		select {
		case <-wctx.Done():
			return r, fmt.Errorf("the agent on %s did not answer within %s of its restart over SSH (%s): maintenance was not cancelled", h.Name, c.restartTimeout, firstLine(err.Error()))
		case <-time.After(m.pollInterval()):
		}
	}
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
