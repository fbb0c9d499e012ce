package orchestrate

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/inventory"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// The crash-point tests stop an engine as a SIGKILL would, right after its N-th write to the
// state, for every N a clean run makes, and check that the next kvmctl (resume, abort, or the
// maintenance verb again) leaves the fleet whole: no cluster disabled, no host left in
// maintenance, no stage run twice, every VM running exactly once, no hold left.

var errKilled = errors.New("killed")

// killSwitch is one process that dies at its at-th write (never when at is 0): right after it
// commits, or, with before, right before (what it did since its last write is then unrecorded).
type killSwitch struct {
	mu     sync.Mutex
	at     int
	before bool
	writes int
	dead   bool
	cancel context.CancelFunc
}

func (k *killSwitch) isDead() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.dead
}

// killStore is the state as the dying process sees it: writes count, the at-th commits and the
// process is dead from then on; nothing after reaches the store.
type killStore struct {
	*state.Memory
	k *killSwitch
}

func (s killStore) View(fn func(state.Tx) error) error {
	if s.k.isDead() {
		return errKilled
	}
	return s.Memory.View(fn)
}

func (s killStore) Update(fn func(state.Tx) error) error {
	killed := false
	err := s.Memory.Update(func(tx state.Tx) error {
		s.k.mu.Lock()
		defer s.k.mu.Unlock()
		if s.k.dead {
			return errKilled
		}
		if s.k.before && s.k.writes+1 == s.k.at {
			s.k.dead, killed = true, true
			return errKilled
		}
		if err := fn(tx); err != nil {
			return err
		}
		s.k.writes++
		if s.k.writes == s.k.at {
			// The transaction commits as this returns; the process dies right after.
			s.k.dead, killed = true, true
		}
		return nil
	})
	if killed && s.k.cancel != nil {
		s.k.cancel()
	}
	return err
}

// killAgent is an agent as the dying process reaches it: nothing gets through once it is dead.
type killAgent struct {
	a *fakeAgent
	k *killSwitch
}

func (f *fleet) dialKillable(k *killSwitch) RollingDialer {
	return func(h state.Host) (RollingAgent, error) {
		if k.isDead() {
			return nil, errKilled
		}
		a, err := f.dial(h)
		if err != nil {
			return nil, err
		}
		return killAgent{a.(*fakeAgent), k}, nil
	}
}

func (k killAgent) check() error {
	if k.k.isDead() {
		return errKilled
	}
	return nil
}

func (k killAgent) Status(ctx context.Context) (api.Status, error) {
	if err := k.check(); err != nil {
		return api.Status{}, err
	}
	return k.a.Status(ctx)
}

func (k killAgent) EnterMaintenance(ctx context.Context) (api.Maintenance, error) {
	if err := k.check(); err != nil {
		return api.Maintenance{}, err
	}
	return k.a.EnterMaintenance(ctx)
}

func (k killAgent) CancelMaintenance(ctx context.Context) (api.Maintenance, error) {
	if err := k.check(); err != nil {
		return api.Maintenance{}, err
	}
	return k.a.CancelMaintenance(ctx)
}

func (k killAgent) VMXML(ctx context.Context, name string) (string, error) {
	if err := k.check(); err != nil {
		return "", err
	}
	return k.a.VMXML(ctx, name)
}

func (k killAgent) DefineAndStartVM(ctx context.Context, xml string) error {
	if err := k.check(); err != nil {
		return err
	}
	return k.a.DefineAndStartVM(ctx, xml)
}

func (k killAgent) RemoveVM(ctx context.Context, name string) error {
	if err := k.check(); err != nil {
		return err
	}
	return k.a.RemoveVM(ctx, name)
}

func (k killAgent) MigrateVM(ctx context.Context, name string, req api.MigrateRequest) error {
	if err := k.check(); err != nil {
		return err
	}
	return k.a.MigrateVM(ctx, name, req)
}

func (k killAgent) Hooks(ctx context.Context) ([]api.HookScript, error) {
	if err := k.check(); err != nil {
		return nil, err
	}
	return k.a.Hooks(ctx)
}

func (k killAgent) StartStage(ctx context.Context, req api.StageRequest) (string, error) {
	if err := k.check(); err != nil {
		return "", err
	}
	return k.a.StartStage(ctx, req)
}

func (k killAgent) WaitStage(ctx context.Context, id string, wait time.Duration) (api.StageStatus, error) {
	if err := k.check(); err != nil {
		return api.StageStatus{}, err
	}
	return k.a.WaitStage(ctx, id, wait)
}

