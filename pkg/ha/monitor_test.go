package ha

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/holds"
	"github.com/kvmctl/kvmctl/pkg/state"
)

var noGrace = map[string]string{"kvm.ha.fence.startup.grace": "0"}

func c1(n int) map[string][]string {
	var hs []string
	for i := 1; i <= n; i++ {
		hs = append(hs, "h"+string(rune('0'+i)))
	}
	return map[string][]string{"c1": hs}
}

// A healthy fleet stays Available: no suspicion, no check, no fence, for ten minutes.
func TestHealthyHostsStayAvailable(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, c1(3), 2, noGrace)
		f.start(f.monitor(1, nil))
		time.Sleep(10 * time.Minute)
		for _, h := range []string{"h1", "h2", "h3"} {
			if got := states(f.history(h)); !slices.Equal(got, []string{"Available"}) {
				t.Errorf("%s went through %v", h, got)
			}
			if log := f.w.bmcLog(h); len(log) != 0 {
				t.Errorf("%s's BMC heard %v", h, log)
			}
		}
		if k := f.w.kinds(""); len(k) != 0 {
			t.Errorf("notices: %v", k)
		}
	})
}

// A crashed host (power lost: no heartbeat, no disk writes) is Suspect 3 s after its last good
// answer, judged INACTIVE three times 2 s apart, fenced through the fence path with the
// evidence audited first, put into Maintenance, and its VMs start once each on the other hosts.
func TestCrashedHostFencedAndRecovered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, c1(3), 2, noGrace)
		f.start(f.monitor(1, nil))
		time.Sleep(5 * time.Second)
		f.w.crash("h2")
		crashed := time.Now()
		f.waitState("h2", Recovered, time.Minute)

		hist := f.history("h2")
		want := []string{"Available", "Suspect", "Checking", "Fencing", "Fenced", "Recovering", "Recovered"}
		if got := states(hist); !slices.Equal(got, want) {
			t.Errorf("h2 went through %v, want %v", got, want)
		}
		var suspectAt, fencingAt, fencedAt, recoveredAt time.Time
		inactive := 0
		for _, e := range hist {
			switch {
			case e.Type == events.HASuspect && suspectAt.IsZero():
				suspectAt = e.Time
			case e.Type == events.HAActivityCheck && e.Verdict == string(Inactive):
				inactive++
				for _, r := range e.Reads {
					if r.Error != "" || r.Advanced || r.Baseline {
						t.Errorf("an INACTIVE check read %+v", r)
					}
				}
			case e.Type == events.HAFencing:
				fencingAt = e.Time
				if !strings.Contains(e.Evidence, "check 3 INACTIVE") {
					t.Errorf("the fencing decision's evidence: %q", e.Evidence)
				}
			case e.Type == events.HAFenced:
				fencedAt = e.Time
			case e.Type == events.HARecovered:
				recoveredAt = e.Time
			}
		}
		if inactive != 3 {
			t.Errorf("%d INACTIVE checks before the fence, want 3", inactive)
		}
		// At the defaults: 3 s to Suspect (the last good answer was up to 1 s before the crash),
		// a baseline, then 3 checks 2 s apart.
		if d := suspectAt.Sub(crashed); d < 2*time.Second || d > 4*time.Second {
			t.Errorf("Suspect %s after the crash", d)
		}
		if d := fencingAt.Sub(crashed); d > 11*time.Second {
			t.Errorf("fence decided %s after the crash, want about 9 s", d)
		}
		t.Logf("crash → fence decided %s, fenced %s, VMs running %s", fencingAt.Sub(crashed), fencedAt.Sub(crashed), recoveredAt.Sub(crashed))

		// The audit: the decision (intent with HA's evidence) before the BMC was called; the
		// BMC found it already off (a crash) and nothing was sent but status.
		audit := f.audit("h2")
		if len(audit) != 2 || audit[0].Type != events.FenceIntent || !strings.Contains(audit[0].Evidence, "INACTIVE") ||
			audit[0].Who != "ha watch pid 1" || !audit[1].Fenced || strings.Join(audit[1].Sent, ",") != "status" {
			t.Errorf("audit: %+v", audit)
		}
		if rs := f.resourceState("h2"); rs != state.Maintenance {
			t.Errorf("h2 is %s, want Maintenance", rs)
		}
		for _, uuid := range []string{"uuid-h2-1", "uuid-h2-2"} {
			if where := f.w.running(uuid); len(where) != 1 || where[0] == "h2" || f.w.starts[uuid] != 1 {
				t.Errorf("VM %s runs on %v after %d starts", uuid, where, f.w.starts[uuid])
			}
		}
		if k := strings.Join(f.w.kinds("h2"), " "); k != "fence.action ha.fenced ha.fencing ha.recovered ha.suspect" {
			t.Errorf("notices of h2: %s", k)
		}
		// Nothing else moved.
		for _, h := range []string{"h1", "h3"} {
			if got := states(f.history(h)); !slices.Equal(got, []string{"Available"}) {
				t.Errorf("%s went through %v", h, got)
			}
		}
	})
}

