package orchestrate

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/kvmctl/kvmctl/pkg/clock"
	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/inventory"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// This file is the run's phases, in the order the seed gives them: the checks before any
// action, PreFlight, then cluster by cluster, batch by batch.

// capacityCheck is the seed's check before any action: could every host's VMs (every batch's,
// with --max-unavailable) be placed on the rest of its cluster right now? A host that fails it
// stops the run with nothing changed, or is skipped with --forced. It is checked again, with
// fresh statuses, just before each batch enters maintenance.
func (x *Execution) capacityCheck(ctx context.Context) error {
	run := x.Run()
	if run.PreFlightDone {
		return nil
	}
	m := x.maintenance()
	var failures []string
	for _, c := range run.Clusters {
		var hosts []*RunHost
		for _, h := range run.Hosts {
			if h.Cluster == c.Name && h.Active() {
				hosts = append(hosts, h)
			}
		}
		if len(hosts) == 0 {
			continue
		}
		mc, err := m.load(hosts[0].Name)
		if err != nil {
			return err
		}
		if err := m.refresh(ctx, &mc); err != nil {
			return err
		}
		n := run.Request.MaxUnavailable
		for i := 0; i < len(hosts); i += n {
			batch := hosts[i:min(i+n, len(hosts))]
			reasons, err := unplacedReasons(mc, batch)
			if err != nil {
				return err
			}
			for _, h := range batch {
				if reason, ok := reasons[h.Name]; ok {
					failures = append(failures, h.Name+": "+reason)
					if run.Request.Forced {
						if err := x.skip(h, reason); err != nil {
							return err
						}
					}
				}
			}
		}
	}
	// A script the agent would refuse (wrong owner or mode) is found now, not after its host was
	// emptied and patched.
	for _, h := range run.Hosts {
		if !h.Active() {
			continue
		}
		if reason := x.refusedScript(ctx, h); reason != "" {
			failures = append(failures, h.Name+": "+reason)
			if run.Request.Forced {
				if err := x.skip(h, reason); err != nil {
					return err
				}
			}
		}
	}
	if len(failures) > 0 && !run.Request.Forced {
		return &fatal{"checks before any action failed, no action taken: " + strings.Join(failures, "; ")}
	}
	return x.record(events.Event{Type: events.RunCapacityChecked, Message: fmt.Sprintf("%d hosts can be emptied", countActive(x.snapshot()))}, nil, nil)
}

// unplacedReasons plans the evacuation of batch together and says, per host, why a VM of it
// fits nowhere.
func unplacedReasons(mc maintenanceConfig, batch []*RunHost) (map[string]string, error) {
	names := make([]string, len(batch))
	for i, h := range batch {
		names[i] = h.Name
	}
	plan, err := PlanCapacity(CapacityInput{Hosts: CapacityHosts(mc.cluster, mc.prev), Empty: names, CPUFactor: mc.cpuF, MemFactor: mc.memF})
	if err != nil {
		return nil, err
	}
	reasons := map[string]string{}
	for _, u := range plan.Unplaced {
		if _, ok := reasons[u.From]; !ok {
			reasons[u.From] = fmt.Sprintf("capacity: VM %s fits nowhere: %s", u.VM, u.Reason)
		}
	}
	return reasons, nil
}

// refusedScript names a stage script of h that its agent refuses, or "" (an agent that does not
// answer is left to PreFlight, which fails it at once).
func (x *Execution) refusedScript(ctx context.Context, h *RunHost) string {
	a, err := x.dialHost(h.Name)
	if err != nil {
		return ""
	}
	hctx, cancel := clock.WithTimeout(ctx, x.clk, x.waits.HooksCall)
	defer cancel()
	scripts, err := a.Hooks(hctx)
	if err != nil {
		return ""
	}
	for _, s := range scripts {
		if s.Refused != "" {
			return fmt.Sprintf("%s script refused: %s", s.Stage, s.Refused)
		}
	}
	return ""
}

