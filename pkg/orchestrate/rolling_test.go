package orchestrate

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/holds"
	"github.com/kvmctl/kvmctl/pkg/inventory"
	"github.com/kvmctl/kvmctl/pkg/settings"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// rollingOn returns process pid's rolling engine over st and f.
func rollingOn(st Store, f *fleet, p *procs, pid int) *Rolling {
	return &Rolling{Store: st, Dial: f.dial, Holds: p.table(pid), Maint: &Maintenance{}}
}

func newRolling(t testing.TB, f *fleet, hosts ...string) (*Rolling, *state.Memory, *procs) {
	t.Helper()
	st := newStoreWithCluster(t, hosts...)
	p := newProcs()
	return rollingOn(st, f, p, 1), st, p
}

func clusters(names ...string) RollingRequest {
	return RollingRequest{Scope: inventory.Scope{Clusters: names}}
}

func hostsReq(names ...string) RollingRequest {
	return RollingRequest{Scope: inventory.Scope{Hosts: names}}
}

func TestRollingValidationRefusesBeforeAnyAction(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFleet()
		f.add("h1")
		r, st, _ := newRolling(t, f, "h1")
		for name, req := range map[string]RollingRequest{
			"two scopes":         {Scope: inventory.Scope{Clusters: []string{"c1"}, Hosts: []string{"h1"}}},
			"no scope":           {},
			"unknown cluster":    clusters("c9"),
			"timeout below ping": {Scope: inventory.Scope{Clusters: []string{"c1"}}, Timeout: 500 * time.Millisecond},
			"bad payload":        {Scope: inventory.Scope{Clusters: []string{"c1"}}, Payload: `"unbalanced`},
			"max-unavailable":    {Scope: inventory.Scope{Clusters: []string{"c1"}}, MaxUnavailable: -1},
		} {
			if _, err := r.Start(context.Background(), req); !errs.IsRefused(err) {
				t.Errorf("%s: Start = %v, want a refusal", name, err)
			}
		}
		var runs []*Run
		_ = st.View(func(tx state.Tx) (err error) { runs, err = ListRuns(tx); return err })
		if len(runs) != 0 || f.agents["h1"].started[events.PreFlight] != 0 || len(allHolds(t, st)) != 0 {
			t.Errorf("a refused start left %d runs, %d holds and ran %d scripts", len(runs), len(allHolds(t, st)), f.agents["h1"].started[events.PreFlight])
		}
	})
}

// An agent that stops answering during a stage (its script reboots the host) is waited for and
// the stage's result taken when it is back; one that never comes back costs the stage its
// timeout, not the run its progress forever.
func TestRollingToleratesAnAgentAwayDuringAStage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFleet()
		f.add("h1", "a")
		f.add("h2")
		r, st, _ := newRolling(t, f, "h1", "h2")
		f.agents["h1"].stages[events.Maintenance] = stageScript{takes: 5 * time.Second, awayAfter: time.Second, awayFor: 90 * time.Second,
			result: api.StageStatus{Outcome: events.OutcomeSucceeded, Note: "host rebooted during stage"}}
		start := time.Now()
		res, err := r.Start(context.Background(), RollingRequest{Scope: inventory.Scope{Hosts: []string{"h1"}}, Timeout: 10 * time.Minute})
		if err != nil || !res.Success || len(res.HostsUpdated) != 1 {
			t.Fatalf("run = %+v, %v; want h1 updated", res, err)
		}
		if f.agents["h1"].awayCalls == 0 {
			t.Fatal("the engine never saw the agent away: the test does not cover what it says")
		}
		if d := time.Since(start); d < 91*time.Second || d > 93*time.Second {
			t.Errorf("the run took %s; the host was back after 91 s and the ping interval is 1 s", d)
		}
		if hostState(t, st, "h1") != state.Enabled {
			t.Errorf("h1 left in %s", hostState(t, st, "h1"))
		}
		if !strings.Contains(journalTypes(t, st, res.RunID), "host.stage.finished") {
			t.Error("no stage result journaled")
		}

		// Now an agent that never comes back: the stage times out (10 s, plus the grace of the
		// ping interval and 10 s) and the run fails, restored.
		f.agents["h2"].stages[events.Maintenance] = stageScript{never: true, awayAfter: 100 * time.Millisecond, awayFor: 24 * time.Hour}
		start = time.Now()
		res, err = r.Start(context.Background(), RollingRequest{Scope: inventory.Scope{Hosts: []string{"h2"}}, Timeout: 10 * time.Second})
		if !errors.Is(err, ErrRunFailed) || !strings.Contains(res.Details, "timed_out") || !strings.Contains(res.Details, "no result from the agent") {
			t.Fatalf("run = %+v, %v; want a failure with the stage timed out", res, err)
		}
		if d := time.Since(start); d < 21*time.Second || d > 30*time.Second {
			t.Errorf("gave up after %s, want the stage timeout plus its grace (21 s)", d)
		}
		if hostState(t, st, "h2") == state.Enabled {
			// The agent never answered: cancelling maintenance cannot reach it, and the run says so.
			t.Errorf("h2 is Enabled although its agent never answered the cancel")
		}
		if !strings.Contains(res.Details, "NOT RESTORED: host h2 is still in maintenance") {
			t.Errorf("details = %q, want what was not restored", res.Details)
		}
	})
}