// A host whose agent died, or whose link is cut, still writes (its VMs' disks, or its
// heartbeat): Degraded, never fenced, and Available again once its agent answers.
func TestAliveHostNeverFenced(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault func(m *machine)
		heal  func(m *machine)
	}{
		{"agent killed", func(m *machine) { m.agent = false }, func(m *machine) { m.agent = true }},
		{"link cut", func(m *machine) { m.link = false }, func(m *machine) { m.link = true }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFixture(t, c1(3), 2, noGrace)
				f.start(f.monitor(1, nil))
				time.Sleep(5 * time.Second)
				f.w.do(func() { tc.fault(f.w.machine("h2")) })
				f.waitState("h2", Degraded, 30*time.Second)
				time.Sleep(5 * time.Minute)
				if st := State(f.record("h2").State); st != Degraded {
					t.Errorf("after 5 minutes h2 is %s", st)
				}
				if log := f.w.bmcLog("h2"); len(log) != 0 {
					t.Errorf("h2's BMC heard %v", log)
				}
				f.w.do(func() { tc.heal(f.w.machine("h2")) })
				f.waitState("h2", Available, 10*time.Second)
				time.Sleep(time.Second) // notices are sent without waiting
				if k := strings.Join(f.w.kinds("h2"), " "); k != "ha.available ha.degraded ha.suspect" {
					t.Errorf("notices: %s", k)
				}
				for _, e := range f.history("h2") {
					if e.Type == events.HAFencing || e.Type == events.HAGuard {
						t.Errorf("h2 was about to be fenced: %+v", e)
					}
				}
			})
		})
	}
}

// Neighbours that cannot read the files never make a verdict of "no activity": the host stays
// Suspect, "cannot tell" is notified once, nothing is fenced.
func TestUnreadableStorageIsNeverInactive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, c1(3), 1, noGrace)
		f.start(f.monitor(1, nil))
		time.Sleep(5 * time.Second)
		f.w.do(func() { f.w.machine("h1").readFail = true; f.w.machine("h3").readFail = true })
		f.w.crash("h2")
		time.Sleep(3 * time.Minute)
		rec := f.record("h2")
		if State(rec.State) != Suspect || rec.Verdict != string(Unknown) {
			t.Errorf("h2: %s, verdict %s", rec.State, rec.Verdict)
		}
		if log := f.w.bmcLog("h2"); len(log) != 0 {
			t.Errorf("h2's BMC heard %v", log)
		}
		if k := strings.Join(f.w.kinds("h2"), " "); k != "ha.cannot_tell ha.suspect" {
			t.Errorf("notices: %s", k)
		}
		// Reads come back: the crash is seen for what it is.
		f.w.do(func() { f.w.machine("h1").readFail = false; f.w.machine("h3").readFail = false })
		f.waitState("h2", Recovered, time.Minute)
	})
}

