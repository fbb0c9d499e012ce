// Package backoff is the one retry delay of kvmctl: exponential, capped, overflow-safe, with
// jitter so that many retries (one per host) do not fall into step.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Delay returns how long to wait before retry number attempt (0 for the first retry): base
// doubled per attempt, capped at max, then reduced by up to a quarter at random. It never
// overflows, whatever attempt is.
func Delay(attempt int, base, max time.Duration) time.Duration {
	if base <= 0 || max <= 0 {
		return 0
	}
	d := base
	for i := 0; i < attempt && d < max; i++ {
		if d > max/2 {
			d = max
			break
		}
		d *= 2
	}
	d = min(d, max)
	if q := int64(d / 4); q > 0 {
		d -= time.Duration(rand.Int64N(q + 1))
	}
	return d
}
