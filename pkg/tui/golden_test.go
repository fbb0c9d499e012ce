package tui

import (
	"bytes"
	"io"
	"testing"
	"time"

	"github.com/charmbracelet/x/exp/teatest"

	"github.com/kvmctl/kvmctl/pkg/events"
)

// TestRollingGolden is the whole terminal output of a run seen mid-way, then detached from.
// The events go through Update before the program starts and the clock is fixed, so the view
// never changes while the program runs: the output is one frame whatever the timing.
// Regenerate with: go test ./pkg/tui -run Golden -update
func TestRollingGolden(t *testing.T) {
	c := &fakeClock{}
	m := newTestModel(c, RollingOptions{}) // the default tick runs; with a fixed clock it redraws nothing new
	c.set(150 * time.Second)
	feedEvents(t, m, script())

	tm := teatest.NewTestModel(t, m, teatest.WithInitialTermSize(100, 30))
	tm.Type("q")
	out, err := io.ReadAll(tm.FinalOutput(t, teatest.WithFinalTimeout(5*time.Second)))
	if err != nil {
		t.Fatal(err)
	}
	if !tm.FinalModel(t).(*RollingModel).Detached() {
		t.Error("q did not detach")
	}
	teatest.RequireEqualOutput(t, out)
}

// TestRollingGoldenFinished feeds a finished run through the event channel and the program,
// as Run does, and checks the final view (the frames on the way depend on timing, the last
// one does not).
func TestRollingGoldenFinished(t *testing.T) {
	c := &fakeClock{}
	m := newTestModel(c, RollingOptions{})
	c.set(10 * time.Minute) // past run.finished: the clock must not show
	ch := make(chan events.Event, 64)
	for _, e := range script() {
		ch <- events.Event(e)
	}
	ch <- events.Event{Time: t0.Add(130 * time.Second), Type: events.HostStageFinished, Host: "h3", Cluster: "c2", Stage: "Maintenance",
		Outcome: "failed", ExitCode: events.Int(2), LastLine: "grub-install: error: disk not found"}
	ch <- events.Event{Time: t0.Add(131 * time.Second), Type: events.RunFinished, RunID: "r1", RunState: "failed",
		Message: "h3: Maintenance failed (exit 2): grub-install: error: disk not found"}
	m.Listen(ch)

	tm := teatest.NewTestModel(t, m, teatest.WithInitialTermSize(100, 30))
	teatest.WaitFor(t, tm.Output(), func(b []byte) bool { return bytes.Contains(b, []byte("any key")) },
		teatest.WithDuration(5*time.Second), teatest.WithCheckInterval(10*time.Millisecond))
	tm.Type("q") // after the run, any key exits: not a detach
	fm := tm.FinalModel(t, teatest.WithFinalTimeout(5*time.Second)).(*RollingModel)
	if fm.Detached() {
		t.Error("a key after run.finished counted as a detach")
	}
	teatest.RequireEqualOutput(t, []byte(fm.View()))
}