// A crashed host whose BMC does not answer stays Fencing, retried with backoff, its VMs not
// started anywhere; the failure is notified once. When the BMC answers again it is fenced and
// recovered.
func TestBMCDownStaysFencing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, c1(3), 2, noGrace)
		f.start(f.monitor(1, nil))
		time.Sleep(5 * time.Second)
		f.w.do(func() { f.w.machine("h2").bmcDown = true })
		f.w.crash("h2")
		f.waitState("h2", Fencing, 30*time.Second)
		time.Sleep(3 * time.Minute)
		rec := f.record("h2")
		if State(rec.State) != Fencing || rec.FenceFailures < 3 {
			t.Errorf("h2 after 3 minutes with its BMC down: %s, %d failures", rec.State, rec.FenceFailures)
		}
		for _, uuid := range []string{"uuid-h2-1", "uuid-h2-2"} {
			if f.w.starts[uuid] != 0 {
				t.Errorf("VM %s was started while h2 was not fenced", uuid)
			}
		}
		if n := strings.Count(strings.Join(f.w.kinds("h2"), " "), "fence.failed"); n != 1 {
			t.Errorf("fence.failed notified %d times, want once per streak", n)
		}
		f.w.do(func() { f.w.machine("h2").bmcDown = false })
		f.waitState("h2", Recovered, 2*time.Minute)
		for _, uuid := range []string{"uuid-h2-1", "uuid-h2-2"} {
			if where := f.w.running(uuid); len(where) != 1 || f.w.starts[uuid] != 1 {
				t.Errorf("VM %s runs on %v after %d starts", uuid, where, f.w.starts[uuid])
			}
		}
	})
}

// The storm guard: when every host's storage stalls and their agents stop answering at once,
// that is an outage, not crashes: nothing is fenced, and the refusal is audited and notified
// once per host.
func TestStormNeverFences(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, c1(4), 1, noGrace)
		f.start(f.monitor(1, nil))
		time.Sleep(5 * time.Second)
		// Two hosts lose power together: 2 of 4 > 0.3.
		f.w.crash("h1")
		f.w.crash("h2")
		time.Sleep(2 * time.Minute)
		for _, h := range []string{"h1", "h2"} {
			rec := f.record(h)
			if rec.Guard != GuardStorm || State(rec.State) == Fenced {
				t.Errorf("%s: %s, guard %q", h, rec.State, rec.Guard)
			}
			if log := f.w.bmcLog(h); len(log) != 0 {
				t.Errorf("%s's BMC heard %v", h, log)
			}
			audit := f.audit(h)
			if len(audit) != 1 || audit[0].Type != events.FenceRefused || !strings.Contains(audit[0].Message, "storm") {
				t.Errorf("%s's audit: %+v", h, audit)
			}
			if n := strings.Count(strings.Join(f.w.kinds(h), " "), "ha.guard"); n != 1 {
				t.Errorf("%s: ha.guard notified %d times", h, n)
			}
		}
	})
}

// Two crashes in one cluster with kvm.ha.fence.max.count=1 (and a storm ratio that lets two
// pass): one is fenced, the other refused by the rate cap, audited and notified, its VMs not
// started.
func TestRateCapStopsTheSecondFence(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, c1(4), 1, map[string]string{"kvm.ha.fence.startup.grace": "0", "kvm.ha.fence.max.count": "1", "kvm.ha.storm.ratio": "0.5"})
		f.start(f.monitor(1, nil))
		time.Sleep(5 * time.Second)
		f.w.crash("h1")
		time.Sleep(500 * time.Millisecond)
		f.w.crash("h2")
		time.Sleep(2 * time.Minute)
		fenced, capped := 0, 0
		for _, h := range []string{"h1", "h2"} {
			rec := f.record(h)
			switch {
			case State(rec.State) == Recovered:
				fenced++
			case rec.Guard == GuardCap:
				capped++
				if log := f.w.bmcLog(h); len(log) != 0 {
					t.Errorf("the capped %s's BMC heard %v", h, log)
				}
				if !slices.Contains(f.w.kinds(h), "fence.cap_reached") {
					t.Errorf("%s's cap was not notified: %v", h, f.w.kinds(h))
				}
				if f.w.starts["uuid-"+h+"-1"] != 0 {
					t.Errorf("the capped %s's VM was started", h)
				}
			}
		}
		if fenced != 1 || capped != 1 {
			t.Errorf("%d fenced, %d capped; want 1 and 1", fenced, capped)
		}
	})
}

