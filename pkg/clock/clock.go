// Package clock is where engines take time from. The real clock is the time package; the fake
// one moves only when a test advances it, so that a rule such as "three checks two seconds
// apart" or "a stage may run for 30 minutes" is tested in microseconds, without a sleep.
package clock

import (
	"context"
	"errors"
	"time"
)

// Clock tells the time and waits. Engines hold one and never call time.Now or time.Sleep.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// After returns a channel that receives the time once d has passed.
	After(d time.Duration) <-chan time.Time
	// NewTimer returns a timer that fires once after d.
	NewTimer(d time.Duration) Timer
	// NewTicker returns a ticker that fires every d (d must be positive).
	NewTicker(d time.Duration) Ticker
}

// Timer fires once, like time.Timer.
type Timer interface {
	// C is the channel the timer fires on.
	C() <-chan time.Time
	// Stop prevents the timer from firing; it reports whether it stopped a pending timer.
	Stop() bool
	// Reset makes the timer fire after d from now; it reports whether the timer was pending.
	Reset(d time.Duration) bool
}

// Ticker fires repeatedly, like time.Ticker.
type Ticker interface {
	// C is the channel the ticker fires on.
	C() <-chan time.Time
	// Stop turns the ticker off.
	Stop()
	// Reset changes the period to d, counted from now.
	Reset(d time.Duration)
}

// Real returns the clock of the time package.
func Real() Clock { return realClock{} }

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }
func (realClock) NewTimer(d time.Duration) Timer         { return realTimer{time.NewTimer(d)} }
func (realClock) NewTicker(d time.Duration) Ticker       { return realTicker{time.NewTicker(d)} }

type realTimer struct{ t *time.Timer }

func (t realTimer) C() <-chan time.Time        { return t.t.C }
func (t realTimer) Stop() bool                 { return t.t.Stop() }
func (t realTimer) Reset(d time.Duration) bool { return t.t.Reset(d) }

type realTicker struct{ t *time.Ticker }

func (t realTicker) C() <-chan time.Time   { return t.t.C }
func (t realTicker) Stop()                 { t.t.Stop() }
func (t realTicker) Reset(d time.Duration) { t.t.Reset(d) }

// OrReal returns c, or the real clock when c is nil: the zero value of an engine works.
func OrReal(c Clock) Clock {
	if c == nil {
		return Real()
	}
	return c
}

// Sleep waits d on c, or until ctx ends; it returns ctx's error in that case.
func Sleep(ctx context.Context, c Clock, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := c.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C():
		return nil
	}
}

// WithTimeout is context.WithTimeout on c: the context ends when d has passed on c. On the real
// clock it is context.WithTimeout itself.
func WithTimeout(ctx context.Context, c Clock, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := c.(realClock); ok {
		return context.WithTimeout(ctx, d)
	}
	return WithDeadline(ctx, c, c.Now().Add(d))
}

// WithDeadline is context.WithDeadline on c.
func WithDeadline(ctx context.Context, c Clock, at time.Time) (context.Context, context.CancelFunc) {
	if _, ok := c.(realClock); ok {
		return context.WithDeadline(ctx, at)
	}
	cctx, cancel := context.WithCancelCause(ctx)
	d := at.Sub(c.Now())
	if d <= 0 {
		cancel(context.DeadlineExceeded)
		return &deadlineCtx{cctx, at}, func() { cancel(context.Canceled) }
	}
	t := c.NewTimer(d)
	go func() {
		select {
		case <-t.C():
			cancel(context.DeadlineExceeded)
		case <-cctx.Done():
		}
	}()
	return &deadlineCtx{cctx, at}, func() {
		t.Stop()
		cancel(context.Canceled)
	}
}

// Expired reports whether ctx, or a context it derives from, ended because its deadline passed,
// on whichever clock set it.
func Expired(ctx context.Context) bool {
	return ctx.Err() != nil && errors.Is(context.Cause(ctx), context.DeadlineExceeded)
}

// deadlineCtx reports the deadline of the clock it was made on and says DeadlineExceeded, as a
// context.WithDeadline would, when that clock passed it.
type deadlineCtx struct {
	context.Context
	at time.Time
}

func (c *deadlineCtx) Deadline() (time.Time, bool) { return c.at, true }

func (c *deadlineCtx) Err() error {
	if err := c.Context.Err(); err != nil {
		if errors.Is(context.Cause(c.Context), context.DeadlineExceeded) {
			return context.DeadlineExceeded
		}
		return err
	}
	return nil
}
