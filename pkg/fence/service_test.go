package fence

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/holds"
	"github.com/kvmctl/kvmctl/pkg/inventory"
	"github.com/kvmctl/kvmctl/pkg/journal"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// lab is a fleet of hosts with BMCs for the service's tests: hosts h1..hN in clusters of the
// given names, each with a fake BMC (powered on) and settings.
type lab struct {
	st   *state.Memory
	bmcs map[string]*fakeBMC
	sent []Notice
	mu   sync.Mutex
	fail error // notifications fail with it
}

func newLab(t *testing.T, clusters map[string][]string) *lab {
	t.Helper()
	l := &lab{st: state.NewMemory(), bmcs: map[string]*fakeBMC{}}
	err := l.st.Update(func(tx state.Tx) error {
		_, _ = inventory.AddZone(tx, "z1")
		_, _ = inventory.AddPod(tx, "p1", "z1")
		port := 9000
		for c, hosts := range clusters {
			if _, err := inventory.AddCluster(tx, c, "p1"); err != nil {
				return err
			}
			if err := state.PutBMC(tx, "cluster", c, state.BMC{Driver: "fake", Username: "admin", Password: "s3cret"}); err != nil {
				return err
			}
			for _, h := range hosts {
				port++
				if _, err := inventory.AddHost(tx, state.Host{Name: h, Cluster: c, Address: fmt.Sprintf("127.0.0.1:%d", port)}); err != nil {
					return err
				}
				if err := state.PutBMC(tx, "host", h, state.BMC{Address: "10.0.0." + h[1:]}); err != nil {
					return err
				}
				l.bmcs[h] = &fakeBMC{power: PowerOn}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func (l *lab) Notify(_ context.Context, n Notice) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sent = append(l.sent, n)
	return l.fail
}

func (l *lab) service(pid int, dead map[int]bool) *Service {
	return &Service{Store: l.st, Notify: l, Who: fmt.Sprintf("op@test pid %d", pid),
		Holds: holds.Table{Self: holds.Owner{PID: pid, StartTime: "t", Machine: "test"}, Alive: func(o holds.Owner) bool { return !dead[o.PID] }},
		Open: func(b state.BMC, host string) (Driver, error) {
			if b.Password != "s3cret" || b.Address == "" {
				return nil, errors.New("incomplete settings")
			}
			return l.bmcs[host], nil
		}}
}

func (l *lab) audit(t *testing.T, host string) []events.Event {
	t.Helper()
	var evs []events.Event
	_ = l.st.View(func(tx state.Tx) (err error) { evs, err = Audit(tx, host, time.Time{}); return err })
	return evs
}

func types(evs []events.Event) string {
	var s []string
	for _, e := range evs {
		s = append(s, string(e.Type))
	}
	return strings.Join(s, " ")
}

// The intent, with who and why, is in the state before the BMC is asked to power off; the result
// after, with what was sent and the power read; the host's hold is gone after.
func TestIntentWrittenBeforeTheBMCIsCalled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, map[string][]string{"c1": {"h1", "h2"}})
		s := l.service(1, nil)
		seen := ""
		s.Open = func(b state.BMC, host string) (Driver, error) {
			return &watching{fakeBMC: l.bmcs[host], l: l, t: t, seen: &seen}, nil
		}
		res, err := s.Do(context.Background(), Request{Host: "h1", Action: ActionOff, Reason: "patched kernel hangs"})
		if err != nil || !res.Outcome.Fenced {
			t.Fatalf("Do = %+v, %v", res, err)
		}
		if seen != "fence.intent" {
			t.Errorf("when off was sent the audit held %q, want the intent", seen)
		}
		evs := l.audit(t, "h1")
		if types(evs) != "fence.intent fence.result" || evs[0].Who != "op@test pid 1" || evs[0].Reason != "patched kernel hangs" ||
			!evs[1].Fenced || evs[1].PowerBefore != "on" || evs[1].PowerAfter != "off" || !strings.Contains(strings.Join(evs[1].Sent, ","), "off") {
			t.Errorf("audit = %+v", evs)
		}
		if len(l.sent) != 1 || l.sent[0].Result != "power confirmed off" || l.sent[0].Host != "h1" || l.sent[0].Failed {
			t.Errorf("notices = %+v", l.sent)
		}
		var hs []holds.Hold
		_ = l.st.View(func(tx state.Tx) (err error) { hs, err = holds.List(tx); return err })
		if len(hs) != 0 {
			t.Errorf("holds left: %+v", hs)
		}
		// status and test leave no record.
		if _, err := s.Do(context.Background(), Request{Host: "h2", Action: ActionStatus}); err != nil || len(l.audit(t, "h2")) != 0 {
			t.Errorf("status: %v, audit %v", err, l.audit(t, "h2"))
		}
	})
}

