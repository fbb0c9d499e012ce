package backoff

import (
	"math"
	"testing"
	"time"
)

func TestDelay(t *testing.T) {
	base, max := 100*time.Millisecond, 2*time.Second
	for attempt, want := range map[int]time.Duration{0: base, 1: 2 * base, 3: 8 * base, 10: max, math.MaxInt: max} {
		for i := 0; i < 50; i++ {
			d := Delay(attempt, base, max)
			if d > want || d < want*3/4 {
				t.Fatalf("Delay(%d) = %s, want within [%s, %s]", attempt, d, want*3/4, want)
			}
		}
	}
	if Delay(5, 0, max) != 0 || Delay(5, base, 0) != 0 {
		t.Errorf("a zero base or max must mean no wait")
	}
}
