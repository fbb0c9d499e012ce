package journal

import (
	"errors"
	"testing"
	"time"

	"github.com/kvmctl/kvmctl/pkg/clock"
	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/state"
)

func TestAppendWritesChangeAndEventTogetherThenEmits(t *testing.T) {
	db := state.NewMemory()
	clk := clock.NewFake(time.Time{})
	var seen []events.Event
	j := &Journal{DB: db, Clock: clk, Sink: events.SinkFunc(func(e events.Event) error {
		// The event is emitted only after its transaction committed: it can be read back.
		_ = db.View(func(tx state.Tx) error {
			recs, _ := Read(tx, "r1", 0)
			if len(recs) == 0 || recs[len(recs)-1].Event.Type != e.Type {
				t.Errorf("emitted %s before it was written", e.Type)
			}
			return nil
		})
		seen = append(seen, e)
		return nil
	})}
	if err := db.Update(func(tx state.Tx) error { return Open(tx, "r1", Rolling, "c1", state.BucketRuns, clk.Now()) }); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Append("r1", events.Event{Type: events.RunStarted}, func(tx state.Tx) error {
		return tx.Put(state.BucketRuns, "r1", []byte(`{"id":"r1"}`))
	}); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Second)
	boom := errors.New("boom")
	if _, err := j.Append("r1", events.Event{Type: events.ClusterDisabled}, func(tx state.Tx) error {
		_ = tx.Put(state.BucketClusters, "c1", []byte("x"))
		return boom
	}); !errors.Is(err, boom) {
		t.Fatalf("Append with a failing change = %v", err)
	}
	if _, err := j.Append("r1", events.Event{Type: events.RunFinished, RunState: events.RunSucceeded}, nil); err != nil {
		t.Fatal(err)
	}
	if len(seen) != 2 || seen[0].Type != events.RunStarted || seen[1].Type != events.RunFinished {
		t.Fatalf("emitted %+v", seen)
	}
	if seen[1].Stream != "r1" || !seen[1].Time.Equal(clk.Now()) {
		t.Errorf("event written as %+v", seen[1])
	}
	_ = db.View(func(tx state.Tx) error {
		if _, err := tx.Get(state.BucketClusters, "c1"); !state.IsNotFound(err) {
			t.Error("the failed change was kept")
		}
		recs, err := Read(tx, "r1", 0)
		if err != nil || len(recs) != 2 || recs[0].Seq != 1 || recs[1].Seq != 2 {
			t.Errorf("Read = %+v, %v", recs, err)
		}
		after, _ := Read(tx, "r1", 1)
		if len(after) != 1 || after[0].Event.Type != events.RunFinished {
			t.Errorf("Read after 1 = %+v", after)
		}
		s, _ := GetStream(tx, "r1")
		if s.Seq != 2 || s.Kind != Rolling || s.Subject != "c1" {
			t.Errorf("stream = %+v", s)
		}
		return nil
	})
}

// Streams written by kvmctl before the streams bucket go on from their last sequence number.
func TestLegacyStreamContinuesItsSequence(t *testing.T) {
	db := state.NewMemory()
	_ = db.Update(func(tx state.Tx) error {
		for _, k := range []string{"r0/00000001", "r0/00000002", "r0/00000007", "r01/00000099"} {
			if err := tx.Put(state.BucketJournal, k, []byte(`{"type":"host.step"}`)); err != nil {
				return err
			}
		}
		return nil
	})
	j := &Journal{DB: db}
	if _, err := j.Append("r0", events.Event{Type: events.RunResumed}, nil); err != nil {
		t.Fatal(err)
	}
	_ = db.View(func(tx state.Tx) error {
		recs, _ := Read(tx, "r0", 0)
		if len(recs) != 4 || recs[3].Seq != 8 || recs[3].Event.Type != events.RunResumed {
			t.Errorf("records = %+v", recs)
		}
		return nil
	})
}

func TestUnreadableRecordDoesNotHideTheRest(t *testing.T) {
	db := state.NewMemory()
	_ = db.Update(func(tx state.Tx) error {
		_ = tx.Put(state.BucketJournal, Key("r1", 1), []byte(`{"type":"run.started"}`))
		_ = tx.Put(state.BucketJournal, Key("r1", 2), []byte(`{garbage`))
		return tx.Put(state.BucketJournal, Key("r1", 3), []byte(`{"type":"run.finished"}`))
	})
	_ = db.View(func(tx state.Tx) error {
		evs, err := Events(tx, "r1")
		if err != nil || len(evs) != 3 || evs[1].Type != "journal.unreadable" || evs[2].Type != events.RunFinished {
			t.Errorf("Events = %+v, %v", evs, err)
		}
		return nil
	})
}

func TestPruneKeepsOpenStreamsAndTheNewest(t *testing.T) {
	db := state.NewMemory()
	clk := clock.NewFake(time.Time{})
	j := &Journal{DB: db, Clock: clk}
	mk := func(id string, kind Kind, ended bool) {
		_ = db.Update(func(tx state.Tx) error {
			if err := Open(tx, id, kind, "", state.BucketRuns, clk.Now()); err != nil {
				return err
			}
			return tx.Put(state.BucketRuns, id, []byte("{}"))
		})
		_, _ = j.Append(id, events.Event{Type: events.RunStarted}, nil)
		if ended {
			_ = db.Update(func(tx state.Tx) error { return End(tx, id, clk.Now()) })
		}
		clk.Advance(time.Hour)
	}
	mk("old", Rolling, true)    // older than the max age
	mk("open", Rolling, false)  // never dropped
	mk("r1", Rolling, true)     // dropped: two newer ended rolling streams
	mk("r2", Rolling, true)     //
	mk("m1", Maintenance, true) // its own kind's count
	mk("r3", Rolling, true)
	var dropped []string
	err := db.Update(func(tx state.Tx) (err error) {
		dropped, err = Prune(tx, Retention{Keep: 2, MaxAge: 5*time.Hour + time.Minute}, clk.Now())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"old": true, "r1": true}
	if len(dropped) != len(want) || !want[dropped[0]] || !want[dropped[1]] {
		t.Errorf("dropped %v, want old and r1", dropped)
	}
	_ = db.View(func(tx state.Tx) error {
		for id, gone := range map[string]bool{"old": true, "r1": true, "open": false, "r2": false, "m1": false, "r3": false} {
			_, serr := tx.Get(state.BucketStreams, id)
			_, rerr := tx.Get(state.BucketRuns, id)
			evs, _ := Events(tx, id)
			if gone != state.IsNotFound(serr) || gone != state.IsNotFound(rerr) || gone != (len(evs) == 0) {
				t.Errorf("%s: stream %v, record %v, %d events; want gone=%v", id, serr, rerr, len(evs), gone)
			}
		}
		return nil
	})
}