// The startup grace: a watch fences nothing in its first kvm.ha.fence.startup.grace; the
// refusal is recorded once, and the fence happens when the grace ends.
func TestStartupGrace(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, c1(3), 1, nil) // the default 60 s
		f.start(f.monitor(1, nil))
		time.Sleep(5 * time.Second)
		f.w.crash("h2")
		time.Sleep(40 * time.Second)
		if rec := f.record("h2"); rec.Guard != GuardStartup || len(f.w.bmcLog("h2")) != 0 {
			t.Errorf("h2 during the grace: %+v, BMC %v", rec, f.w.bmcLog("h2"))
		}
		d := f.waitState("h2", Recovered, time.Minute)
		if d > 30*time.Second {
			t.Errorf("recovered %s after the check at 45 s", d)
		}
	})
}

// A host in maintenance, or worked on by a rolling run, is Ineligible: its reboot is no crash.
func TestBusyHostIneligible(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, c1(3), 1, noGrace)
		err := f.st.Update(func(tx state.Tx) error {
			h, err := state.GetHost(tx, "h2")
			if err != nil {
				return err
			}
			h.ResourceState = state.Maintenance
			return state.PutHost(tx, h)
		})
		if err != nil {
			t.Fatal(err)
		}
		f.start(f.monitor(1, nil))
		time.Sleep(5 * time.Second)
		f.w.crash("h2")
		time.Sleep(time.Minute)
		if rec := f.record("h2"); State(rec.State) != Ineligible || !strings.Contains(rec.Reason, "Maintenance") {
			t.Errorf("h2: %+v", rec)
		}
		if log := f.w.bmcLog("h2"); len(log) != 0 {
			t.Errorf("h2's BMC heard %v", log)
		}
	})
}

// Action blink: the chassis blinks, nothing is powered off, no VM is started until the operator
// confirms the host down; then its VMs start elsewhere.
func TestBlinkWaitsForConfirmDown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, c1(3), 1, noGrace)
		if err := f.st.Update(func(tx state.Tx) error {
			return state.PutBMC(tx, "host", "h2", state.BMC{Address: "10.0.0.2", Action: "blink"})
		}); err != nil {
			t.Fatal(err)
		}
		f.start(f.monitor(1, nil))
		time.Sleep(5 * time.Second)
		f.w.crash("h2")
		time.Sleep(time.Minute)
		rec := f.record("h2")
		if State(rec.State) != Fencing || !strings.Contains(rec.Reason, "confirm-down") || f.w.starts["uuid-h2-1"] != 0 {
			t.Errorf("h2 after a blink: %+v, starts %v", rec, f.w.starts)
		}
		if log := f.w.bmcLog("h2"); !slices.Contains(log, "identify") || slices.Contains(log, "off") {
			t.Errorf("h2's BMC heard %v", log)
		}
		if err := f.st.Update(func(tx state.Tx) error {
			return state.PutHARequest(tx, "h2", state.HARequest{ConfirmDown: true, Who: "op", At: time.Now()})
		}); err != nil {
			t.Fatal(err)
		}
		f.waitState("h2", Recovered, 30*time.Second)
		if where := f.w.running("uuid-h2-1"); len(where) != 1 {
			t.Errorf("h2-vm1 runs on %v", where)
		}
	})
}