// One Rolling serves run after run: the service holds no run of its own.
func TestRollingServiceRunsRunAfterRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFleet()
		f.add("h1")
		f.add("h2")
		r, st, _ := newRolling(t, f, "h1", "h2")
		for i := 0; i < 3; i++ {
			res, err := r.Start(context.Background(), clusters("c1"))
			if err != nil || !res.Success {
				t.Fatalf("run %d = %+v, %v", i, res, err)
			}
		}
		if n := f.agents["h1"].started[events.Maintenance]; n != 3 {
			t.Errorf("h1's Maintenance ran %d times over 3 runs", n)
		}
		if hs := allHolds(t, st); len(hs) != 0 {
			t.Errorf("holds left after the runs: %+v", hs)
		}
	})
}

func TestRollingResumeNeverRerunsAFinishedStage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFleet()
		f.add("h1")
		f.add("h2")
		r, st, p := newRolling(t, f, "h1", "h2")
		x, err := r.Begin(RollingRequest{Scope: inventory.Scope{Clusters: []string{"c1"}}, Timeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		// The first kvmctl "dies" after PreFlight.
		if err := x.preflight(context.Background()); err != nil {
			t.Fatal(err)
		}
		// While it lives, nobody else may resume it or act on its cluster.
		r2 := rollingOn(st, f, p, 2)
		if _, err := r2.Resume(context.Background(), x.Run().ID); !errs.IsRefused(err) || !strings.Contains(err.Error(), "still running") {
			t.Fatalf("resume of a live run = %v", err)
		}
		if _, err := r2.Start(context.Background(), clusters("c1")); !errs.IsRefused(err) || !strings.Contains(err.Error(), "cluster c1 is held by rolling run "+x.Run().ID) {
			t.Fatalf("a second run over a held cluster = %v", err)
		}
		p.kill(1)
		res, err := r2.Resume(context.Background(), x.Run().ID)
		if err != nil || !res.Success || len(res.HostsUpdated) != 2 {
			t.Fatalf("resume = %+v, %v", res, err)
		}
		for _, h := range []string{"h1", "h2"} {
			for _, s := range events.Stages() {
				if n := f.agents[h].started[s]; n != 1 {
					t.Errorf("%s: %s ran %d times, want once", h, s, n)
				}
			}
		}
		if _, err := r2.Resume(context.Background(), x.Run().ID); !errs.IsRefused(err) {
			t.Errorf("resuming a finished run = %v, want a refusal", err)
		}
		if hs := allHolds(t, st); len(hs) != 0 {
			t.Errorf("holds left: %+v", hs)
		}
	})
}

// A host whose agent is down before the run touched it fails PreFlight at once, not after the
// stage timeout; --forced skips it and maintains the others.
func TestRollingPreFlightUnreachableFailsFast(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFleet()
		f.add("h1")
		f.add("h2").down = true
		r, _, _ := newRolling(t, f, "h1", "h2")
		start := time.Now()
		res, err := r.Start(context.Background(), RollingRequest{Scope: inventory.Scope{Clusters: []string{"c1"}}, Timeout: time.Hour})
		if !errors.Is(err, ErrRunFailed) || !strings.Contains(res.Details, "h2") || !strings.Contains(res.Details, "unreachable") {
			t.Fatalf("run = %+v, %v; want PreFlight failed naming h2 unreachable", res, err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("took %s to give up on an unreachable agent", d)
		}
		if f.agents["h1"].started[events.PreMaintenance] != 0 {
			t.Errorf("a PreFlight failure must change nothing, but h1 ran PreMaintenance")
		}
		res, err = r.Start(context.Background(), RollingRequest{Scope: inventory.Scope{Clusters: []string{"c1"}}, Timeout: time.Hour, Forced: true})
		if err != nil || len(res.HostsUpdated) != 1 || len(res.HostsSkipped) != 1 || res.HostsSkipped[0].Host != "h2" {
			t.Errorf("forced run = %+v, %v; want h1 updated and h2 skipped", res, err)
		}
	})
}