// watching is a BMC that looks at the audit when off reaches it.
type watching struct {
	*fakeBMC
	l    *lab
	t    *testing.T
	seen *string
}

func (w *watching) Off(ctx context.Context) error {
	evs := w.l.audit(w.t, "")
	*w.seen = types(evs)
	return w.fakeBMC.Off(ctx)
}

// Seed 002: no more than 3 power-downs within an hour, per cluster and fleet-wide; the 4th is
// refused, audited and notified, and nothing is sent to its BMC. Power-ons do not count, and the
// window slides.
func TestRateCap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, map[string][]string{"c1": {"h1", "h2", "h3", "h4"}, "c2": {"h5", "h6"}})
		s := l.service(1, nil)
		ctx := context.Background()
		for _, h := range []string{"h1", "h2", "h3"} {
			if _, err := s.Do(ctx, Request{Host: h, Action: ActionOff}); err != nil {
				t.Fatalf("off %s: %v", h, err)
			}
			<-time.After(time.Minute)
		}
		if _, err := s.Do(ctx, Request{Host: "h1", Action: ActionOn}); err != nil {
			t.Fatalf("on h1: %v", err)
		}
		_, err := s.Do(ctx, Request{Host: "h4", Action: ActionOff})
		if !errs.IsRefused(err) || !errors.Is(err, ErrCapReached) || !strings.Contains(err.Error(), "3 hosts powered down in cluster c1") ||
			!strings.Contains(err.Error(), "the next is allowed at 2000-01-01T01:00:00Z (in 56m56s)") {
			t.Fatalf("4th off = %v, want the cap, and when the first leaves the window", err)
		}
		if l.bmcs["h4"].sent("off")+l.bmcs["h4"].sent("status") != 0 {
			t.Errorf("the refused fence reached h4's BMC: %v", l.bmcs["h4"].log)
		}
		if last := l.sent[len(l.sent)-1]; last.Kind != events.FenceRefused || last.Host != "h4" || !last.CapReached || last.Failed {
			t.Errorf("last notice %+v, want the refusal", last)
		}
		if got := types(l.audit(t, "h4")); got != "fence.refused" {
			t.Errorf("h4's audit: %s", got)
		}
		// Fleet-wide: c2 has had none, but the fleet has had 3.
		if _, err := s.Do(ctx, Request{Host: "h5", Action: ActionReboot}); !errors.Is(err, ErrCapReached) || !strings.Contains(err.Error(), "the fleet") {
			t.Errorf("reboot in c2 = %v, want the fleet-wide cap", err)
		}
		// An hour after the first, one more is allowed.
		<-time.After(58 * time.Minute)
		if _, err := s.Do(ctx, Request{Host: "h4", Action: ActionOff}); err != nil {
			t.Errorf("off after the window slid: %v", err)
		}
	})
}

// The cap counts hosts, not attempts: one host fenced again and again (HA retrying a BMC that
// does not answer, an operator powering it off twice) takes one place.
func TestRateCapCountsHostsNotRetries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, map[string][]string{"c1": {"h1", "h2", "h3", "h4"}})
		s := l.service(1, nil)
		ctx := context.Background()
		l.bmcs["h1"].down = true
		for range 5 {
			if _, err := s.Do(ctx, Request{Host: "h1", Action: ActionOff}); err == nil || errors.Is(err, ErrCapReached) {
				t.Fatalf("off h1 with its BMC down = %v, want a failure, not the cap", err)
			}
		}
		l.bmcs["h1"].down = false
		for _, h := range []string{"h1", "h2", "h3"} {
			if _, err := s.Do(ctx, Request{Host: h, Action: ActionOff}); err != nil {
				t.Fatalf("off %s: %v", h, err)
			}
		}
		if _, err := s.Do(ctx, Request{Host: "h4", Action: ActionOff}); !errors.Is(err, ErrCapReached) {
			t.Errorf("a 4th host = %v, want the cap", err)
		}
	})
}

