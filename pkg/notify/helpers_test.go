package notify

import (
	"net"
	"testing"
	"time"

	"github.com/kvmctl/kvmctl/pkg/clock"
)

// closedAddr returns a 127.0.0.1 address where nothing listens.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// advanceUntil fires the fake clock's timers, one after the other, until done is closed, and
// returns how long each wait was: the waits between retries, taken in fake time.
func advanceUntil(f *clock.Fake, done <-chan struct{}) []time.Duration {
	var waits []time.Duration
	for {
		select {
		case <-done:
			return waits
		default:
		}
		if at, ok := f.NextDeadline(); ok {
			waits = append(waits, at.Sub(f.Now()))
			f.AdvanceToNext()
			continue
		}
		time.Sleep(time.Millisecond)
	}
}