// Interrupting a --forced run is no host failure: nothing is skipped, the run stays running
// and resumable, and nobody calls it a success.
func TestRollingInterruptedForcedRunStaysResumable(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFleet()
		f.add("h1", "a")
		f.add("h2")
		r, st, _ := newRolling(t, f, "h1", "h2")
		f.agents["h1"].stages[events.Maintenance] = stageScript{never: true}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		var res RunResult
		go func() {
			var err error
			res, err = r.Start(ctx, RollingRequest{Scope: inventory.Scope{Clusters: []string{"c1"}}, Timeout: time.Minute, Forced: true})
			done <- err
		}()
		waitFor(t, "h1's Maintenance stage", func() bool { return f.agents["h1"].stageStarted(events.Maintenance) })
		cancel()
		err := <-done
		if !errors.Is(err, ErrInterrupted) || res.Success || len(res.HostsSkipped) != 0 {
			t.Fatalf("interrupted run = %+v, %v; want ErrInterrupted, nothing skipped", res, err)
		}
		var run *Run
		_ = st.View(func(tx state.Tx) (err error) { run, err = LoadRun(tx, res.RunID); return err })
		if run.State != events.RunRunning || hostState(t, st, "h1") != state.Maintenance {
			t.Errorf("run %s, h1 %s; want running (resumable) with h1 still in Maintenance", run.State, hostState(t, st, "h1"))
		}
		if hs := allHolds(t, st); len(hs) != 1 || hs[0].Subject != holds.Cluster("c1") {
			t.Errorf("an interrupted run must keep its cluster held: %+v", hs)
		}
	})
}

// `rolling abort` from another kvmctl is not lost when the running one journals next: the run
// stops after its current step and restores what it changed.
func TestRollingAbortOfALiveRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFleet()
		f.add("h1", "a")
		f.add("h2")
		f.add("h3")
		r, st, p := newRolling(t, f, "h1", "h2", "h3")
		f.agents["h1"].stages[events.Maintenance] = stageScript{never: true}
		done := make(chan RunResult, 1)
		go func() {
			res, _ := r.Start(context.Background(), RollingRequest{Scope: inventory.Scope{Clusters: []string{"c1"}}, Timeout: time.Hour})
			done <- res
		}()
		waitFor(t, "h1's Maintenance stage", func() bool { return f.agents["h1"].stageStarted(events.Maintenance) })
		var id string
		_ = st.View(func(tx state.Tx) error { runs, _ := ListRuns(tx); id = runs[0].ID; return nil })
		other := rollingOn(st, f, p, 2)
		if _, asked, err := other.Abort(context.Background(), id); err != nil || !asked {
			t.Fatalf("abort = %v, asked %v", err, asked)
		}
		f.agents["h1"].finishStage(events.Maintenance)
		res := <-done
		if res.State != events.RunAborted {
			t.Fatalf("run = %+v, want aborted", res)
		}
		for _, h := range []string{"h2", "h3"} {
			if f.agents[h].started[events.PreMaintenance] != 0 {
				t.Errorf("%s was maintained after the abort", h)
			}
		}
		if clusterState(t, st, "c1") != state.Enabled || hostState(t, st, "h1") != state.Enabled {
			t.Errorf("after abort: cluster %s, h1 %s; want both restored", clusterState(t, st, "c1"), hostState(t, st, "h1"))
		}
		j := journalTypes(t, st, id)
		if !strings.Contains(j, "run.abort_requested") || strings.Count(j, "host.not_reached") != 2 {
			t.Errorf("the journal must hold the abort request and h2, h3 not reached: %v", j)
		}
	})
}

// The seed checks capacity on every host before any action: a host whose VMs fit nowhere stops
// the run before PreFlight, with nothing changed; --forced skips it.
func TestRollingCapacityCheckBeforeAnyAction(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFleet()
		f.add("h1", "a", "b")
		f.add("h2").cpus = 1
		r, st, _ := newRolling(t, f, "h1", "h2")
		res, err := r.Start(context.Background(), RollingRequest{Scope: inventory.Scope{Clusters: []string{"c1"}}, Timeout: time.Minute})
		if !errors.Is(err, ErrRunFailed) || !strings.Contains(res.Details, "checks before any action failed, no action taken") || !strings.Contains(res.Details, "h1") {
			t.Fatalf("run = %+v, %v; want a capacity failure naming h1", res, err)
		}
		if f.agents["h1"].started[events.PreFlight]+f.agents["h2"].started[events.PreFlight] != 0 {
			t.Errorf("PreFlight ran although capacity failed first")
		}
		if clusterState(t, st, "c1") != state.Enabled {
			t.Errorf("cluster %s after a refused run", clusterState(t, st, "c1"))
		}
		res, err = r.Start(context.Background(), RollingRequest{Scope: inventory.Scope{Clusters: []string{"c1"}}, Timeout: time.Minute, Forced: true})
		if err != nil || len(res.HostsSkipped) != 1 || res.HostsSkipped[0].Host != "h1" || len(res.HostsUpdated) != 1 {
			t.Errorf("forced = %+v, %v; want h1 skipped for capacity, h2 updated", res, err)
		}
	})
}