func (x *Execution) preflight(ctx context.Context) error {
	run := x.Run()
	if run.PreFlightDone {
		return nil
	}
	var (
		mu       sync.Mutex
		failures []string
		pending  []*RunHost
	)
	for _, h := range run.Hosts {
		if h.Active() && !h.At(events.StepPreFlightDone) {
			pending = append(pending, h)
		}
	}
	if x.abortRequested() {
		return errAborted
	}
	// PreFlight changes nothing on a host, so every host runs it at once (a few at a time).
	if err := parallel(pending, x.waits.PreflightParallel, func(h *RunHost) error {
		done := x.step(h, events.StepPreFlightDone)
		st, err := x.runStageThen(ctx, h, events.PreFlight, done)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var rec *errRecord
		if errors.As(err, &rec) {
			return err
		}
		switch v, reason := classify(events.PreFlight, st, err); v {
		case stageOK:
			return x.ensure(h, events.StepPreFlightDone, done)
		case stageNotNeeded:
			return x.skip(h, reason)
		default:
			mu.Lock()
			failures = append(failures, h.Name+": "+reason)
			mu.Unlock()
			if run.Request.Forced {
				return x.skip(h, reason)
			}
			return nil
		}
	}); err != nil {
		return err
	}
	sort.Strings(failures)
	if len(failures) > 0 && !run.Request.Forced {
		return &fatal{"PreFlight failed, no action taken: " + strings.Join(failures, "; ")}
	}
	return x.record(events.Event{Type: events.RunPreFlightDone, Message: fmt.Sprintf("%d hosts to maintain", countActive(x.snapshot()))},
		func(rr *Run) { rr.PreFlightDone = true }, nil)
}

