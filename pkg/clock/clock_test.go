package clock

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestFakeFiresTimersInOrderAsItPassesThem(t *testing.T) {
	f := NewFake(time.Time{})
	start := f.Now()
	late := f.NewTimer(3 * time.Second)
	early := f.After(time.Second)
	stopped := f.NewTimer(2 * time.Second)
	if !stopped.Stop() || stopped.Stop() {
		t.Fatal("Stop of a pending timer must report true once")
	}
	f.Advance(999 * time.Millisecond)
	select {
	case <-early:
		t.Fatal("fired before its time")
	default:
	}
	f.Advance(time.Millisecond)
	if got := <-early; !got.Equal(start.Add(time.Second)) {
		t.Errorf("After fired with %v, want %v", got, start.Add(time.Second))
	}
	f.Advance(10 * time.Second)
	if got := <-late.C(); !got.Equal(start.Add(3 * time.Second)) {
		t.Errorf("timer fired with %v, want its own deadline", got)
	}
	select {
	case <-stopped.C():
		t.Error("a stopped timer fired")
	default:
	}
	if !f.Now().Equal(start.Add(11 * time.Second)) {
		t.Errorf("Now = %v after advancing 11s", f.Now())
	}
	if f.Waiters() != 0 {
		t.Errorf("%d waiters left", f.Waiters())
	}
}

func TestFakeTickerAndReset(t *testing.T) {
	f := NewFake(time.Time{})
	k := f.NewTicker(2 * time.Second)
	for i := 0; i < 3; i++ {
		f.Advance(2 * time.Second)
		<-k.C()
	}
	k.Reset(5 * time.Second)
	f.Advance(4 * time.Second)
	select {
	case <-k.C():
		t.Fatal("reset ticker fired early")
	default:
	}
	f.Advance(time.Second)
	<-k.C()
	k.Stop()
	if f.Waiters() != 0 {
		t.Errorf("a stopped ticker is still pending")
	}
	tm := f.NewTimer(time.Second)
	if tm.Reset(3*time.Second) != true {
		t.Error("Reset of a pending timer must report true")
	}
	f.Advance(2 * time.Second)
	select {
	case <-tm.C():
		t.Fatal("fired at its old deadline")
	default:
	}
	f.Advance(time.Second)
	<-tm.C()
}

func TestBlockUntilWaitsForTheCodeUnderTest(t *testing.T) {
	f := NewFake(time.Time{})
	done := make(chan error)
	go func() { done <- Sleep(context.Background(), f, time.Minute) }()
	f.BlockUntil(1)
	f.Advance(time.Minute)
	if err := <-done; err != nil {
		t.Fatalf("Sleep = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { done <- Sleep(ctx, f, time.Hour) }()
	f.BlockUntil(1)
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Sleep after cancel = %v", err)
	}
}

func TestWithTimeoutOnTheFakeClock(t *testing.T) {
	f := NewFake(time.Time{})
	ctx, cancel := WithTimeout(context.Background(), f, 30*time.Minute)
	defer cancel()
	child, ccancel := context.WithCancel(ctx)
	defer ccancel()
	if dl, ok := ctx.Deadline(); !ok || !dl.Equal(f.Now().Add(30*time.Minute)) {
		t.Errorf("Deadline = %v, %v", dl, ok)
	}
	f.Advance(29 * time.Minute)
	if ctx.Err() != nil || Expired(ctx) {
		t.Fatal("ended early")
	}
	f.Advance(time.Minute)
	<-child.Done()
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) || !Expired(ctx) || !Expired(child) {
		t.Errorf("Err = %v, Expired = %v, child Expired = %v", ctx.Err(), Expired(ctx), Expired(child))
	}

	// Cancelled, not expired.
	ctx2, cancel2 := WithTimeout(context.Background(), f, time.Hour)
	cancel2()
	if !errors.Is(ctx2.Err(), context.Canceled) || Expired(ctx2) {
		t.Errorf("cancelled: Err = %v, Expired = %v", ctx2.Err(), Expired(ctx2))
	}
	// A deadline already passed ends at once.
	ctx3, cancel3 := WithDeadline(context.Background(), f, f.Now().Add(-time.Second))
	defer cancel3()
	if !Expired(ctx3) {
		t.Error("a past deadline did not expire the context")
	}
	if f.Waiters() != 0 {
		t.Errorf("%d timers left behind", f.Waiters())
	}
}

func TestRealClockIsTheTimePackage(t *testing.T) {
	c := OrReal(nil)
	if d := time.Since(c.Now()); d < 0 || d > time.Minute {
		t.Errorf("real Now is %v away", d)
	}
	ctx, cancel := WithTimeout(context.Background(), c, time.Nanosecond)
	defer cancel()
	<-ctx.Done()
	if !Expired(ctx) || !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Errorf("real WithTimeout: %v", ctx.Err())
	}
}
