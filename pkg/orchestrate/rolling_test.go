package orchestrate

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/settings"
	"github.com/kvmctl/kvmctl/pkg/state"
)

func newRolling(t *testing.T, f *fleet, hosts ...string) (*Rolling, *state.Store) {
	t.Helper()
	st := newStoreWithCluster(t, hosts...)
	_ = st.Update(func(tx state.Tx) error {
		_, err := settings.Set(tx, settings.PingInterval, "1")
		return err
	})
	r := &Rolling{Store: st, Dial: f.dial, StageGrace: 200 * time.Millisecond,
		Maint: &Maintenance{PollInterval: time.Millisecond, StatusTimeout: time.Second}}
	return r, st
}

func TestRollingValidationRefusesBeforeAnyAction(t *testing.T) {
	f := newFleet()
	f.add("h1")
	r, st := newRolling(t, f, "h1")
	for name, req := range map[string]RollingRequest{
		"two scopes":         {Clusters: []string{"c1"}, Hosts: []string{"h1"}},
		"no scope":           {},
		"unknown cluster":    {Clusters: []string{"c9"}},
		"timeout below ping": {Clusters: []string{"c1"}, Timeout: 500 * time.Millisecond},
		"bad payload":        {Clusters: []string{"c1"}, Payload: `"unbalanced`},
		"max-unavailable":    {Clusters: []string{"c1"}, MaxUnavailable: -1},
	} {
		if _, err := r.Start(context.Background(), req); !errs.IsRefused(err) {
			t.Errorf("%s: Start = %v, want a refusal", name, err)
		}
	}
	var runs []*Run
	_ = st.View(func(tx state.Tx) (err error) { runs, err = ListRuns(tx); return err })
	if len(runs) != 0 || f.agents["h1"].started["PreFlight"] != 0 {
		t.Errorf("a refused start left %d runs and ran %d scripts", len(runs), f.agents["h1"].started["PreFlight"])
	}
}

// An agent that stops answering during a stage (its script restarts it) is waited for; one that
// never comes back costs the stage its timeout, not the run its progress forever.
func TestRollingToleratesAnAgentAwayDuringAStage(t *testing.T) {
	f := newFleet()
	f.add("h1", "a")
	f.add("h2")
	r, st := newRolling(t, f, "h1", "h2")
	// h1's Maintenance "reboots" the host: the agent is away for a while, then reports done.
	f.agents["h1"].stages["Maintenance"] = api.StageStatus{State: api.StageRunning}
	go func() {
		time.Sleep(300 * time.Millisecond)
		f.mu.Lock()
		f.agents["h1"].down = true
		f.mu.Unlock()
		time.Sleep(1200 * time.Millisecond)
		f.mu.Lock()
		f.agents["h1"].down = false
		f.agents["h1"].stages["Maintenance"] = api.StageStatus{State: api.StageCompleted, Outcome: api.OutcomeSucceeded, Note: "host rebooted during stage"}
		f.mu.Unlock()
	}()
	res, err := r.Start(context.Background(), RollingRequest{Hosts: []string{"h1"}, Timeout: 10 * time.Second})
	if err != nil || !res.Success || len(res.HostsUpdated) != 1 {
		t.Fatalf("run = %+v, %v; want h1 updated", res, err)
	}
	if hostState(t, st, "h1") != state.Enabled {
		t.Errorf("h1 left in %s", hostState(t, st, "h1"))
	}

	// Now an agent that never comes back: the stage times out and the run fails, restored.
	f.agents["h2"].stages["Maintenance"] = api.StageStatus{State: api.StageRunning}
	r2 := &Rolling{Store: st, Dial: f.dial, StageGrace: 200 * time.Millisecond,
		Maint: &Maintenance{PollInterval: time.Millisecond, StatusTimeout: 200 * time.Millisecond}}
	go func() {
		time.Sleep(300 * time.Millisecond)
		f.mu.Lock()
		f.agents["h2"].down = true
		f.mu.Unlock()
	}()
	start := time.Now()
	res, err = r2.Start(context.Background(), RollingRequest{Hosts: []string{"h2"}, Timeout: time.Second})
	if !errors.Is(err, ErrRunFailed) || !strings.Contains(res.Details, "timed_out") {
		t.Fatalf("run = %+v, %v; want a failure with the stage timed out", res, err)
	}
	if d := time.Since(start); d > 8*time.Second {
		t.Errorf("the run waited %s for an agent that never came back", d)
	}
}