// crashFleet is the fleet of the crash-point tests: h1 runs two VMs, h2 one, h3 none; every
// stage takes a few seconds, so that kills land while stages run.
func crashFleet() (*fleet, map[string]int) {
	f := newFleet()
	f.add("h1", "a", "b")
	f.add("h2", "c")
	f.add("h3")
	for _, a := range f.agents {
		for i, s := range events.Stages() {
			a.stages[s] = stageScript{takes: time.Duration(i+1) * time.Second}
		}
	}
	return f, map[string]int{"a": 1, "b": 1, "c": 1}
}

// checkWhole checks the fleet's invariants after a crash and its successor.
func checkWhole(t *testing.T, what string, st Store, f *fleet, vms map[string]int, maxExec int) {
	t.Helper()
	if got := clusterState(t, st, "c1"); got != state.Enabled {
		t.Errorf("%s: cluster c1 is %s", what, got)
	}
	for name, a := range f.agents {
		if s := hostState(t, st, name); s != state.Enabled {
			t.Errorf("%s: host %s is %s", what, name, s)
		}
		if a.inMaint {
			t.Errorf("%s: %s's agent is still in maintenance", what, name)
		}
		for _, v := range a.violations {
			t.Errorf("%s: %s: %s", what, name, v)
		}
		for s, n := range a.started {
			if n > maxExec {
				t.Errorf("%s: %s ran %s %d times", what, name, s, n)
			}
		}
	}
	got := f.vmCount()
	for vm, want := range vms {
		if got[vm] != want {
			t.Errorf("%s: VM %s runs %d times, want %d", what, vm, got[vm], want)
		}
	}
	if hs := allHolds(t, st); len(hs) != 0 {
		t.Errorf("%s: holds left: %+v", what, hs)
	}
}

// rollingWrites counts the writes of a clean run of req.
func rollingWrites(t *testing.T, req RollingRequest) int {
	var n int
	synctest.Test(t, func(t *testing.T) {
		f, _ := crashFleet()
		st := newStoreWithCluster(t, "h1", "h2", "h3")
		k := &killSwitch{}
		r := rollingOn(killStore{st, k}, f, newProcs(), 1)
		r.Dial = f.dialKillable(k)
		if res, err := r.Start(context.Background(), req); err != nil || !res.Success {
			t.Fatalf("clean run: %+v, %v", res, err)
		}
		n = k.writes
	})
	return n
}

func TestRollingCrashPoints(t *testing.T) {
	for _, mu := range []int{1, 2} {
		req := RollingRequest{Scope: inventory.Scope{Clusters: []string{"c1"}}, Timeout: time.Minute, MaxUnavailable: mu}
		total := rollingWrites(t, req)
		if total < 40 {
			t.Fatalf("a clean run made %d writes; the test would cover too little", total)
		}
		for _, mode := range []struct {
			then   string
			before bool
		}{{"resume", false}, {"abort", false}, {"resume", true}, {"abort", true}} {
			then := mode.then
			resumed := 0
			for at := 1; at <= total; at++ {
				synctest.Test(t, func(t *testing.T) {
					when := "after"
					if mode.before {
						when = "before"
					}
					what := fmt.Sprintf("max-unavailable %d, killed %s write %d of %d, then %s", mu, when, at, total, then)
					f, vms := crashFleet()
					st := newStoreWithCluster(t, "h1", "h2", "h3")
					p := newProcs()
					ctx, cancel := context.WithCancel(context.Background())
					defer cancel()
					k := &killSwitch{at: at, before: mode.before, cancel: cancel}
					dying := rollingOn(killStore{st, k}, f, p, 1)
					dying.Dial = f.dialKillable(k)
					_, err := dying.Start(ctx, req)
					if (at < total || mode.before) && err == nil {
						t.Fatalf("%s: the killed run reported success", what)
					}
					p.kill(1)

					var runs []*Run
					_ = st.View(func(tx state.Tx) (err error) { runs, err = ListRuns(tx); return err })
					if mode.before && at == 1 {
						// Killed before the run's first record: there is no run, nothing changed.
						if len(runs) != 0 {
							t.Fatalf("%s: %d runs recorded", what, len(runs))
						}
						checkWhole(t, what, st, f, vms, 0)
						return
					}
					if len(runs) != 1 {
						t.Fatalf("%s: %d runs recorded", what, len(runs))
					}
					next := rollingOn(st, f, p, 2)
					run := runs[0]
					switch {
					case run.State != events.RunRunning:
						// Killed after the run's last record: nothing is left to do.
					case then == "resume":
						resumed++
						res, err := next.Resume(context.Background(), run.ID)
						if err != nil || !res.Success || len(res.HostsUpdated) != 3 {
							t.Fatalf("%s: resume = %+v, %v", what, res, err)
						}
					default:
						resumed++
						res, asked, err := next.Abort(context.Background(), run.ID)
						if err != nil || asked || res.State != events.RunAborted || strings.Contains(res.Details, "NOT RESTORED") {
							t.Fatalf("%s: abort = %+v, asked %v, %v", what, res, asked, err)
						}
					}
					maxExec := 1
					checkWhole(t, what, st, f, vms, maxExec)
					if then == "resume" || run.State != events.RunRunning {
						for name, a := range f.agents {
							for _, s := range events.Stages() {
								if a.started[s] != 1 {
									t.Errorf("%s: %s ran %s %d times, want once", what, name, s, a.started[s])
								}
							}
						}
					}
				})
			}
			// Every kill but the one after the run's last record (or before its first) leaves work
			// for the next kvmctl.
			if resumed != total-1 {
				t.Errorf("max-unavailable %d, %s (before %v): %d of %d kill points left the run running, want %d", mu, then, mode.before, resumed, total, total-1)
			}
			t.Logf("max-unavailable %d: killed at each of %d writes (before the write: %v), then %s", mu, total, mode.before, then)
		}
	}
}

