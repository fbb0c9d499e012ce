package orchestrate

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/synctest"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/settings"
	"github.com/kvmctl/kvmctl/pkg/state"
)

func newMaint(st Store, f *fleet, ssh SSHRunner) *Maintenance {
	return &Maintenance{Store: st, Dial: f.dialMaint, SSH: ssh, Holds: newProcs().table(1)}
}

func TestEnableMovesEveryVMAndCancelRestores(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st := newStoreWithCluster(t, "h1", "h2", "h3")
		f := newFleet()
		f.add("h1", "a", "b", "c")
		f.add("h2")
		f.add("h3")
		m := newMaint(st, f, nil)
		res, err := m.Enable(context.Background(), "h1", EnableOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Migrated) != 3 || len(f.agents["h1"].vms) != 0 || len(f.agents["h2"].vms)+len(f.agents["h3"].vms) != 3 {
			t.Errorf("after enable: migrated %v, h1 %d VMs, h2+h3 %d", res.Migrated, len(f.agents["h1"].vms), len(f.agents["h2"].vms)+len(f.agents["h3"].vms))
		}
		if got := hostState(t, st, "h1"); got != state.Maintenance || !f.agents["h1"].inMaint {
			t.Errorf("h1 = %s, agent in maintenance %v; want Maintenance, true", got, f.agents["h1"].inMaint)
		}
		if _, err := m.Enable(context.Background(), "h1", EnableOptions{}); !errs.IsRefused(err) || !strings.Contains(err.Error(), "is in Maintenance") {
			t.Errorf("second enable = %v, want a refusal naming Maintenance", err)
		}
		if _, err := m.Cancel(context.Background(), "h1"); err != nil {
			t.Fatal(err)
		}
		if got := hostState(t, st, "h1"); got != state.Enabled || f.agents["h1"].inMaint {
			t.Errorf("after cancel h1 = %s, agent in maintenance %v", got, f.agents["h1"].inMaint)
		}
		if _, err := m.Cancel(context.Background(), "h1"); !errs.IsRefused(err) || !strings.Contains(err.Error(), "Enabled, not in maintenance") {
			t.Errorf("cancel of an Enabled host = %v, want a refusal naming its state", err)
		}
	})
}

func TestEnableDryRunAndNoFitChangeNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st := newStoreWithCluster(t, "h1", "h2")
		f := newFleet()
		f.add("h1", "a", "b")
		f.add("h2").cpus = 1 // room for one VM only
		m := newMaint(st, f, nil)
		res, err := m.Enable(context.Background(), "h1", EnableOptions{})
		if !errors.Is(err, ErrDoesNotFit) || len(res.Unplaced) != 1 {
			t.Fatalf("enable = %+v, %v; want ErrDoesNotFit with one unplaced VM", res, err)
		}
		if hostState(t, st, "h1") != state.Enabled || len(f.agents["h1"].vms) != 2 || f.agents["h1"].inMaint {
			t.Errorf("a refused enable changed something")
		}
		f.agents["h2"].cpus = 8
		res, err = m.Enable(context.Background(), "h1", EnableOptions{DryRun: true})
		if err != nil || len(res.Plan) != 2 {
			t.Fatalf("dry run = %+v, %v", res, err)
		}
		if hostState(t, st, "h1") != state.Enabled || len(f.agents["h1"].vms) != 2 || f.agents["h1"].inMaint {
			t.Errorf("a dry run changed something")
		}
	})
}

func TestEnableFailureLeavesErrorInMaintenance(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st := newStoreWithCluster(t, "h1", "h2")
		f := newFleet()
		f.add("h1", "a")
		f.add("h2")
		m := newMaint(st, f, nil)
		// The target says Up when planned, but refuses the VM when it arrives (it entered
		// maintenance in between).
		f.agents["h2"].inMaint = true
		m.Dial = func(h state.Host) (MaintenanceAgent, error) {
			a, err := f.dial(h)
			if h.Name == "h2" {
				return &refusingStatus{fakeAgent: a.(*fakeAgent)}, err
			}
			return a, err
		}
		_, err := m.Enable(context.Background(), "h1", EnableOptions{})
		if err == nil || !strings.Contains(err.Error(), "ErrorInMaintenance") {
			t.Fatalf("enable = %v, want a failure leaving ErrorInMaintenance", err)
		}
		var reason string
		_ = st.View(func(tx state.Tx) error { h, _ := state.GetHost(tx, "h1"); reason = h.StateReason; return nil })
		if hostState(t, st, "h1") != state.ErrorInMaintenance || !strings.Contains(reason, "could not be moved") {
			t.Errorf("h1 = %s (%q), want ErrorInMaintenance with the reason", hostState(t, st, "h1"), reason)
		}
		if len(f.agents["h1"].vms) != 1 {
			t.Errorf("the VM left h1 although it could not start elsewhere")
		}
	})
}

// refusingStatus reports Up in its status but refuses VM starts, as a target that entered
// maintenance between the plan and the move.
type refusingStatus struct{ *fakeAgent }

func (r *refusingStatus) Status(ctx context.Context) (st api.Status, err error) {
	st, err = r.fakeAgent.Status(ctx)
	st.AgentState = "Up"
	return st, err
}