// A watch killed after its fence's audit record, before the BMC's answer was recorded: the next
// watch settles the intent from the BMC, records the host fenced, and recovers its VMs once.
func TestRestartedWatchReconcilesTheFence(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, c1(3), 2, noGrace)
		// What a watch (pid 1) killed mid-fence leaves: its lease, h2's record in Fencing, the
		// audit's intent and the fence's hold, both its own; the BMC did power h2 off.
		f.w.crash("h2")
		now := time.Now().UTC()
		err := f.st.Update(func(tx state.Tx) error {
			dead := holds.Owner{PID: 1, StartTime: "t", Machine: "test"}
			if _, err := (holds.Table{Self: dead}).Take(tx, holds.Hold{Kind: holds.HAWatch, ID: "ha-watch-1", Since: now}, []holds.Subject{holds.HAWatchLease}); err != nil {
				return err
			}
			if _, err := (holds.Table{Self: dead}).Take(tx, holds.Hold{Kind: holds.Fencing, ID: "f1", Host: "h2", Since: now}, []holds.Subject{holds.Host("h2")}); err != nil {
				return err
			}
			return state.PutHAHost(tx, state.HAHost{Host: "h2", State: string(Fencing), Since: now, Action: "off"})
		})
		if err != nil {
			t.Fatal(err)
		}
		writeIntent(t, f.st, "f1", "h2", now)
		f.start(f.monitor(2, map[int]bool{1: true}))
		f.waitState("h2", Recovered, time.Minute)
		audit := f.audit("h2")
		if len(audit) != 2 || audit[1].Type != events.FenceReconciled || audit[1].PowerAfter != "off" {
			t.Errorf("audit: %+v", audit)
		}
		for _, uuid := range []string{"uuid-h2-1", "uuid-h2-2"} {
			if where := f.w.running(uuid); len(where) != 1 || f.w.starts[uuid] != 1 {
				t.Errorf("VM %s runs on %v after %d starts", uuid, where, f.w.starts[uuid])
			}
		}
	})
}

// A second watch on the same state file is refused, naming the first.
func TestOneWatchPerStateFile(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, c1(2), 0, noGrace)
		f.start(f.monitor(1, nil))
		time.Sleep(2 * time.Second)
		err := f.monitor(2, nil).Run(t.Context())
		if err == nil || !strings.Contains(err.Error(), "ha watch pid 1") {
			t.Errorf("a second watch: %v", err)
		}
	})
}

// A VM of the dead host found running elsewhere (by uuid) is not started again; one that fits
// nowhere waits until capacity appears.
func TestRecoveryNeverStartsTwiceAndWaitsForCapacity(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, c1(2), 2, noGrace)
		// h1 has room for one more VM of h2's two (8 GiB, 2 used, each VM 1 GiB: shrink h1).
		f.w.do(func() { f.w.machine("h1").memMiB = 3 * 1024 })
		f.refreshStatus()
		// h2-vm2 already runs on h1 (an operator started it there): found, not started.
		f.start(f.monitor(1, nil))
		time.Sleep(5 * time.Second)
		f.w.crash("h2")
		f.w.do(func() {
			vm := *f.w.machine("h2").vms[1]
			vm.running, vm.disk = true, "/shared/h2-vm2-copy.img"
			f.w.machine("h1").vms = append(f.w.machine("h1").vms, &vm)
		})
		f.waitState("h2", Recovering, time.Minute)
		time.Sleep(30 * time.Second)
		rec := f.record("h2")
		if rec.Recovery[0].State != "unplaced" || rec.Recovery[1].State != "running" || rec.Recovery[1].To != "h1" {
			t.Errorf("recovery: %+v", rec.Recovery)
		}
		if f.w.starts["uuid-h2-2"] != 0 {
			t.Errorf("h2-vm2 was started again though it ran on h1")
		}
		f.w.do(func() { f.w.machine("h1").memMiB = 8 * 1024 })
		f.waitState("h2", Recovered, time.Minute)
		if where := f.w.running("uuid-h2-1"); len(where) != 1 || where[0] != "h1" {
			t.Errorf("h2-vm1 runs on %v", where)
		}
	})
}

// restarter restarts a machine's agent, as SSH to the host would.
type restarter struct {
	w     *world
	calls []string
	fail  bool
}

func (r *restarter) RestartAgent(ctx context.Context, h state.Host) error {
	r.w.mu.Lock()
	defer r.w.mu.Unlock()
	r.calls = append(r.calls, h.Name)
	if r.fail {
		return errors.New("ssh: connect to host 127.0.0.1 port 22: connection refused")
	}
	r.w.machine(h.Name).agent = true
	return nil
}