// Two fences racing for the cap's last place: exactly one gets it (the cap is counted in the
// transaction that writes the intent).
func TestRateCapUnderConcurrency(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, map[string][]string{"c1": {"h1", "h2", "h3", "h4"}})
		_ = l.st.Update(func(tx state.Tx) error { return tx.Put(state.BucketSettings, "kvm.ha.fence.max.count", []byte("1")) })
		var wg sync.WaitGroup
		errsOut := make([]error, 4)
		for i, h := range []string{"h1", "h2", "h3", "h4"} {
			wg.Go(func() {
				_, errsOut[i] = l.service(10+i, nil).Do(context.Background(), Request{Host: h, Action: ActionOff})
			})
		}
		wg.Wait()
		ok := 0
		for _, err := range errsOut {
			if err == nil {
				ok++
			} else if !errors.Is(err, ErrCapReached) {
				t.Errorf("unexpected: %v", err)
			}
		}
		if ok != 1 {
			t.Errorf("%d fences passed a cap of 1", ok)
		}
	})
}

// A host held by a rolling run is refused, naming the run, unless forced; another fence of the
// same host is never forced through.
func TestHoldsRefuseUnlessForced(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, map[string][]string{"c1": {"h1", "h2"}})
		_ = l.st.Update(func(tx state.Tx) error {
			_, err := holds.Table{Self: holds.Owner{PID: 99, StartTime: "t"}, Alive: func(holds.Owner) bool { return true }}.Take(tx,
				holds.Hold{Kind: holds.Rolling, ID: "r1", What: "rolling run r1"}, []holds.Subject{holds.Cluster("c1")})
			return err
		})
		s := l.service(1, nil)
		_, err := s.Do(context.Background(), Request{Host: "h1", Action: ActionOff})
		if !errs.IsRefused(err) || !strings.Contains(err.Error(), "held by rolling run r1") || !strings.Contains(err.Error(), "--force") {
			t.Fatalf("off in a held cluster = %v", err)
		}
		if len(l.bmcs["h1"].log) != 0 {
			t.Errorf("the refused fence reached the BMC: %v", l.bmcs["h1"].log)
		}
		if _, err := s.Do(context.Background(), Request{Host: "h1", Action: ActionOff, Force: true}); err != nil {
			t.Errorf("forced off = %v", err)
		}
		// A live fence of h2 holds it: a second one, forced or not, is refused.
		_ = l.st.Update(func(tx state.Tx) error {
			_, err := holds.Table{Self: holds.Owner{PID: 98, StartTime: "t"}, Alive: func(holds.Owner) bool { return true }}.Take(tx,
				holds.Hold{Kind: holds.Fencing, ID: "fX", What: "fence off of h2"}, []holds.Subject{holds.Host("h2")})
			return err
		})
		if _, err := s.Do(context.Background(), Request{Host: "h2", Action: ActionOff, Force: true}); !errs.IsRefused(err) || !strings.Contains(err.Error(), "fence off of h2") {
			t.Errorf("a second fence of h2 = %v", err)
		}
	})
}

// A kvmctl killed between its intent and the BMC's answer leaves an intent without a result and
// a hold of a dead process; the next fence of that host (or audit list) asks the BMC and records
// what it found.
func TestOrphanIntentReconciled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, map[string][]string{"c1": {"h1", "h2"}})
		dead := map[int]bool{}
		killed := l.service(1, dead)
		killed.Store = deadStore{l.st, dead} // once dead, it writes nothing more
		killed.Open = func(b state.BMC, host string) (Driver, error) { return &dying{fakeBMC: l.bmcs[host], dead: dead}, nil }
		_, _ = killed.Do(context.Background(), Request{Host: "h1", Action: ActionOff})
		if got := types(l.audit(t, "h1")); got != "fence.intent" {
			t.Fatalf("after the kill: %s", got)
		}
		next := l.service(2, dead)
		done, err := next.Reconcile(context.Background(), "")
		if err != nil || len(done) != 1 || done[0].PowerAfter != "off" {
			t.Fatalf("Reconcile = %+v, %v", done, err)
		}
		if got := types(l.audit(t, "h1")); got != "fence.intent fence.reconciled" {
			t.Errorf("audit: %s", got)
		}
		// Reconciled once: nothing left, and the host's hold is gone so it can be fenced again.
		if again, _ := next.Reconcile(context.Background(), ""); len(again) != 0 {
			t.Errorf("reconciled twice: %+v", again)
		}
		if _, err := next.Do(context.Background(), Request{Host: "h1", Action: ActionOn}); err != nil {
			t.Errorf("on after reconcile: %v", err)
		}
	})
}