// The seed's table for cancel, row by row.
func TestCancelTable(t *testing.T) {
	for _, c := range []struct {
		name       string
		down       bool
		sshAllowed bool
		sshFails   bool
		wantErr    string
		wantSSH    int
	}{
		{name: "connected, ssh false", down: false, sshAllowed: false},
		{name: "connected, ssh true", down: false, sshAllowed: true},
		{name: "disconnected, ssh false", down: true, sshAllowed: false,
			wantErr: "the agent on h1 must be connected to cancel maintenance; start it, or set kvm.ssh.to.agent=true so kvmctl can restart it over SSH"},
		{name: "disconnected, ssh true", down: true, sshAllowed: true, wantSSH: 1},
		{name: "disconnected, ssh true, ssh fails", down: true, sshAllowed: true, sshFails: true, wantSSH: 1, wantErr: "restart the agent on h1 over SSH"},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				st := newStoreWithCluster(t, "h1", "h2")
				f := newFleet()
				f.add("h1", "a")
				f.add("h2")
				ssh := &fakeSSH{f: f}
				if c.sshFails {
					ssh.fail = errors.New("host key mismatch")
				}
				m := newMaint(st, f, ssh)
				if _, err := m.Enable(context.Background(), "h1", EnableOptions{}); err != nil {
					t.Fatal(err)
				}
				_ = st.Update(func(tx state.Tx) error {
					_, err := settings.Set(tx, settings.SSHToAgent, map[bool]string{true: "true", false: "false"}[c.sshAllowed])
					return err
				})
				f.agents["h1"].down = c.down
				_, err := m.Cancel(context.Background(), "h1")
				if c.wantErr != "" {
					if err == nil || !strings.Contains(err.Error(), c.wantErr) {
						t.Errorf("cancel = %v, want %q", err, c.wantErr)
					}
					if hostState(t, st, "h1") != state.Maintenance {
						t.Errorf("a failed cancel changed the host to %s", hostState(t, st, "h1"))
					}
				} else if err != nil || hostState(t, st, "h1") != state.Enabled || f.agents["h1"].inMaint {
					t.Errorf("cancel = %v, host %s, agent in maintenance %v", err, hostState(t, st, "h1"), f.agents["h1"].inMaint)
				}
				if len(ssh.commands) != c.wantSSH {
					t.Errorf("ssh commands = %v, want %d", ssh.commands, c.wantSSH)
				}
				if c.wantSSH > 0 && ssh.commands[0] != "h1: systemctl restart kvmagent" {
					t.Errorf("ssh ran %q, want the default restart command", ssh.commands[0])
				}
			})
		})
	}
}

// A lab transfer cut short by a killed kvmctl leaves a VM running on the target and on the host
// being emptied; enable and cancel both finish it, so no VM ever runs twice.
func TestHalfDoneTransferFinished(t *testing.T) {
	for _, op := range []string{"enable", "cancel"} {
		t.Run(op, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				st := newStoreWithCluster(t, "h1", "h2")
				f := newFleet()
				f.add("h1", "a", "b")
				f.add("h2", "a") // "a" started on h2, not yet removed from h1
				m := newMaint(st, f, nil)
				if op == "cancel" {
					_ = st.Update(func(tx state.Tx) error {
						h, _ := state.GetHost(tx, "h1")
						h.ResourceState = state.ErrorInMaintenance
						return state.PutHost(tx, h)
					})
					if _, err := m.Cancel(context.Background(), "h1"); err != nil {
						t.Fatal(err)
					}
				} else if _, err := m.Enable(context.Background(), "h1", EnableOptions{}); err != nil {
					t.Fatal(err)
				}
				count := map[string]int{}
				for _, a := range f.agents {
					for n := range a.vms {
						count[n]++
					}
				}
				if count["a"] != 1 || count["b"] != 1 {
					t.Errorf("after %s: VMs %v, want each exactly once", op, count)
				}
				if _, ok := f.agents["h1"].vms["a"]; ok {
					t.Errorf("the copy on h1 (the source) must go, the one on h2 stays")
				}
			})
		})
	}
}

// An agent whose maintenance file was damaged comes back in hostInMaintenance while kvmctl has
// the host Enabled; its log says to cancel maintenance, and cancel does that, touching only the
// agent. A host that neither side has in maintenance is still refused.
func TestCancelOfAnAgentInMaintenanceAlone(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st := newStoreWithCluster(t, "h1", "h2")
		f := newFleet()
		f.add("h1", "a")
		f.add("h2")
		m := newMaint(st, f, nil)
		if _, err := m.Cancel(context.Background(), "h1"); !errs.IsRefused(err) {
			t.Fatalf("cancel of a host in maintenance nowhere = %v, want a refusal", err)
		}
		f.agents["h1"].inMaint = true
		res, err := m.Cancel(context.Background(), "h1")
		if err != nil || f.agents["h1"].inMaint || !strings.Contains(res.Reason, "maintenance file was unreadable") {
			t.Fatalf("cancel = %+v, %v; agent in maintenance %v", res, err, f.agents["h1"].inMaint)
		}
		if hostState(t, st, "h1") != state.Enabled || len(f.agents["h1"].vms) != 1 {
			t.Errorf("h1 %s with %d VMs; want Enabled and its VM untouched", hostState(t, st, "h1"), len(f.agents["h1"].vms))
		}
		if hs := allHolds(t, st); len(hs) != 0 {
			t.Errorf("holds left: %+v", hs)
		}
	})
}