// A script the agent would refuse stops the run before any action, not after its host was
// patched.
func TestRollingRefusedScriptFoundBeforeAnyAction(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFleet()
		f.add("h1")
		f.add("h2")
		r, _, _ := newRolling(t, f, "h1", "h2")
		f.agents["h2"].refused[events.PostMaintenance] = "writable by group or others (mode 0775); chmod go-w it"
		res, err := r.Start(context.Background(), RollingRequest{Scope: inventory.Scope{Clusters: []string{"c1"}}, Timeout: time.Minute})
		if !errors.Is(err, ErrRunFailed) || !strings.Contains(res.Details, "h2: PostMaintenance script refused") {
			t.Fatalf("run = %+v, %v", res, err)
		}
		if f.agents["h1"].started[events.PreFlight]+f.agents["h1"].started[events.Maintenance] != 0 {
			t.Errorf("scripts ran although a refused script was known before any action")
		}
	})
}

// Exit 70 skips a host in PreFlight and PreMaintenance, and counts as done in Maintenance and
// PostMaintenance; a failure elsewhere stops the run, or skips the host with --forced.
func TestRollingStageOutcomes(t *testing.T) {
	for _, c := range []struct {
		stage   events.Stage
		outcome events.Outcome
		forced  bool
		want    string // updated, skipped, failed
	}{
		{events.PreFlight, events.OutcomeSkipped, false, "skipped"},
		{events.PreMaintenance, events.OutcomeSkipped, false, "skipped"},
		{events.Maintenance, events.OutcomeSkipped, false, "updated"},
		{events.PostMaintenance, events.OutcomeSkipped, false, "updated"},
		{events.PreMaintenance, events.OutcomeFailed, false, "failed"},
		{events.Maintenance, events.OutcomeTimedOut, false, "failed"},
		{events.PostMaintenance, events.OutcomeTerminated, true, "skipped"},
	} {
		t.Run(string(c.stage)+"/"+string(c.outcome), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFleet()
				f.add("h1", "a")
				f.add("h2")
				r, st, _ := newRolling(t, f, "h1", "h2")
				f.agents["h1"].stages[c.stage] = stageScript{result: api.StageStatus{Outcome: c.outcome, ExitCode: 70}}
				res, err := r.Start(context.Background(), RollingRequest{Scope: inventory.Scope{Hosts: []string{"h1"}}, Forced: c.forced})
				got := "failed"
				switch {
				case err == nil && len(res.HostsUpdated) == 1:
					got = "updated"
				case err == nil && len(res.HostsSkipped) == 1:
					got = "skipped"
				}
				if got != c.want {
					t.Errorf("h1 %s (%+v, %v), want %s", got, res, err, c.want)
				}
				if hostState(t, st, "h1") != state.Enabled || clusterState(t, st, "c1") != state.Enabled {
					t.Errorf("h1 %s, c1 %s after the run", hostState(t, st, "h1"), clusterState(t, st, "c1"))
				}
				if n := f.vmCount()["a"]; n != 1 {
					t.Errorf("VM a runs %d times", n)
				}
			})
		})
	}
}

// A dry run says when a real run would stop, and why.
func TestDryRunVerdict(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFleet()
		f.add("h1", "a")
		f.add("h2")
		r, _, _ := newRolling(t, f, "h1", "h2")
		plan, err := r.DryRun(context.Background(), RollingRequest{Scope: inventory.Scope{Clusters: []string{"c1"}}, Timeout: time.Minute})
		if err != nil || plan.WouldStop || len(plan.Problems) != 0 {
			t.Fatalf("healthy fleet: %+v, %v", plan, err)
		}
		f.agents["h2"].down = true
		plan, _ = r.DryRun(context.Background(), RollingRequest{Scope: inventory.Scope{Clusters: []string{"c1"}}, Timeout: time.Minute})
		if !plan.WouldStop || !strings.Contains(strings.Join(plan.Problems, ";"), "h2: agent not answering") {
			t.Errorf("h2 down: %+v; want a stop naming h2", plan.Problems)
		}
		plan, _ = r.DryRun(context.Background(), RollingRequest{Scope: inventory.Scope{Clusters: []string{"c1"}}, Timeout: time.Minute, Forced: true})
		if plan.WouldStop || len(plan.Problems) == 0 {
			t.Errorf("forced: would stop %v, problems %v; want no stop but the problems listed", plan.WouldStop, plan.Problems)
		}
	})
}