// The soft step: a Degraded host's agent is restarted over SSH (kvm.ssh.to.agent), at most once
// per kvm.ha.degraded.restart.interval; a restart that works brings it back to Available. With
// kvm.ssh.to.agent=false nothing is tried.
func TestDegradedSoftStep(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, c1(3), 1, noGrace)
		r := &restarter{w: f.w, fail: true}
		m := f.monitor(1, nil)
		m.Restart = r
		f.start(m)
		time.Sleep(5 * time.Second)
		f.w.do(func() { f.w.machine("h2").agent = false })
		f.waitState("h2", Degraded, 30*time.Second)
		time.Sleep(4 * time.Minute)
		if len(r.calls) != 1 {
			t.Errorf("%d restarts in 4 minutes, want 1 (kvm.ha.degraded.restart.interval 300 s)", len(r.calls))
		}
		f.w.do(func() { r.fail = false })
		time.Sleep(2 * time.Minute)
		if len(r.calls) != 2 {
			t.Errorf("%d restarts after 6 minutes, want 2", len(r.calls))
		}
		f.waitState("h2", Available, 10*time.Second)
		var msgs []string
		for _, e := range f.history("h2") {
			if e.Type == events.HostAgentRestart {
				msgs = append(msgs, e.Message)
			}
		}
		if len(msgs) != 4 || !strings.Contains(msgs[1], "connection refused") || msgs[3] != "its agent was restarted over SSH" {
			t.Errorf("restart events: %q", msgs)
		}
	})
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, c1(3), 1, map[string]string{"kvm.ha.fence.startup.grace": "0", "kvm.ssh.to.agent": "false"})
		r := &restarter{w: f.w}
		m := f.monitor(1, nil)
		m.Restart = r
		f.start(m)
		time.Sleep(5 * time.Second)
		f.w.do(func() { f.w.machine("h2").agent = false })
		f.waitState("h2", Degraded, 30*time.Second)
		time.Sleep(time.Minute)
		if len(r.calls) != 0 {
			t.Errorf("restarted over SSH with kvm.ssh.to.agent=false: %v", r.calls)
		}
	})
}

// A fenced host that comes back keeps its VMs' definitions (shut off, or started again by
// libvirt's autostart): the watch removes the copies of the VMs it started elsewhere, so that
// none runs twice; then the operator's maintenance cancel makes it Available.
func TestReturningHostLosesStaleCopies(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, c1(3), 2, noGrace)
		f.start(f.monitor(1, nil))
		time.Sleep(5 * time.Second)
		f.w.crash("h2")
		f.waitState("h2", Recovered, time.Minute)
		// h2 boots; libvirt autostarts one of its VMs.
		f.w.do(func() {
			m := f.w.machine("h2")
			m.power, m.agent, m.bootID = true, true, "h2-boot1"
			m.vms[0].running = true
		})
		time.Sleep(10 * time.Second)
		removed := 0
		for _, e := range f.history("h2") {
			if e.Type == events.VMStaleRemoved {
				removed++
			}
		}
		if removed != 2 {
			t.Errorf("%d stale copies removed, want 2", removed)
		}
		for _, uuid := range []string{"uuid-h2-1", "uuid-h2-2"} {
			if where := f.w.running(uuid); len(where) != 1 || where[0] == "h2" {
				t.Errorf("VM %s runs on %v", uuid, where)
			}
		}
		f.w.mu.Lock()
		left := len(f.w.machine("h2").vms)
		f.w.mu.Unlock()
		if left != 0 {
			t.Errorf("h2 still defines %d VMs", left)
		}
		// The operator cancels its maintenance: Available.
		if err := f.st.Update(func(tx state.Tx) error {
			h, err := state.GetHost(tx, "h2")
			if err != nil {
				return err
			}
			h.ResourceState = state.Enabled
			return state.PutHost(tx, h)
		}); err != nil {
			t.Fatal(err)
		}
		f.waitState("h2", Available, 10*time.Second)
	})
}
