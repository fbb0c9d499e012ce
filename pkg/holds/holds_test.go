package holds

import (
	"strings"
	"testing"
	"time"

	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// tables returns two processes' tables over one store; dead says which owners have died.
func tables(dead map[int]bool) (a, b Table) {
	alive := func(o Owner) bool { return !dead[o.PID] }
	return Table{Self: Owner{PID: 1, StartTime: "1"}, Alive: alive}, Table{Self: Owner{PID: 2, StartTime: "2"}, Alive: alive}
}

var t0 = time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)

func TestTakeRefusesAnotherHolderNamingIt(t *testing.T) {
	db := state.NewMemory()
	dead := map[int]bool{}
	a, b := tables(dead)
	run := Hold{Kind: Rolling, ID: "r1", What: "rolling run r1", Since: t0}
	if err := db.Update(func(tx state.Tx) error { return take(a.Take(tx, run, []Subject{Cluster("c1"), Cluster("c2")})) }); err != nil {
		t.Fatal(err)
	}
	maint := Hold{Kind: Maintenance, ID: "m1", What: "maintenance enable of h1", Host: "h1", Since: t0}
	err := db.Update(func(tx state.Tx) error { return take(b.Take(tx, maint, []Subject{Host("h1"), Cluster("c2")})) })
	if !errs.IsRefused(err) || !strings.Contains(err.Error(), "cluster c2 is held by rolling run r1 (pid 1, since 2026-11-29T10:00:00Z), which is still running: wait for it, or `kvmctl rolling abort r1`") {
		t.Fatalf("Take over a live run's cluster = %v", err)
	}
	// Nothing of the refused Take stays: host/h1 is free.
	_ = db.View(func(tx state.Tx) error {
		if _, ok, _ := Get(tx, Host("h1")); ok {
			t.Error("a refused Take left a hold behind")
		}
		// The holder itself passes its own checks; others are refused; ignored kinds pass.
		if err := a.Check(tx, run.Ref(), []Subject{Cluster("c1")}); err != nil {
			t.Errorf("own hold refused: %v", err)
		}
		if err := b.Check(tx, Ref{}, []Subject{Cluster("c1")}); !errs.IsRefused(err) {
			t.Errorf("Check by another = %v", err)
		}
		if err := b.Check(tx, Ref{}, []Subject{Cluster("c1")}, Rolling); err != nil {
			t.Errorf("Check ignoring rolling = %v", err)
		}
		return nil
	})

	// The run's kvmctl dies: its holds stay, the refusal says how to settle them, and only the
	// run's own takeover moves them.
	dead[1] = true
	err = db.Update(func(tx state.Tx) error { return take(b.Take(tx, maint, []Subject{Cluster("c2")}, Maintenance)) })
	if !errs.IsRefused(err) || !strings.Contains(err.Error(), "whose kvmctl died: `kvmctl rolling resume r1` to finish it, or `kvmctl rolling abort r1`") {
		t.Fatalf("Take over a dead run's cluster = %v", err)
	}
	if err := db.Update(func(tx state.Tx) error { return b.TakeOver(tx, run.Ref(), t0) }); err != nil {
		t.Fatal(err)
	}
	_ = db.View(func(tx state.Tx) error {
		h, _, _ := Get(tx, Cluster("c2"))
		if h.Owner != b.Self {
			t.Errorf("after TakeOver the owner is %+v", h.Owner)
		}
		return nil
	})
	// A live owner is never taken over.
	if err := db.Update(func(tx state.Tx) error { return a.TakeOver(tx, run.Ref(), t0) }); !errs.IsRefused(err) {
		t.Errorf("TakeOver from a live owner = %v", err)
	}
	if err := db.Update(func(tx state.Tx) error { return Release(tx, run.Ref()) }); err != nil {
		t.Fatal(err)
	}
	_ = db.View(func(tx state.Tx) error {
		if all, _ := List(tx); len(all) != 0 {
			t.Errorf("holds left after Release: %+v", all)
		}
		return nil
	})
}