// The seed: a host that does not reach maintenance within the wait timeout stops the run, even
// with --forced, and what the run changed is restored.
func TestRollingWaitMaintenanceTimeoutStopsEvenForced(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFleet()
		f.add("h1", "a")
		f.add("h2").hang = true
		f.add("h3")
		r, st, _ := newRolling(t, f, "h1", "h2", "h3")
		_ = st.Update(func(tx state.Tx) error {
			_, err := settings.Set(tx, settings.WaitMaintenanceTimeout, "600")
			return err
		})
		f.agents["h3"].cpus = 0 // only h2 can take h1's VM, and h2 never finishes starting it
		start := time.Now()
		res, err := r.Start(context.Background(), RollingRequest{Scope: inventory.Scope{Hosts: []string{"h1"}}, Timeout: time.Minute, Forced: true})
		if !errors.Is(err, ErrRunFailed) || !strings.Contains(res.Details, "wait.maintenance.timeout") {
			t.Fatalf("run = %+v, %v; want a stop naming the wait timeout", res, err)
		}
		if d := time.Since(start); d < 10*time.Minute || d > 11*time.Minute {
			t.Errorf("the run stopped after %s, want the wait timeout of 10 minutes", d)
		}
		if hostState(t, st, "h1") != state.Enabled {
			t.Errorf("h1 left in %s", hostState(t, st, "h1"))
		}
	})
}

// A state file that cannot be written stops the run at once: it cannot record what it does, so
// it must not do it. The run stays resumable.
func TestRollingStopsWhenItCannotRecord(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFleet()
		f.add("h1", "a")
		f.add("h2")
		st := newStoreWithCluster(t, "h1", "h2")
		fs := &failingStore{Memory: st, failAt: 12}
		p := newProcs()
		r := rollingOn(fs, f, p, 1)
		res, err := r.Start(context.Background(), clusters("c1"))
		if !errors.Is(err, ErrInterrupted) || !strings.Contains(err.Error(), "could not write the state file") || res.Success {
			t.Fatalf("run = %+v, %v; want it stopped, resumable", res, err)
		}
		if extra := fs.calls - fs.failAt; extra > 3 {
			t.Errorf("the run tried %d more writes after the first failed, want it to stop", extra)
		}
		p.kill(1)
		res, err = rollingOn(st, f, p, 2).Resume(context.Background(), res.RunID)
		if err != nil || !res.Success || len(res.HostsUpdated) != 2 {
			t.Fatalf("resume = %+v, %v", res, err)
		}
	})
}

// failingStore fails every Update from the failAt-th on, as a full disk would.
type failingStore struct {
	*state.Memory
	failAt, calls int
}

func (s *failingStore) Update(fn func(state.Tx) error) error {
	s.calls++
	if s.calls >= s.failAt {
		return errors.New("no space left on device")
	}
	return s.Memory.Update(fn)
}

// Finished runs beyond the retention setting are dropped, with their journal, when a new run
// begins; a running one never is.
func TestRollingRetention(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFleet()
		f.add("h1")
		r, st, _ := newRolling(t, f, "h1")
		_ = st.Update(func(tx state.Tx) error {
			_, err := settings.Set(tx, settings.JournalKeep, "2")
			return err
		})
		var ids []string
		for i := 0; i < 4; i++ {
			res, err := r.Start(context.Background(), clusters("c1"))
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, res.RunID)
			<-time.After(time.Second) // distinct run ids
		}
		var runs []*Run
		_ = st.View(func(tx state.Tx) (err error) { runs, err = ListRuns(tx); return err })
		// The 4th Begin pruned to 2 ended runs, then added itself: 3 kept.
		if len(runs) != 3 || runs[2].ID != ids[1] {
			t.Errorf("runs kept: %d (oldest %s), want 3 from %s", len(runs), runs[len(runs)-1].ID, ids[1])
		}
		if j := journalTypes(t, st, ids[0]); j != "" {
			t.Errorf("the pruned run's journal is still there: %s", j)
		}
	})
}
