package clock

import (
	"sort"
	"sync"
	"time"
)

// Fake is a clock that moves only when Advance (or Set) is called. Timers, tickers and After
// fire, in time order, as the clock passes them. BlockUntil lets a test wait until the code under
// test is waiting on the clock, so that the test advances it at the right moment.
type Fake struct {
	mu      sync.Mutex
	now     time.Time
	waiters []*fakeTimer
	changed chan struct{} // closed and replaced whenever the set of waiters changes
}

// NewFake returns a fake clock set to start (a fixed date when start is zero).
func NewFake(start time.Time) *Fake {
	if start.IsZero() {
		start = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	}
	return &Fake{now: start, changed: make(chan struct{})}
}

var _ Clock = (*Fake)(nil)

// Now returns the fake time.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// After returns a channel that receives the time once the clock has advanced by d.
func (f *Fake) After(d time.Duration) <-chan time.Time { return f.NewTimer(d).C() }

// NewTimer returns a timer that fires once the clock has advanced by d.
func (f *Fake) NewTimer(d time.Duration) Timer {
	t := &fakeTimer{f: f, c: make(chan time.Time, 1)}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.schedule(t, d)
	return t
}

// NewTicker returns a ticker that fires every d of fake time.
func (f *Fake) NewTicker(d time.Duration) Ticker {
	if d <= 0 {
		panic("clock: non-positive interval for NewTicker")
	}
	t := &fakeTimer{f: f, c: make(chan time.Time, 1), period: d}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.schedule(t, d)
	return fakeTicker{t}
}

// Advance moves the clock forward by d, firing every timer it passes, in time order.
func (f *Fake) Advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.advanceTo(f.now.Add(d))
}

// Set moves the clock to t (never backwards), firing every timer it passes.
func (f *Fake) Set(t time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if t.After(f.now) {
		f.advanceTo(t)
	}
}

// Waiters returns how many timers, tickers and Afters are pending.
func (f *Fake) Waiters() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.waiters)
}

// BlockUntil returns once at least n timers, tickers or Afters are pending: the code under test
// is waiting on the clock. It waits for real, so call it with the engine running.
func (f *Fake) BlockUntil(n int) {
	for {
		f.mu.Lock()
		if len(f.waiters) >= n {
			f.mu.Unlock()
			return
		}
		ch := f.changed
		f.mu.Unlock()
		<-ch
	}
}

// NextDeadline returns when the earliest pending timer fires, and false when none is pending.
func (f *Fake) NextDeadline() (time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.waiters) == 0 {
		return time.Time{}, false
	}
	return f.waiters[0].at, true
}

// AdvanceToNext moves the clock to the earliest pending timer and fires it; it reports false,
// and does nothing, when no timer is pending.
func (f *Fake) AdvanceToNext() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.waiters) == 0 {
		return false
	}
	f.advanceTo(f.waiters[0].at)
	return true
}

func (f *Fake) advanceTo(end time.Time) {
	for len(f.waiters) > 0 && !f.waiters[0].at.After(end) {
		t := f.waiters[0]
		f.waiters = f.waiters[1:]
		f.now = t.at
		select {
		case t.c <- t.at:
		default: // a ticker nobody reads drops ticks, as time.Ticker does
		}
		if t.period > 0 {
			f.insert(t, t.at.Add(t.period))
		}
	}
	f.now = end
	f.notify()
}

// schedule (re)arms t to fire d from now; f.mu is held.
func (f *Fake) schedule(t *fakeTimer, d time.Duration) {
	if d <= 0 {
		select {
		case t.c <- f.now:
		default:
		}
		f.notify()
		return
	}
	f.insert(t, f.now.Add(d))
	f.notify()
}

func (f *Fake) insert(t *fakeTimer, at time.Time) {
	t.at = at
	i := sort.Search(len(f.waiters), func(i int) bool { return f.waiters[i].at.After(at) })
	f.waiters = append(f.waiters, nil)
	copy(f.waiters[i+1:], f.waiters[i:])
	f.waiters[i] = t
}

// remove unschedules t and reports whether it was pending; f.mu is held.
func (f *Fake) remove(t *fakeTimer) bool {
	for i, w := range f.waiters {
		if w == t {
			f.waiters = append(f.waiters[:i], f.waiters[i+1:]...)
			f.notify()
			return true
		}
	}
	return false
}

func (f *Fake) notify() {
	close(f.changed)
	f.changed = make(chan struct{})
}

type fakeTimer struct {
	f      *Fake
	c      chan time.Time
	at     time.Time
	period time.Duration
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }

func (t *fakeTimer) Stop() bool {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	return t.f.remove(t)
}

func (t *fakeTimer) Reset(d time.Duration) bool {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	was := t.f.remove(t)
	t.f.schedule(t, d)
	return was
}

type fakeTicker struct{ t *fakeTimer }

func (k fakeTicker) C() <-chan time.Time { return k.t.c }
func (k fakeTicker) Stop()               { k.t.Stop() }

func (k fakeTicker) Reset(d time.Duration) {
	if d <= 0 {
		panic("clock: non-positive interval for Ticker.Reset")
	}
	k.t.f.mu.Lock()
	defer k.t.f.mu.Unlock()
	k.t.f.remove(k.t)
	k.t.period = d
	k.t.f.schedule(k.t, d)
}