// A maintenance action whose kvmctl died is taken over by the next maintenance action, never
// by anything else.
func TestDeadMaintenanceHoldIsReplacedOnlyByMaintenance(t *testing.T) {
	db := state.NewMemory()
	dead := map[int]bool{}
	a, b := tables(dead)
	m1 := Hold{Kind: Maintenance, ID: "m1", What: "maintenance enable of h1", Host: "h1"}
	_ = db.Update(func(tx state.Tx) error { return take(a.Take(tx, m1, []Subject{Host("h1"), Cluster("c1")})) })
	dead[1] = true
	err := db.Update(func(tx state.Tx) error {
		return take(b.Take(tx, Hold{Kind: Rolling, ID: "r2"}, []Subject{Cluster("c1")}))
	})
	if !errs.IsRefused(err) || !strings.Contains(err.Error(), "`kvmctl maintenance enable h1` finishes it, `kvmctl maintenance cancel h1` undoes it") {
		t.Fatalf("a run over a dead maintenance hold = %v", err)
	}
	m2 := Hold{Kind: Maintenance, ID: "m2", What: "maintenance cancel of h1", Host: "h1"}
	var replaced []Hold
	if err := db.Update(func(tx state.Tx) (err error) {
		replaced, err = b.Take(tx, m2, []Subject{Host("h1")}, Maintenance)
		return err
	}); err != nil {
		t.Fatalf("maintenance over a dead maintenance hold = %v", err)
	}
	if len(replaced) != 1 || replaced[0].ID != "m1" || replaced[0].Subject != Host("h1") {
		t.Errorf("Take returned %+v, want m1's hold on host h1 as the one it replaced", replaced)
	}
	// Releasing m1 now leaves m2's hold alone.
	_ = db.Update(func(tx state.Tx) error { return Release(tx, m1.Ref()) })
	_ = db.View(func(tx state.Tx) error {
		if h, ok, _ := Get(tx, Host("h1")); !ok || h.ID != "m2" {
			t.Errorf("host/h1 = %+v, %v; want m2's", h, ok)
		}
		if _, ok, _ := Get(tx, Cluster("c1")); ok {
			t.Error("m1's cluster hold was not released")
		}
		return nil
	})
}

// A lock written by kvmctl before holds still holds its cluster, as a dead run's.
func TestLegacyLockHoldsUntilItsRunTakesItOver(t *testing.T) {
	db := state.NewMemory()
	a, b := tables(map[int]bool{})
	_ = db.Update(func(tx state.Tx) error { return tx.Put(state.BucketLocks, "c1", []byte("r0")) })
	err := db.Update(func(tx state.Tx) error {
		return take(a.Take(tx, Hold{Kind: Maintenance, ID: "m1"}, []Subject{Cluster("c1")}))
	})
	if !errs.IsRefused(err) || !strings.Contains(err.Error(), "rolling resume r0") {
		t.Fatalf("Take over a legacy lock = %v", err)
	}
	if err := db.Update(func(tx state.Tx) error { return b.TakeOver(tx, Ref{Kind: Rolling, ID: "r0"}, t0) }); err != nil {
		t.Fatal(err)
	}
	_ = db.View(func(tx state.Tx) error {
		h, ok, _ := Get(tx, Cluster("c1"))
		if !ok || h.Owner != b.Self || !h.Since.Equal(t0) {
			t.Errorf("after TakeOver: %+v", h)
		}
		if _, err := tx.Get(state.BucketLocks, "c1"); !state.IsNotFound(err) {
			t.Error("the legacy lock stayed")
		}
		return nil
	})
}

func TestUnreadableHoldStillHolds(t *testing.T) {
	db := state.NewMemory()
	a, _ := tables(nil)
	_ = db.Update(func(tx state.Tx) error { return tx.Put(Bucket, "host/h1", []byte("{not json")) })
	err := db.View(func(tx state.Tx) error { return a.Check(tx, Ref{}, []Subject{Host("h1")}) })
	if !errs.IsRefused(err) || !strings.Contains(err.Error(), "unreadable hold record") {
		t.Errorf("Check over a damaged hold = %v", err)
	}
}

func TestProcessAlive(t *testing.T) {
	self := SelfOwner()
	if !ProcessAlive(self) {
		t.Error("this process is not alive")
	}
	if ProcessAlive(Owner{PID: self.PID, StartTime: "0", Machine: self.Machine}) {
		t.Error("a reused pid counts as alive")
	}
	if !ProcessAlive(Owner{PID: 1 << 30, Machine: "elsewhere.example"}) {
		t.Error("a process on another machine must count as alive")
	}
}

func take(_ []Hold, err error) error { return err }
