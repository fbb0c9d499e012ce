package hooks

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/kvmctl/kvmctl/pkg/events"
)

// BenchmarkNoopStage is Start+Wait of a script that exits 0, through the service executor
// (detached stage-exec).
func BenchmarkNoopStage(b *testing.B) {
	f := newFixture(b)
	f.script(b, "PreFlight", "exit 0")
	e := f.executor(b, kinds[0])
	ctx := context.Background()
	i := 0
	for b.Loop() {
		id, err := e.Start(ctx, req(fmt.Sprintf("b%d", i), events.PreFlight))
		if err != nil {
			b.Fatal(err)
		}
		if st, err := e.Wait(ctx, id); err != nil || st.Outcome != events.OutcomeSucceeded {
			b.Fatal(st, err)
		}
		i++
	}
}

// BenchmarkExitToWait reports how long Wait takes to return after the script's last act
// (a timestamp written just before it exits), for the executor that started stage-exec (woken
// by the child's exit) and for one that did not (polling the record, as after an agent restart).
func BenchmarkExitToWait(b *testing.B) {
	for _, waiterIsStarter := range []bool{true, false} {
		name := "child-exit"
		if !waiterIsStarter {
			name = "record-poll"
		}
		b.Run(name, func(b *testing.B) {
			f := newFixture(b)
			f.script(b, "PreFlight", tsScript)
			e := f.executor(b, kinds[0])
			waiter := e
			if !waiterIsStarter {
				waiter = f.executor(b, kinds[0])
			}
			var total time.Duration
			i := 0
			for b.Loop() {
				total += exitToWait(b, f, e, waiter, fmt.Sprintf("%s-%d", name, i))
				i++
			}
			b.ReportMetric(float64(total.Microseconds())/float64(i), "µs-exit-to-wait/op")
		})
	}
}
