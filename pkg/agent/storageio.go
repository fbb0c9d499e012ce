package agent

import (
	"fmt"
	"sync"
	"time"

	"github.com/kvmctl/kvmctl/pkg/clock"
)

// maxStorageCalls bounds the goroutines inside storage calls at once, across all requests, hung
// ones included: a call to a hung NFS server cannot be cancelled, so each one that never returns
// keeps its slot, and once all are taken a new call waits for a slot within its own deadline and
// fails, rather than leaving yet another goroutine stuck in the kernel.
const maxStorageCalls = 64

// storageIO runs calls to the shared storage where a hung one cannot block its caller: each in
// a goroutine of its own, at most maxStorageCalls at once, the caller waiting for each no longer
// than its deadline.
type storageIO struct {
	slots chan struct{}
	clock clock.Clock
	// stall is the lab's storage stall flag (lab.storage.stall.file): while it exists every call
	// blocks before it touches the storage, as one to a hung NFS server does.
	stall   string
	stopped chan struct{}
	once    sync.Once
}

func newStorageIO(stallFile string) *storageIO {
	return &storageIO{slots: make(chan struct{}, maxStorageCalls), clock: clock.Real(), stall: stallFile, stopped: make(chan struct{})}
}

// stop ends the lab's stall for the calls it blocks: the agent is going away.
func (s *storageIO) stop() { s.once.Do(func() { close(s.stopped) }) }

// storageCall runs op on s and returns its result, or an error saying that no answer came within
// timeout (counted from the call, waiting for a slot included). op then runs on, or waits for its
// slot no more, and whatever it returns later is dropped.
func storageCall[T any](s *storageIO, timeout time.Duration, op func() (T, error)) (T, error) {
	var zero T
	deadline := s.clock.NewTimer(timeout)
	defer deadline.Stop()
	select {
	case s.slots <- struct{}{}:
	case <-deadline.C():
		return zero, fmt.Errorf("no answer within %s: %d earlier storage calls have not returned yet (is the shared storage hung?)", timeout, cap(s.slots))
	}
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1) // buffered: a call that returns late still ends its goroutine
	go func() {
		defer func() { <-s.slots }()
		if s.stall != "" && stalled(s.stall) {
			if err := waitStall(s.stopped, s.stall); err != nil {
				done <- result{zero, err}
				return
			}
		}
		v, err := op()
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-deadline.C():
		return zero, fmt.Errorf("no answer within %s: the shared storage may be hung", timeout)
	}
}