// deadStore is the state as a killed process sees it: nothing it writes after its death lands.
type deadStore struct {
	*state.Memory
	dead map[int]bool
}

func (d deadStore) Update(fn func(state.Tx) error) error {
	if d.dead[1] {
		return errors.New("killed")
	}
	return d.Memory.Update(fn)
}

// dying is a BMC whose off reaches the chassis, then the kvmctl that sent it dies (its process
// is marked dead and the call never returns a result to record).
type dying struct {
	*fakeBMC
	dead map[int]bool
}

func (d *dying) Off(ctx context.Context) error {
	_ = d.fakeBMC.Off(ctx)
	d.dead[1] = true
	d.fakeBMC.mu.Lock()
	d.fakeBMC.power, d.fakeBMC.pending = PowerOff, ""
	d.fakeBMC.down = true // the killed process hears nothing more
	d.fakeBMC.mu.Unlock()
	go func() { <-time.After(time.Second); d.fakeBMC.mu.Lock(); d.fakeBMC.down = false; d.fakeBMC.mu.Unlock() }()
	return errors.New("killed")
}

// Notifications that fail never fail the action, and are audited.
func TestNotificationFailureAudited(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, map[string][]string{"c1": {"h1"}})
		l.fail = errors.New("smtp 127.0.0.1:2525: connection refused")
		res, err := l.service(1, nil).Do(context.Background(), Request{Host: "h1", Action: ActionBlink})
		if err != nil || len(res.NotifyErrors) != 1 {
			t.Fatalf("Do = %+v, %v", res, err)
		}
		if got := types(l.audit(t, "h1")); got != "fence.intent fence.result notify.failed" {
			t.Errorf("audit: %s", got)
		}
	})
}

// A BMC that does not answer: the result is audited as not fenced, the hold is released, and
// the notice is marked failed (fence.failed to the channels), with the BMC's error.
func TestFailedActionNotifiedAsFailed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, map[string][]string{"c1": {"h1"}})
		l.bmcs["h1"].down = true
		res, err := l.service(1, nil).Do(context.Background(), Request{Host: "h1", Action: ActionOff})
		if err == nil || res.Outcome.Fenced {
			t.Fatalf("Do = %+v, %v, want a failure", res, err)
		}
		evs := l.audit(t, "h1")
		if types(evs) != "fence.intent fence.result" || evs[1].Fenced || !strings.Contains(evs[1].Message, "no answer") {
			t.Errorf("audit = %+v", evs)
		}
		if len(l.sent) != 1 || !l.sent[0].Failed || l.sent[0].CapReached || !strings.Contains(l.sent[0].Result, "no answer") {
			t.Errorf("notices = %+v", l.sent)
		}
		var hs []holds.Hold
		_ = l.st.View(func(tx state.Tx) (err error) { hs, err = holds.List(tx); return err })
		if len(hs) != 0 {
			t.Errorf("holds left: %+v", hs)
		}
	})
}

// The audit stream is journaled like any other: it survives, never ends, and a record reads back.
func TestAuditIsAJournalStream(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, map[string][]string{"c1": {"h1"}})
		_, _ = l.service(1, nil).Do(context.Background(), Request{Host: "h1", Action: ActionOff})
		_ = l.st.View(func(tx state.Tx) error {
			s, err := journal.GetStream(tx, AuditStream)
			if err != nil || s.Ended || s.Kind != journal.Fence || s.Seq != 2 {
				t.Errorf("stream = %+v, %v", s, err)
			}
			return nil
		})
	})
}