func TestRollingResumeNeverRerunsAFinishedStage(t *testing.T) {
	f := newFleet()
	f.add("h1")
	f.add("h2")
	r, st := newRolling(t, f, "h1", "h2")
	run, err := r.Begin(RollingRequest{Clusters: []string{"c1"}, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	// The first kvmctl "dies" after PreFlight: simulate by running only the PreFlight phase and
	// marking the owner as a dead process.
	if err := r.preflight(context.Background()); err != nil {
		t.Fatal(err)
	}
	_ = st.Update(func(tx state.Tx) error {
		cur, err := LoadRun(tx, run.ID)
		if err != nil {
			return err
		}
		cur.Owner = Owner{PID: 1 << 30, StartTime: "0"}
		return state.PutJSON(tx, state.BucketRuns, run.ID, cur)
	})
	r2 := &Rolling{Store: st, Dial: f.dial, Maint: &Maintenance{PollInterval: time.Millisecond}}
	res, err := r2.Resume(context.Background(), run.ID)
	if err != nil || !res.Success || len(res.HostsUpdated) != 2 {
		t.Fatalf("resume = %+v, %v", res, err)
	}
	for _, h := range []string{"h1", "h2"} {
		if n := f.agents[h].started["PreFlight"]; n != 1 {
			t.Errorf("%s: PreFlight started %d times, want once", h, n)
		}
		if n := f.agents[h].started["Maintenance"]; n != 1 {
			t.Errorf("%s: Maintenance started %d times, want once", h, n)
		}
	}
	if _, err := r2.Resume(context.Background(), run.ID); !errs.IsRefused(err) {
		t.Errorf("resuming a finished run = %v, want a refusal", err)
	}
}

func TestNaturalLess(t *testing.T) {
	in := []string{"h10", "h2", "h1", "h02", "a", "h1b"}
	want := "a h1 h1b h2 h02 h10"
	got := append([]string(nil), in...)
	for i := range got {
		for j := i + 1; j < len(got); j++ {
			if NaturalLess(got[j], got[i]) {
				got[i], got[j] = got[j], got[i]
			}
		}
	}
	if strings.Join(got, " ") != want {
		t.Errorf("natural order = %v, want %s", got, want)
	}
}

// A host whose agent is down before the run touched it fails PreFlight at once, not after the
// stage timeout; --forced skips it and maintains the others.
func TestRollingPreFlightUnreachableFailsFast(t *testing.T) {
	f := newFleet()
	f.add("h1")
	f.add("h2").down = true
	r, st := newRolling(t, f, "h1", "h2")
	start := time.Now()
	res, err := r.Start(context.Background(), RollingRequest{Clusters: []string{"c1"}, Timeout: time.Hour})
	if !errors.Is(err, ErrRunFailed) || !strings.Contains(res.Details, "h2") || !strings.Contains(res.Details, "unreachable") {
		t.Fatalf("run = %+v, %v; want PreFlight failed naming h2 unreachable", res, err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("took %s to give up on an unreachable agent", d)
	}
	if f.agents["h1"].started["PreMaintenance"] != 0 {
		t.Errorf("a PreFlight failure must change nothing, but h1 ran PreMaintenance")
	}
	r2 := &Rolling{Store: st, Dial: f.dial, Maint: &Maintenance{PollInterval: time.Millisecond}}
	res, err = r2.Start(context.Background(), RollingRequest{Clusters: []string{"c1"}, Timeout: time.Hour, Forced: true})
	if err != nil || len(res.HostsUpdated) != 1 || len(res.HostsSkipped) != 1 || res.HostsSkipped[0].Host != "h2" {
		t.Errorf("forced run = %+v, %v; want h1 updated and h2 skipped", res, err)
	}
}

// waitFor polls cond until it holds or the test times out.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (a *fakeAgent) stageStarted(stage string) bool {
	defer a.lock()()
	return a.started[stage] > 0
}

func (a *fakeAgent) finishStage(stage string) {
	defer a.lock()()
	a.stages[stage] = api.StageStatus{State: api.StageCompleted, Outcome: api.OutcomeSucceeded}
}

// Interrupting a --forced run is no host failure: nothing is skipped, the run stays running
// and resumable, and nobody calls it a success.
func TestRollingInterruptedForcedRunStaysResumable(t *testing.T) {
	f := newFleet()
	f.add("h1", "a")
	f.add("h2")
	r, st := newRolling(t, f, "h1", "h2")
	f.agents["h1"].stages["Maintenance"] = api.StageStatus{State: api.StageRunning}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var res RunResult
	go func() {
		var err error
		res, err = r.Start(ctx, RollingRequest{Clusters: []string{"c1"}, Timeout: time.Minute, Forced: true})
		done <- err
	}()
	waitFor(t, "h1's Maintenance stage", func() bool { return f.agents["h1"].stageStarted("Maintenance") })
	cancel()
	err := <-done
	if !errors.Is(err, ErrInterrupted) || res.Success || len(res.HostsSkipped) != 0 {
		t.Fatalf("interrupted run = %+v, %v; want ErrInterrupted, nothing skipped", res, err)
	}
	var run *Run
	_ = st.View(func(tx state.Tx) (err error) { run, err = LoadRun(tx, res.RunID); return err })
	if run.State != RunRunning || hostState(t, st, "h1") != state.Maintenance {
		t.Errorf("run %s, h1 %s; want running (resumable) with h1 still in Maintenance", run.State, hostState(t, st, "h1"))
	}
}

// `rolling abort` from another kvmctl is not lost when the running one journals next: the run
// stops after its current step and restores what it changed.
func TestRollingAbortOfALiveRun(t *testing.T) {
	f := newFleet()
	f.add("h1", "a")
	f.add("h2")
	f.add("h3")
	r, st := newRolling(t, f, "h1", "h2", "h3")
	f.agents["h1"].stages["Maintenance"] = api.StageStatus{State: api.StageRunning}
	done := make(chan RunResult, 1)
	go func() {
		res, _ := r.Start(context.Background(), RollingRequest{Clusters: []string{"c1"}, Timeout: time.Minute})
		done <- res
	}()
	waitFor(t, "h1's Maintenance stage", func() bool { return f.agents["h1"].stageStarted("Maintenance") })
	var id string
	_ = st.View(func(tx state.Tx) error { runs, _ := ListRuns(tx); id = runs[0].ID; return nil })
	other := &Rolling{Store: st, Dial: f.dial}
	if _, asked, err := other.Abort(context.Background(), id); err != nil || !asked {
		t.Fatalf("abort = %v, asked %v", err, asked)
	}
	f.agents["h1"].finishStage("Maintenance")
	res := <-done
	if res.State != RunAborted {
		t.Fatalf("run = %+v, want aborted", res)
	}
	for _, h := range []string{"h2", "h3"} {
		if f.agents[h].started["PreMaintenance"] != 0 {
			t.Errorf("%s was maintained after the abort", h)
		}
	}
	var cl state.Cluster
	_ = st.View(func(tx state.Tx) (err error) { cl, err = state.GetCluster(tx, "c1"); return err })
	if cl.ResourceState != state.Enabled || hostState(t, st, "h1") != state.Enabled {
		t.Errorf("after abort: cluster %s, h1 %s; want both restored", cl.ResourceState, hostState(t, st, "h1"))
	}
	var evs []string
	_ = st.View(func(tx state.Tx) error {
		j, _ := Journal(tx, id)
		for _, e := range j {
			evs = append(evs, e.Type)
		}
		return nil
	})
	if !strings.Contains(strings.Join(evs, " "), "run.abort_requested") {
		t.Errorf("the abort request is missing from the journal: %v", evs)
	}
}

// The seed checks capacity on every host before any action: a host whose VMs fit nowhere stops
// the run before PreFlight, with nothing changed; --forced skips it.
func TestRollingCapacityCheckBeforeAnyAction(t *testing.T) {
	f := newFleet()
	f.add("h1", "a", "b")
	f.add("h2").cpus = 1
	r, st := newRolling(t, f, "h1", "h2")
	res, err := r.Start(context.Background(), RollingRequest{Clusters: []string{"c1"}, Timeout: time.Minute})
	if !errors.Is(err, ErrRunFailed) || !strings.Contains(res.Details, "checks before any action failed, no action taken") || !strings.Contains(res.Details, "h1") {
		t.Fatalf("run = %+v, %v; want a capacity failure naming h1", res, err)
	}
	if f.agents["h1"].started["PreFlight"]+f.agents["h2"].started["PreFlight"] != 0 {
		t.Errorf("PreFlight ran although capacity failed first")
	}
	var cl state.Cluster
	_ = st.View(func(tx state.Tx) (err error) { cl, err = state.GetCluster(tx, "c1"); return err })
	if cl.ResourceState != state.Enabled {
		t.Errorf("cluster %s after a refused run", cl.ResourceState)
	}
	r2 := &Rolling{Store: st, Dial: f.dial, Maint: &Maintenance{PollInterval: time.Millisecond}}
	res, err = r2.Start(context.Background(), RollingRequest{Clusters: []string{"c1"}, Timeout: time.Minute, Forced: true})
	if err != nil || len(res.HostsSkipped) != 1 || res.HostsSkipped[0].Host != "h1" || len(res.HostsUpdated) != 1 {
		t.Errorf("forced = %+v, %v; want h1 skipped for capacity, h2 updated", res, err)
	}
}

// A script the agent would refuse stops the run before any action, not after its host was
// patched.
func TestRollingRefusedScriptFoundBeforeAnyAction(t *testing.T) {
	f := newFleet()
	f.add("h1")
	f.add("h2")
	r, _ := newRolling(t, f, "h1", "h2")
	f.agents["h2"].refused = map[string]string{"PostMaintenance": "writable by group or others (mode 0775); chmod go-w it"}
	res, err := r.Start(context.Background(), RollingRequest{Clusters: []string{"c1"}, Timeout: time.Minute})
	if !errors.Is(err, ErrRunFailed) || !strings.Contains(res.Details, "h2: PostMaintenance script refused") {
		t.Fatalf("run = %+v, %v", res, err)
	}
	if f.agents["h1"].started["PreFlight"]+f.agents["h1"].started["Maintenance"] != 0 {
		t.Errorf("scripts ran although a refused script was known before any action")
	}
}

// A dry run says when a real run would stop, and why.
func TestDryRunVerdict(t *testing.T) {
	f := newFleet()
	f.add("h1", "a")
	f.add("h2")
	r, _ := newRolling(t, f, "h1", "h2")
	plan, err := r.DryRun(context.Background(), RollingRequest{Clusters: []string{"c1"}, Timeout: time.Minute})
	if err != nil || plan.WouldStop || len(plan.Problems) != 0 {
		t.Fatalf("healthy fleet: %+v, %v", plan, err)
	}
	f.agents["h2"].down = true
	plan, _ = r.DryRun(context.Background(), RollingRequest{Clusters: []string{"c1"}, Timeout: time.Minute})
	if !plan.WouldStop || !strings.Contains(strings.Join(plan.Problems, ";"), "h2: agent not answering") {
		t.Errorf("h2 down: %+v; want a stop naming h2", plan.Problems)
	}
	plan, _ = r.DryRun(context.Background(), RollingRequest{Clusters: []string{"c1"}, Timeout: time.Minute, Forced: true})
	if plan.WouldStop || len(plan.Problems) == 0 {
		t.Errorf("forced: would stop %v, problems %v; want no stop but the problems listed", plan.WouldStop, plan.Problems)
	}
}

// The seed: a host that does not reach maintenance within the wait timeout stops the run, even
// with --forced, and what the run changed is restored.
func TestRollingWaitMaintenanceTimeoutStopsEvenForced(t *testing.T) {
	f := newFleet()
	f.add("h1", "a")
	f.add("h2").hang = true
	f.add("h3")
	r, st := newRolling(t, f, "h1", "h2", "h3")
	_ = st.Update(func(tx state.Tx) error {
		_, err := settings.Set(tx, settings.WaitMaintenanceTimeout, "1")
		return err
	})
	f.agents["h3"].cpus = 0 // only h2 can take h1's VM, and h2 never finishes starting it
	res, err := r.Start(context.Background(), RollingRequest{Hosts: []string{"h1"}, Timeout: time.Minute, Forced: true})
	if !errors.Is(err, ErrRunFailed) || !strings.Contains(res.Details, "wait.maintenance.timeout") {
		t.Fatalf("run = %+v, %v; want a stop naming the wait timeout", res, err)
	}
	if hostState(t, st, "h1") != state.Enabled {
		t.Errorf("h1 left in %s", hostState(t, st, "h1"))
	}
}