// maintenanceWrites counts the writes of a clean `maintenance enable h1`.
func maintenanceWrites(t *testing.T) int {
	var n int
	synctest.Test(t, func(t *testing.T) {
		f, _ := crashFleet()
		st := newStoreWithCluster(t, "h1", "h2", "h3")
		k := &killSwitch{}
		m := &Maintenance{Store: killStore{st, k}, Dial: func(h state.Host) (MaintenanceAgent, error) { return f.dialKillable(k)(h) }, Holds: newProcs().table(1)}
		if _, err := m.Enable(context.Background(), "h1", EnableOptions{}); err != nil {
			t.Fatal(err)
		}
		n = k.writes
	})
	return n
}

func TestMaintenanceCrashPoints(t *testing.T) {
	total := maintenanceWrites(t)
	if total < 8 {
		t.Fatalf("a clean enable made %d writes; the test would cover too little", total)
	}
	for _, mode := range []struct {
		then   string
		before bool
	}{{"enable", false}, {"cancel", false}, {"enable", true}, {"cancel", true}} {
		then := mode.then
		for at := 1; at <= total; at++ {
			synctest.Test(t, func(t *testing.T) {
				what := fmt.Sprintf("enable killed at write %d of %d (before it: %v), then %s", at, total, mode.before, then)
				f, vms := crashFleet()
				st := newStoreWithCluster(t, "h1", "h2", "h3")
				p := newProcs()
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				k := &killSwitch{at: at, before: mode.before, cancel: cancel}
				dying := &Maintenance{Store: killStore{st, k}, Dial: func(h state.Host) (MaintenanceAgent, error) { return f.dialKillable(k)(h) }, Holds: p.table(1)}
				_, _ = dying.Enable(ctx, "h1", EnableOptions{})
				p.kill(1)

				next := &Maintenance{Store: st, Dial: f.dialMaint, Holds: p.table(2)}
				if then == "enable" {
					if _, err := next.Enable(context.Background(), "h1", EnableOptions{}); err != nil && hostState(t, st, "h1") != state.Maintenance {
						t.Fatalf("%s: enable again = %v (h1 %s)", what, err, hostState(t, st, "h1"))
					}
					if s := hostState(t, st, "h1"); s != state.Maintenance || len(f.agents["h1"].vms) != 0 {
						t.Errorf("%s: h1 is %s with %d VMs, want Maintenance and empty", what, s, len(f.agents["h1"].vms))
					}
				}
				// Whatever the kill left, cancel brings the host back, holds included; only a host
				// that is Enabled with nothing held is refused (nothing to cancel).
				if _, err := next.Cancel(context.Background(), "h1"); err != nil && (!errs.IsRefused(err) || len(allHolds(t, st)) > 0 || hostState(t, st, "h1") != state.Enabled) {
					t.Fatalf("%s: cancel = %v", what, err)
				}
				checkWhole(t, what, st, f, vms, 0)
			})
		}
	}
}
