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
