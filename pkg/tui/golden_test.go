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

// TestRollingProgramWritesNoHostEscapes runs the live view as a program (teatest) over events
// whose host text carries escape sequences, and checks the bytes it writes to the terminal: the
// view's own styling is there, the host's title, clipboard and clear-screen sequences are not.
func TestRollingProgramWritesNoHostEscapes(t *testing.T) {
	c := &fakeClock{}
	m := newTestModel(c, RollingOptions{})
	ch := make(chan events.Event, 8)
	hostile := "\x1b]0;pwned\x07\x1b]52;c;ZWNobyBoaQ==\x07\x1b[2J\x1b[3J\rFAKE\u009b2J"
	ch <- events.Event{Time: t0, Type: events.HostStageFinished, Host: "h1", Cluster: "c1", Stage: events.PreFlight,
		Outcome: events.OutcomeFailed, ExitCode: events.Int(1), LastLine: hostile, Note: hostile}
	ch <- events.Event{Time: t0, Type: events.RunFinished, RunID: "r1", RunState: events.RunFailed, Message: "PreFlight failed: " + hostile}
	m.Listen(ch)
	tm := teatest.NewTestModel(t, m, teatest.WithInitialTermSize(120, 30))
	var seen []byte
	teatest.WaitFor(t, tm.Output(), func(b []byte) bool {
		seen = append(seen[:0], b...)
		return bytes.Contains(b, []byte("any key"))
	}, teatest.WithDuration(5*time.Second), teatest.WithCheckInterval(10*time.Millisecond))
	tm.Type("q")
	rest, err := io.ReadAll(tm.FinalOutput(t, teatest.WithFinalTimeout(5*time.Second)))
	if err != nil {
		t.Fatal(err)
	}
	out := append(seen, rest...)
	for _, seq := range []string{"\x1b]0;", "\x1b]52;", "\x1b[3J", "\u009b", "\rFAKE"} {
		if bytes.Contains(out, []byte(seq)) {
			t.Errorf("the program wrote the host's %q to the terminal", seq)
		}
	}
	if !bytes.Contains(out, []byte(`\u001b]0;pwned`)) {
		t.Errorf("the host's text is not shown escaped:\n%q", out)
	}
}