// parallel runs fn for every host, at most limit at a time, and returns the first error (in
// host order) once all have finished: a batch never leaves a host half-handled.
func parallel(hosts []*RunHost, limit int, fn func(*RunHost) error) error {
	errs := make([]error, len(hosts))
	slots := make(chan struct{}, max(limit, 1))
	var wg sync.WaitGroup
	for i, h := range hosts {
		wg.Add(1)
		go func(i int, h *RunHost) {
			defer wg.Done()
			slots <- struct{}{}
			defer func() { <-slots }()
			errs[i] = fn(h)
		}(i, h)
	}
	wg.Wait()
	// A failure to record outranks the others: the run must stop as it is.
	for _, err := range errs {
		var rec *errRecord
		if errors.As(err, &rec) {
			return err
		}
	}
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func countActive(run *Run) int {
	n := 0
	for _, h := range run.Hosts {
		if h.Active() {
			n++
		}
	}
	return n
}

func (x *Execution) skip(h *RunHost, reason string) error {
	return x.record(events.Event{Type: events.HostSkipped, Host: h.Name, Cluster: h.Cluster, Message: reason}, func(*Run) {
		h.Step, h.Reason = events.StepSkipped, reason
		if h.EndedAt.IsZero() && !h.StartedAt.IsZero() {
			h.EndedAt = x.clk.Now().UTC()
		}
	}, nil)
}

// fail handles a host-level failure: with --forced the host is skipped and the run goes on;
// without, the run stops.
func (x *Execution) fail(ctx context.Context, h *RunHost, reason string) error {
	if ctx.Err() != nil {
		// kvmctl is going away: that is no failure of the host, and --forced must not skip it.
		return ctx.Err()
	}
	if x.Run().Request.Forced {
		return x.skip(h, reason)
	}
	return &fatal{fmt.Sprintf("host %s: %s", h.Name, reason)}
}

// disableCluster journals the state to restore, then disables the cluster, each in its own
// transaction: a kvmctl killed in between restores a state it recorded.
func (x *Execution) disableCluster(c *RunCluster) error {
	var prior string
	if err := x.r.Store.View(func(tx state.Tx) error {
		cl, err := state.GetCluster(tx, c.Name)
		prior = cl.ResourceState
		return err
	}); err != nil {
		return err
	}
	if err := x.record(events.Event{Type: events.ClusterDisabling, Cluster: c.Name, Message: "was " + prior}, func(*Run) {
		c.PriorState, c.Disabled = prior, true
	}, nil); err != nil {
		return err
	}
	return x.record(events.Event{Type: events.ClusterDisabled, Cluster: c.Name}, nil, func(tx state.Tx) error {
		_, err := inventory.SetClusterState(tx, c.Name, state.Disabled)
		return err
	})
}

// restoreCluster gives the cluster back the state it had before the run, with the record of it.
func (x *Execution) restoreCluster(c *RunCluster) error {
	to := c.PriorState
	if to != state.Disabled {
		to = state.Enabled
	}
	err := x.record(events.Event{Type: events.ClusterEnabled, Cluster: c.Name, Message: "restored to " + to}, func(*Run) { c.Disabled = false },
		func(tx state.Tx) error {
			_, err := inventory.SetClusterState(tx, c.Name, to)
			return err
		})
	if err != nil {
		x.mu.Lock()
		c.Disabled = true
		x.mu.Unlock()
		_ = x.record(events.Event{Type: events.ClusterEnableFailed, Cluster: c.Name, Message: err.Error()}, nil, nil)
	}
	return err
}

func (x *Execution) doCluster(ctx context.Context, c *RunCluster) error {
	run := x.Run()
	var pending []*RunHost
	for _, h := range run.Hosts {
		if h.Cluster == c.Name && h.Active() {
			pending = append(pending, h)
		}
	}
	if len(pending) > 0 && !c.Disabled {
		if err := x.disableCluster(c); err != nil {
			return err
		}
	}
	n := run.Request.MaxUnavailable
	for i := 0; i < len(pending); i += n {
		if err := x.doBatch(ctx, pending[i:min(i+n, len(pending))]); err != nil {
			return err
		}
	}
	if c.Disabled {
		if err := x.restoreCluster(c); err != nil {
			return err
		}
	}
	return x.record(events.Event{Type: events.ClusterDone, Cluster: c.Name}, func(*Run) { c.Done = true }, nil)
}

// doBatch takes up to MaxUnavailable hosts of one cluster through maintenance together: they
// are emptied one after the other (each plan sees the VMs the previous moved) but are in
// maintenance, and run their Maintenance scripts, at the same time.
func (x *Execution) doBatch(ctx context.Context, batch []*RunHost) error {
	active := func() []*RunHost {
		x.mu.Lock()
		defer x.mu.Unlock()
		var out []*RunHost
		for _, h := range batch {
			if h.Active() {
				out = append(out, h)
			}
		}
		return out
	}
	if x.abortRequested() {
		return errAborted
	}
	// 1. The Maintenance script must exist; then PreMaintenance, on the batch's hosts at once.
	if err := parallel(active(), len(batch), func(h *RunHost) error { return x.preMaintenance(ctx, h) }); err != nil {
		return err
	}
	// 2. Capacity, refreshed, for the batch together; then mark every host of the batch so that
	// none is a target for another.
	var toPrepare []*RunHost
	for _, h := range active() {
		if !h.At(events.StepPrepared) {
			toPrepare = append(toPrepare, h)
		}
	}
	if len(toPrepare) > 0 {
		if err := x.recheckCapacity(ctx, toPrepare); err != nil {
			return err
		}
	}
	for _, h := range active() {
		if h.At(events.StepPrepared) {
			continue
		}
		// The host's own state changes in the same transaction as the step that says so.
		if err := x.record(events.Event{Type: events.HostStep, Host: h.Name, Cluster: h.Cluster, Step: events.StepPrepared}, func(*Run) {
			h.Step, h.InMaint = events.StepPrepared, true
		}, func(tx state.Tx) error {
			sh, err := x.hostRecord(tx, h.Name)
			if err != nil || sh.ResourceState == state.PrepareForMaintenance {
				return err
			}
			sh.ResourceState, sh.StateReason = state.PrepareForMaintenance, "rolling maintenance run "+x.run.ID+" (was "+sh.ResourceState+")"
			return state.PutHost(tx, sh)
		}); err != nil {
			return err
		}
	}
	// 3. Enter maintenance, one host after the other. The first plans with the statuses the
	// capacity check just read; each later one reads them again, with its predecessors' VMs moved.
	for i, h := range active() {
		if h.At(events.StepInMaintenance) {
			continue
		}
		if x.abortRequested() {
			return errAborted
		}
		if err := x.enterMaintenance(ctx, h, i == 0 && len(toPrepare) > 0); err != nil {
			return err
		}
	}
	// 4. The Maintenance scripts, at the same time.
	if x.abortRequested() {
		return errAborted
	}
	var maintain []*RunHost
	for _, h := range active() {
		if !h.At(events.StepMaintenanceDone) {
			maintain = append(maintain, h)
		}
	}
	if err := parallel(maintain, len(batch), func(h *RunHost) error { return x.maintain(ctx, h) }); err != nil {
		return err
	}
	// 5. Cancel maintenance, then PostMaintenance, on the batch's hosts at once. An abort asked
	// for now takes effect after this step: the hosts leave maintenance either way.
	return parallel(active(), len(batch), func(h *RunHost) error { return x.postMaintenance(ctx, h) })
}

// preMaintenance checks that h has a Maintenance script (else it is skipped, as the seed says),
// then runs its PreMaintenance.
func (x *Execution) preMaintenance(ctx context.Context, h *RunHost) error {
	// The host's start is journaled with its script check: the check only reads the host.
	var evs []events.Event
	if h.StartedAt.IsZero() {
		evs = append(evs, events.Event{Type: events.HostStarted, Host: h.Name, Cluster: h.Cluster})
	}
	checked, reason, checkErr := true, "", error(nil)
	if !h.At(events.StepScriptChecked) {
		checked, reason, checkErr = x.checkMaintenanceScript(ctx, h)
		if checkErr == nil && checked {
			evs = append(evs, events.Event{Type: events.HostStep, Host: h.Name, Cluster: h.Cluster, Step: events.StepScriptChecked})
		}
	}
	if len(evs) > 0 {
		if err := x.recordAll(evs, func(*Run) {
			if h.StartedAt.IsZero() {
				h.StartedAt = x.clk.Now().UTC()
			}
			if checkErr == nil && checked && !h.At(events.StepScriptChecked) {
				h.Step = events.StepScriptChecked
			}
		}, nil); err != nil {
			return err
		}
	}
	if checkErr != nil {
		return x.fail(ctx, h, checkErr.Error())
	}
	if !checked {
		return x.skip(h, reason)
	}
	if h.At(events.StepPreMaintDone) {
		return nil
	}
	done := x.step(h, events.StepPreMaintDone)
	st, err := x.runStageThen(ctx, h, events.PreMaintenance, done)
	if isRecordErr(err) {
		return err
	}
	switch v, reason := classify(events.PreMaintenance, st, err); v {
	case stageNotNeeded:
		return x.skip(h, reason)
	case stageFailed:
		return x.fail(ctx, h, reason)
	}
	return x.ensure(h, events.StepPreMaintDone, done)
}

// step is the record of h reaching step s.
func (x *Execution) step(h *RunHost, s events.Step) next {
	return next{events.Event{Type: events.HostStep, Host: h.Name, Cluster: h.Cluster, Step: s}, func(*Run) { h.Step = s }}
}

// ensure records n unless h has reached step s already (with its stage's end).
func (x *Execution) ensure(h *RunHost, s events.Step, n next) error {
	x.mu.Lock()
	at := h.At(s)
	x.mu.Unlock()
	if at {
		return nil
	}
	return x.record(n.event, n.change, nil)
}

// enterMaintenance empties h through the maintenance engine, within the wait timeout.
func (x *Execution) enterMaintenance(ctx context.Context, h *RunHost, fresh bool) error {
	m := x.maintenance()
	wait := x.Run().WaitTimeout
	wctx, cancel := clock.WithTimeout(ctx, x.clk, wait)
	res, err := m.Enable(wctx, h.Name, EnableOptions{Prepared: true, Fresh: fresh, Prefer: x.updatedHosts(h.Cluster)})
	// The engine's own wait and the run's end at the same moment: either says it timed out.
	timedOut := (errors.Is(err, ErrWaitTimeout) || clock.Expired(wctx)) && ctx.Err() == nil
	cancel()
	if err != nil {
		if ctx.Err() != nil || isRecordErr(err) {
			return errors.Join(ctx.Err(), err)
		}
		x.cancelMaintenance(ctx, h)
		if timedOut {
			// The seed: a host that does not reach maintenance within the wait timeout stops the
			// run, --forced or not; something is wrong beyond this host.
			return &fatal{fmt.Sprintf("host %s did not reach maintenance within kvm.rolling.maintenance.wait.maintenance.timeout (%s): %v", h.Name, wait, err)}
		}
		return x.fail(ctx, h, "entering maintenance: "+err.Error())
	}
	return x.record(events.Event{Type: events.HostStep, Host: h.Name, Cluster: h.Cluster, Step: events.StepInMaintenance, VMs: len(res.Migrated)},
		func(*Run) { h.Step, h.VMsMoved = events.StepInMaintenance, len(res.Migrated) }, nil)
}

// maintain runs h's Maintenance script; the seed: a failed one cancels maintenance, then stops
// the run unless forced.
func (x *Execution) maintain(ctx context.Context, h *RunHost) error {
	done := x.step(h, events.StepMaintenanceDone)
	st, err := x.runStageThen(ctx, h, events.Maintenance, done)
	if isRecordErr(err) {
		return err
	}
	if v, reason := classify(events.Maintenance, st, err); v == stageFailed {
		if ctx.Err() != nil {
			return ctx.Err() // interrupted, not failed: the host stays as it is, resumable
		}
		x.cancelMaintenance(ctx, h)
		return x.fail(ctx, h, reason)
	}
	return x.ensure(h, events.StepMaintenanceDone, done)
}

// postMaintenance takes h out of maintenance and runs its PostMaintenance.
func (x *Execution) postMaintenance(ctx context.Context, h *RunHost) error {
	if !h.At(events.StepCancelled) {
		cancelled := x.step(h, events.StepCancelled)
		if !x.cancelMaintenanceThen(ctx, h, &cancelled) {
			return x.fail(ctx, h, "cancelling maintenance failed")
		}
		if err := x.ensure(h, events.StepCancelled, cancelled); err != nil {
			return err
		}
	}
	done := next{events.Event{Type: events.HostDone, Host: h.Name, Cluster: h.Cluster},
		func(*Run) { h.Step, h.EndedAt = events.StepDone, x.clk.Now().UTC() }}
	st, err := x.runStageThen(ctx, h, events.PostMaintenance, done)
	if isRecordErr(err) {
		return err
	}
	if v, reason := classify(events.PostMaintenance, st, err); v == stageFailed {
		return x.fail(ctx, h, reason)
	}
	return x.ensure(h, events.StepDone, done)
}

func isRecordErr(err error) bool {
	var rec *errRecord
	return errors.As(err, &rec)
}

// updatedHosts names the hosts of cluster this run has already taken through maintenance: the
// best targets for the VMs of the next host, which then never move twice.
func (x *Execution) updatedHosts(cluster string) []string {
	x.mu.Lock()
	defer x.mu.Unlock()
	var out []string
	for _, h := range x.run.Hosts {
		if h.Cluster == cluster && h.Step == events.StepDone {
			out = append(out, h.Name)
		}
	}
	return out
}

// cancelMaintenance takes a host the run put into maintenance out again; it reports success.
func (x *Execution) cancelMaintenance(ctx context.Context, h *RunHost) bool {
	return x.cancelMaintenanceThen(ctx, h, nil)
}

// cancelMaintenanceThen is cancelMaintenance recording then (the step it completes) with the
// host's leaving maintenance.
func (x *Execution) cancelMaintenanceThen(ctx context.Context, h *RunHost, then *next) bool {
	if !h.InMaint {
		return true
	}
	var cur string
	_ = x.r.Store.View(func(tx state.Tx) error {
		sh, err := state.GetHost(tx, h.Name)
		cur = sh.ResourceState
		return err
	})
	switch cur {
	case state.PrepareForMaintenance, state.Maintenance, state.ErrorInMaintenance:
		if _, err := x.maintenance().Cancel(ctx, h.Name); err != nil {
			_ = x.record(events.Event{Type: events.HostMaintenanceError, Host: h.Name, Cluster: h.Cluster, Message: "cancel: " + err.Error()}, nil, nil)
			return false
		}
	}
	evs := []events.Event{{Type: events.HostStep, Host: h.Name, Cluster: h.Cluster, Step: events.StepLeftMaintenance}}
	if then != nil {
		evs = append(evs, then.event)
	}
	return x.recordAll(evs, func(r *Run) {
		h.InMaint = false
		if then != nil {
			then.change(r)
		}
	}, nil) == nil
}

func (x *Execution) checkMaintenanceScript(ctx context.Context, h *RunHost) (bool, string, error) {
	a, err := x.dialHost(h.Name)
	if err != nil {
		return false, "", err
	}
	cctx, cancel := clock.WithTimeout(ctx, x.clk, x.waits.HooksCall)
	defer cancel()
	scripts, err := a.Hooks(cctx)
	if err != nil {
		return false, "", fmt.Errorf("list hook scripts: %w", err)
	}
	for _, s := range scripts {
		if s.Stage != events.Maintenance {
			continue
		}
		if !s.Present {
			return false, "no Maintenance script", nil
		}
		if s.Refused != "" {
			return false, "", fmt.Errorf("Maintenance script refused: %s", s.Refused)
		}
		return true, "", nil
	}
	return false, "no Maintenance script", nil
}

// recheckCapacity refreshes the cluster's statuses and plans the batch's evacuation together.
func (x *Execution) recheckCapacity(ctx context.Context, batch []*RunHost) error {
	m := x.maintenance()
	c, err := m.load(batch[0].Name)
	if err != nil {
		return err
	}
	if err := m.refresh(ctx, &c); err != nil {
		return err
	}
	names := make([]string, len(batch))
	for i, h := range batch {
		names[i] = h.Name
	}
	p, err := PlanCapacity(CapacityInput{Hosts: CapacityHosts(c.cluster, c.prev), Empty: names, CPUFactor: c.cpuF, MemFactor: c.memF})
	if err != nil {
		return err
	}
	if err := x.record(events.Event{Type: events.HostMaintenancePlan, Cluster: batch[0].Cluster, Hosts: names, VMs: len(p.Placements), Unplaced: len(p.Unplaced)}, nil, nil); err != nil {
		return err
	}
	if p.OK() {
		return nil
	}
	bad := map[string]string{}
	for _, u := range p.Unplaced {
		if _, ok := bad[u.From]; !ok {
			bad[u.From] = fmt.Sprintf("capacity: VM %s fits nowhere: %s", u.VM, u.Reason)
		}
	}
	for _, h := range batch {
		if reason, ok := bad[h.Name]; ok {
			if ferr := x.fail(ctx, h, reason); ferr != nil {
				return ferr
			}
		}
	}
	return nil
}
