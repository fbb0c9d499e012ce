package tui

import (
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/charmbracelet/x/ansi"
	"github.com/muesli/termenv"

	"github.com/kvmctl/kvmctl/pkg/events"
)

func TestMain(m *testing.M) {
	// Goldens and substrings must not depend on the terminal the tests run in.
	lipgloss.SetColorProfile(termenv.Ascii)
	os.Exit(m.Run())
}

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// fakeClock is the injected Now: tests move it, nothing reads the wall clock.
type fakeClock struct{ t time.Time }

func (c *fakeClock) Now() time.Time                { return c.t }
func (c *fakeClock) set(d time.Duration) time.Time { c.t = t0.Add(d); return c.t }

func asciiRenderer() *lipgloss.Renderer {
	r := lipgloss.NewRenderer(io.Discard)
	r.SetColorProfile(termenv.Ascii)
	return r
}

var fleet = []HostRow{{"h1", "c1"}, {"h2", "c1"}, {"h3", "c2"}}

func newTestModel(c *fakeClock, opts RollingOptions) *RollingModel {
	opts.Now = c.Now
	opts.Renderer = asciiRenderer()
	m := NewRolling("r1", fleet, opts)
	m.SetSize(100, 30)
	return m
}

// at is an event at t0+d.
func at(d time.Duration, e events.Event) EventMsg {
	e.Time = t0.Add(d)
	return EventMsg(e)
}

func stageEvents(d time.Duration, host, cluster string, stage events.Stage, outcome events.Outcome, took time.Duration, finished events.Event) []EventMsg {
	finished.Type, finished.Host, finished.Cluster, finished.Stage, finished.Outcome = events.HostStageFinished, host, cluster, stage, outcome
	return []EventMsg{
		at(d, events.Event{Type: events.HostStageStarted, Host: host, Cluster: cluster, Stage: stage}),
		at(d, events.Event{Type: events.HostStageRunning, Host: host, Cluster: cluster, Stage: stage, ExecID: "x"}),
		at(d+took, finished),
	}
}

// script is a run: h1 goes through every stage and moves two VMs, h2 needs no maintenance,
// h3 is in its Maintenance stage when the script ends.
func script() []EventMsg {
	var s []EventMsg
	add := func(ms ...EventMsg) { s = append(s, ms...) }
	add(at(0, events.Event{Type: events.RunStarted, RunID: "r1", HostCount: 3, ClusterCount: 2}))
	add(stageEvents(time.Second, "h1", "c1", "PreFlight", "succeeded", 2*time.Second, events.Event{ExitCode: events.Int(0)})...)
	add(stageEvents(3*time.Second, "h2", "c1", "PreFlight", "skipped", time.Second, events.Event{ExitCode: events.Int(70), LastLine: "kernel is current"})...)
	add(at(4*time.Second, events.Event{Type: events.HostSkipped, Host: "h2", Cluster: "c1", Message: "no maintenance needed (PreFlight exit 70)"}))
	add(stageEvents(4*time.Second, "h3", "c2", "PreFlight", "succeeded", time.Second, events.Event{ExitCode: events.Int(0), Note: "no script"})...)
	add(at(5*time.Second, events.Event{Type: events.RunPreFlightDone, Message: "2 hosts to maintain"}))
	add(at(6*time.Second, events.Event{Type: events.ClusterDisabling, Cluster: "c1", Message: "was Enabled"}))
	add(at(6*time.Second, events.Event{Type: events.ClusterDisabled, Cluster: "c1"}))
	add(at(6*time.Second, events.Event{Type: events.HostStarted, Host: "h1", Cluster: "c1"}))
	add(stageEvents(7*time.Second, "h1", "c1", "PreMaintenance", "succeeded", 3*time.Second, events.Event{ExitCode: events.Int(0), LastLine: "drained"})...)
	add(at(10*time.Second, events.Event{Type: events.HostMaintenancePlan, Cluster: "c1", Hosts: []string{"h1"}, VMs: 2, Unplaced: 0}))
	add(at(10*time.Second, events.Event{Type: events.HostStep, Host: "h1", Cluster: "c1", Step: events.StepPrepared}))
	add(at(11*time.Second, events.Event{Type: events.VMMigrating, Host: "h1", Cluster: "c1", VM: "vm1", To: "h2"}))
	add(at(12*time.Second, events.Event{Type: events.VMMigrated, Host: "h1", Cluster: "c1", VM: "vm1", To: "h2", DurationMS: 1200}))
	add(at(13*time.Second, events.Event{Type: events.VMMigrated, Host: "h1", Cluster: "c1", VM: "vm2", To: "h2", DurationMS: 900}))
	add(at(13*time.Second, events.Event{Type: events.HostMaintenanceIn, Host: "h1", Cluster: "c1", VMs: 2}))
	add(stageEvents(14*time.Second, "h1", "c1", "Maintenance", "succeeded", 95*time.Second, events.Event{ExitCode: events.Int(0), LastLine: "rebooted into 6.12.9"})...)
	add(at(110*time.Second, events.Event{Type: events.HostMaintenanceCancel, Host: "h1", Cluster: "c1"}))
	add(stageEvents(111*time.Second, "h1", "c1", "PostMaintenance", "succeeded", 4*time.Second, events.Event{ExitCode: events.Int(0), LastLine: "all checks passed"})...)
	add(at(115*time.Second, events.Event{Type: events.HostDone, Host: "h1", Cluster: "c1"}))
	add(at(116*time.Second, events.Event{Type: events.ClusterEnabled, Cluster: "c1", Message: "restored to Enabled"}))
	add(at(116*time.Second, events.Event{Type: events.ClusterDone, Cluster: "c1"}))
	add(at(117*time.Second, events.Event{Type: events.ClusterDisabling, Cluster: "c2", Message: "was Enabled"}))
	add(at(117*time.Second, events.Event{Type: events.ClusterDisabled, Cluster: "c2"}))
	add(at(117*time.Second, events.Event{Type: events.HostStarted, Host: "h3", Cluster: "c2"}))
	add(stageEvents(118*time.Second, "h3", "c2", "PreMaintenance", "succeeded", time.Second, events.Event{ExitCode: events.Int(0)})...)
	add(at(119*time.Second, events.Event{Type: events.HostMaintenanceIn, Host: "h3", Cluster: "c2", VMs: 0}))
	add(at(120*time.Second, events.Event{Type: events.HostStageStarted, Host: "h3", Cluster: "c2", Stage: "Maintenance"}))
	return s
}

func feed(t *testing.T, m *RollingModel, msgs ...tea.Msg) {
	t.Helper()
	for _, msg := range msgs {
		if _, cmd := m.Update(msg); isQuit(cmd) {
			t.Fatalf("%#v quit the view", msg)
		}
	}
}

func feedEvents(t *testing.T, m *RollingModel, evs []EventMsg) {
	t.Helper()
	for _, e := range evs {
		feed(t, m, e)
	}
}

// isQuit runs cmd (never one that blocks: tests give the model no event channel) and reports
// whether it asks the program to quit.
func isQuit(cmd tea.Cmd) bool {
	if cmd == nil {
		return false
	}
	switch msg := cmd().(type) {
	case tea.QuitMsg:
		return true
	case tea.BatchMsg:
		for _, c := range msg {
			if isQuit(c) {
				return true
			}
		}
	}
	return false
}

func requireContains(t *testing.T, view string, subs ...string) {
	t.Helper()
	for _, s := range subs {
		if !strings.Contains(view, s) {
			t.Errorf("view lacks %q:\n%s", s, view)
		}
	}
}

func press(s string) tea.KeyMsg {
	if s == "ctrl+c" {
		return tea.KeyMsg{Type: tea.KeyCtrlC}
	}
	return tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune(s)}
}

func TestRollingBeforeAnyEvent(t *testing.T) {
	m := newTestModel(&fakeClock{t: t0}, RollingOptions{Tick: -1})
	view := m.View()
	requireContains(t, view, "rolling r1 · waiting · - · 0 done · 0 skipped · 3 remaining",
		"cluster c1", "cluster c2", "h1", "h2", "h3",
		"PreFlight", "PreMaintenance", "Maintenance", "PostMaintenance", "waiting",
		"q detach", "kvmctl rolling resume r1")
	// Unsized (a pipe never reports a size) it still draws, at the default width.
	bare := NewRolling("r1", nil, RollingOptions{Renderer: asciiRenderer()})
	requireContains(t, bare.View(), "rolling r1 · waiting", "0 remaining")
}

func TestRollingFollowsStages(t *testing.T) {
	c := &fakeClock{}
	m := newTestModel(c, RollingOptions{Tick: -1})
	c.set(150 * time.Second)
	feedEvents(t, m, script())

	h1, ok := m.Host("h1")
	if !ok {
		t.Fatal("no h1")
	}
	for _, s := range h1.Stages {
		if s.State != StageOK {
			t.Errorf("h1 %s = %v, want ok", s.Name, s.State)
		}
	}
	if h1.Phase != "done" || h1.VMsMoved != 2 || h1.LastLine != "all checks passed" {
		t.Errorf("h1 = %+v", h1)
	}
	if got := h1.Stages[2].Ended.Sub(h1.Stages[2].Started); got != 95*time.Second {
		t.Errorf("h1 Maintenance took %v, want 95s", got)
	}
	h2, _ := m.Host("h2")
	if h2.Stages[0].State != StageSkipped || h2.Stages[0].ExitCode != 70 || h2.Phase != "skipped: no maintenance needed (PreFlight exit 70)" {
		t.Errorf("h2 = %+v", h2)
	}
	h3, _ := m.Host("h3")
	if h3.Stages[2].State != StageRunning || h3.Phase != "running Maintenance" {
		t.Errorf("h3 = %+v", h3)
	}
	if got := m.ClusterState("c1"); got != "enabled: restored to Enabled" {
		t.Errorf("c1 = %q", got)
	}
	if got := m.ClusterState("c2"); got != "disabled" {
		t.Errorf("c2 = %q", got)
	}

	view := m.View()
	requireContains(t, view,
		"rolling r1 · running · 2m30s · 1 done · 1 skipped · 1 remaining",
		"PreFlight done: 2 hosts to maintain",
		"cluster c1  enabled: restored to Enabled", "cluster c2  disabled",
		"h1", "ok 2s", "ok 1m35s", "2 VMs", "done", "└ all checks passed",
		"skipped(70) 1s", "skipped: no maintenance needed (PreFlight exit 70)",
		"running Maintenance", "30s") // h3's Maintenance, live from its start at 2m00s
	if strings.Contains(view, "kernel is current") {
		t.Error("a skipped host shows its reason, not its last line")
	}

	// Elapsed times are live: move the clock and the running stage follows.
	c.set(200 * time.Second)
	if _, cmd := m.Update(TickMsg(c.t)); cmd != nil {
		t.Error("a disabled tick must not re-arm")
	}
	requireContains(t, m.View(), "3m20s", "1m20s")

	feed(t, m,
		at(210*time.Second, events.Event{Type: events.HostStageFinished, Host: "h3", Cluster: "c2", Stage: "Maintenance", Outcome: "succeeded", ExitCode: events.Int(0)}),
		at(211*time.Second, events.Event{Type: events.HostDone, Host: "h3", Cluster: "c2"}),
	)
	_, cmd := m.Update(at(212*time.Second, events.Event{Type: events.RunFinished, RunID: "r1", RunState: "succeeded", Message: "2 hosts updated, 1 skipped"}))
	if isQuit(cmd) {
		t.Error("without ExitOnFinish the view waits for a key")
	}
	done, state, details := m.Finished()
	if !done || state != "succeeded" || details != "2 hosts updated, 1 skipped" {
		t.Errorf("Finished() = %v %q %q", done, state, details)
	}
	c.set(400 * time.Second) // the run is over: its clock stops at run.finished
	requireContains(t, m.View(), "rolling r1 · succeeded · 3m32s · 2 done · 1 skipped · 0 remaining",
		"run succeeded: 2 hosts updated, 1 skipped", "any key exit")

	_, cmd = m.Update(press("x"))
	if !isQuit(cmd) || m.Detached() {
		t.Errorf("a key after the run: quit=%v detached=%v, want true false", isQuit(cmd), m.Detached())
	}
}

func TestRollingStageOutcomes(t *testing.T) {
	c := &fakeClock{}
	m := newTestModel(c, RollingOptions{Tick: -1})
	c.set(time.Hour)
	feedEvents(t, m, stageEvents(0, "h1", "c1", "PreFlight", "failed", 5*time.Second, events.Event{ExitCode: events.Int(3), LastLine: "disk full"}))
	feedEvents(t, m, stageEvents(0, "h2", "c1", "PreFlight", "timed_out", 30*time.Minute, events.Event{ExitCode: events.Int(-1), Note: "no result from the agent within the stage timeout (30m0s)"}))
	feedEvents(t, m, stageEvents(0, "h3", "c2", "PreFlight", "terminated", 7*time.Second, events.Event{ExitCode: events.Int(143)}))
	// Read back from the journal, numbers are float64.
	feed(t, m, at(time.Minute, events.Event{Type: events.VMMigrationFailed, Host: "h3", Cluster: "c2", VM: "vm9", Message: "no route", To: "h1"}),
		at(time.Minute, events.Event{Type: events.HostMaintenanceIn, Host: "h3", Cluster: "c2", VMs: 4}))

	for name, want := range map[string]StageState{"h1": StageFailed, "h2": StageTimedOut, "h3": StageTerminated} {
		if h, _ := m.Host(name); h.Stages[0].State != want {
			t.Errorf("%s PreFlight = %v, want %v", name, h.Stages[0].State, want)
		}
	}
	requireContains(t, m.View(), "failed(3) 5s", "PreFlight failed", "└ disk full",
		"timed out 30m00s", "└ no result from the agent", "killed 7s", "4/5")
}

func TestRollingDetach(t *testing.T) {
	for _, k := range []string{"q", "ctrl+c"} {
		t.Run(k, func(t *testing.T) {
			m := newTestModel(&fakeClock{t: t0}, RollingOptions{Tick: -1})
			feedEvents(t, m, script()[:4])
			if _, cmd := m.Update(press("x")); cmd != nil {
				t.Error("an unbound key during the run does something")
			}
			_, cmd := m.Update(press(k))
			if !isQuit(cmd) {
				t.Errorf("%s: no tea.Quit", k)
			}
			if !m.Detached() {
				t.Errorf("%s: Detached() = false", k)
			}
		})
	}
}

func TestRollingExitOnFinish(t *testing.T) {
	m := newTestModel(&fakeClock{t: t0}, RollingOptions{Tick: -1, ExitOnFinish: true})
	_, cmd := m.Update(at(time.Second, events.Event{Type: events.RunFinished, RunState: "failed", Message: "PreFlight failed, no action taken: h1: PreFlight failed (exit 3)"}))
	if !isQuit(cmd) || m.Detached() {
		t.Errorf("quit=%v detached=%v, want true false", isQuit(cmd), m.Detached())
	}
	requireContains(t, m.View(), "run failed: PreFlight failed, no action taken")
}

func TestRollingStreamEndsEarly(t *testing.T) {
	m := newTestModel(&fakeClock{t: t0}, RollingOptions{Tick: -1})
	_, cmd := m.Update(ChannelClosedMsg{})
	if !isQuit(cmd) || m.Detached() {
		t.Errorf("quit=%v detached=%v, want true false", isQuit(cmd), m.Detached())
	}
	requireContains(t, m.View(), "event stream ended before the run finished")

	// After run.finished, the end of the stream leaves the summary up until a key.
	m = newTestModel(&fakeClock{t: t0}, RollingOptions{Tick: -1})
	feed(t, m, at(0, events.Event{Type: events.RunFinished, RunState: "aborted", Message: "aborted"}))
	if _, cmd := m.Update(ChannelClosedMsg{}); cmd != nil {
		t.Error("closed stream after run.finished quit without a key")
	}
}

func TestRollingWaitsForEachEvent(t *testing.T) {
	ch := make(chan events.Event, 2)
	m := newTestModel(&fakeClock{t: t0}, RollingOptions{Tick: -1})
	m.Listen(ch)
	ch <- events.Event{Type: events.HostStageStarted, Host: "h1", Cluster: "c1", Stage: "PreFlight", Time: t0}
	ch <- events.Event{Type: events.HostSkipped, Host: "h2", Cluster: "c1", Message: "maintenance not needed", Time: t0}
	close(ch)

	cmd := m.Init()
	var got []tea.Msg
	for cmd != nil {
		msg := cmd()
		got = append(got, msg)
		_, cmd = m.Update(msg)
		if _, ok := msg.(ChannelClosedMsg); ok {
			break
		}
	}
	if len(got) != 3 {
		t.Fatalf("messages = %#v, want 2 events and the end", got)
	}
	if _, ok := got[0].(EventMsg); !ok {
		t.Errorf("first message %T, want EventMsg", got[0])
	}
	if !isQuit(cmd) {
		t.Error("the end of the stream before run.finished did not quit")
	}
	if h, _ := m.Host("h2"); h.Phase != "skipped: maintenance not needed" {
		t.Errorf("h2 phase %q", h.Phase)
	}
	if WaitForEvent(nil) != nil {
		t.Error("WaitForEvent(nil) must be nil")
	}
}

func TestRollingTick(t *testing.T) {
	m := newTestModel(&fakeClock{t: t0}, RollingOptions{Tick: time.Millisecond})
	if cmd := m.Init(); cmd == nil {
		t.Fatal("Init without a tick")
	}
	_, cmd := m.Update(TickMsg(t0))
	if cmd == nil {
		t.Fatal("the tick does not re-arm")
	}
	if _, ok := cmd().(TickMsg); !ok {
		t.Error("tick command gives no TickMsg")
	}
	feed(t, m, at(0, events.Event{Type: events.RunFinished, RunState: "succeeded"}))
	if _, cmd := m.Update(TickMsg(t0)); cmd != nil {
		t.Error("ticking on after the run finished")
	}
}

func TestRollingUnknownHostGetsARow(t *testing.T) {
	m := newTestModel(&fakeClock{t: t0}, RollingOptions{Tick: -1})
	feed(t, m, at(0, events.Event{Type: events.VMMigrated, Host: "h9", Cluster: "c9", VM: "vm1", To: "h1"}))
	requireContains(t, m.View(), "cluster c9", "h9", "1 VM", "└ moved vm1 to h1")
}

func TestRollingNarrowAndShort(t *testing.T) {
	var many []HostRow
	for i := range 40 {
		many = append(many, HostRow{Name: fmt.Sprintf("n%02d-compute-node-with-a-long-name", i), Cluster: fmt.Sprintf("c%d", i/10)})
	}
	c := &fakeClock{}
	m := NewRolling("r20260301-120000-abcdef", many, RollingOptions{Now: c.Now, Tick: -1, Renderer: asciiRenderer()})
	c.set(time.Minute)
	// Host 25 is the one working: the window keeps it in view.
	feed(t, m, at(0, events.Event{Type: events.HostStageStarted, Host: many[25].Name, Cluster: many[25].Cluster, Stage: "Maintenance"}))
	for i := range 25 {
		feed(t, m, at(0, events.Event{Type: events.HostDone, Host: many[i].Name, Cluster: many[i].Cluster}))
	}
	for _, size := range [][2]int{{100, 30}, {60, 20}, {40, 12}, {20, 5}, {8, 3}, {1, 1}} {
		m.SetSize(size[0], size[1])
		view := m.View()
		lines := strings.Split(view, "\n")
		for _, l := range lines {
			if w := ansi.StringWidth(l); w > size[0] {
				t.Errorf("%dx%d: line %q is %d wide", size[0], size[1], l, w)
			}
		}
		if size[1] >= 12 {
			if len(lines) > size[1] {
				t.Errorf("%dx%d: %d lines", size[0], size[1], len(lines))
			}
			requireContains(t, view, "…", "more above", "more below")
			if !strings.Contains(view, "n25-") {
				t.Errorf("%dx%d: the running host is out of view:\n%s", size[0], size[1], view)
			}
		}
	}
}

// Hosts a failed or aborted run never reached say so, rather than "waiting" forever: the engine
// says which (host.not_reached), the view only shows it.
func TestRollingNotReachedAfterAbort(t *testing.T) {
	m := NewRolling("r1", []HostRow{{Name: "h1", Cluster: "c1"}, {Name: "h2", Cluster: "c1"}}, RollingOptions{Tick: -1})
	m.Update(EventMsg(events.Event{Type: events.HostStarted, Host: "h1", Cluster: "c1"}))
	m.Update(EventMsg(events.Event{Type: events.RunFinished, RunState: "aborted", Message: "aborted by the operator"}))
	if h, _ := m.Host("h2"); h.Phase != "waiting" {
		t.Errorf("before the engine said so, h2 phase = %q, want waiting: the view decides nothing", h.Phase)
	}
	m.Update(EventMsg(events.Event{Type: events.HostNotReached, Host: "h2", Cluster: "c1", Message: "the run ended before this host"}))
	if h, _ := m.Host("h2"); h.Phase != "not reached" {
		t.Errorf("h2 phase = %q, want not reached", h.Phase)
	}
	if !strings.Contains(m.View(), "not reached") {
		t.Errorf("view does not say h2 was not reached:\n%s", m.View())
	}
}

// A resumed run's view starts from its journal: hosts finished before the crash show as done
// with their stage results and VMs moved, not as waiting with "-" (the bug this replaces).
func TestRollingReplayOfAResumedRun(t *testing.T) {
	m := newTestModel(&fakeClock{t: t0.Add(10 * time.Minute)}, RollingOptions{Tick: -1})
	var past []events.Event
	add := func(ms ...EventMsg) {
		for _, msg := range ms {
			past = append(past, events.Event(msg))
		}
	}
	add(at(0, events.Event{Type: events.RunStarted, RunID: "r1", HostCount: 3, ClusterCount: 2}))
	for i, s := range events.Stages() {
		add(stageEvents(time.Duration(i)*time.Minute, "h1", "c1", s, events.OutcomeSucceeded, 30*time.Second, events.Event{ExitCode: events.Int(0)})...)
	}
	add(at(2*time.Minute, events.Event{Type: events.HostStep, Host: "h1", Cluster: "c1", Step: events.StepInMaintenance, VMs: 2}))
	add(at(4*time.Minute, events.Event{Type: events.HostDone, Host: "h1", Cluster: "c1"}))
	add(stageEvents(0, "h2", "c1", events.PreFlight, events.OutcomeSkipped, time.Second, events.Event{ExitCode: events.Int(70)})...)
	add(at(time.Second, events.Event{Type: events.HostSkipped, Host: "h2", Cluster: "c1", Message: "no maintenance needed (PreFlight exit 70)"}))
	m.Replay(past)
	h1, _ := m.Host("h1")
	if h1.Phase != "done" || h1.VMsMoved != 2 {
		t.Errorf("h1 after replay: phase %q, %d VMs moved; want done, 2", h1.Phase, h1.VMsMoved)
	}
	for i, s := range h1.Stages {
		if s.State != StageOK {
			t.Errorf("h1 stage %d (%s) = %s, want ok", i, s.Name, s.State)
		}
	}
	if h2, _ := m.Host("h2"); !strings.HasPrefix(h2.Phase, "skipped") || h2.Stages[0].State != StageSkipped {
		t.Errorf("h2 after replay: %q, PreFlight %s", h2.Phase, h2.Stages[0].State)
	}
	if h3, _ := m.Host("h3"); h3.Phase != "waiting" {
		t.Errorf("h3 after replay: %q, want waiting", h3.Phase)
	}
	view := m.View()
	requireContains(t, view, "1 done", "1 skipped", "2 VMs", "ok 30s")
}

// Text a host wrote reaches the live view as text: a script's escape sequences (OSC 0 title,
// OSC 52 clipboard, clear screen, a carriage return that overwrites the line) are shown escaped.
func TestRollingViewShowsHostTextEscaped(t *testing.T) {
	m := newTestModel(&fakeClock{t: t0}, RollingOptions{Tick: -1})
	feedEvents(t, m, stageEvents(0, "h1", "c1", events.PostMaintenance, events.OutcomeFailed, time.Second,
		events.Event{ExitCode: events.Int(1), LastLine: "\x1b]0;pwned\x07\x1b]52;c;ZWNobyBoaQ==\x07\x1b[2Jok\rFAKE"}))
	bad := func(view string) bool {
		return strings.ContainsAny(view, "\x07\r\u009b") || strings.Contains(view, "\x1b]") || strings.Contains(view, "\x1b[2J") || strings.Contains(view, "\x1b[31m")
	}
	view := m.View()
	if bad(view) {
		t.Errorf("an escape sequence from a host reached the view:\n%q", view)
	}
	requireContains(t, view, `\u001b]0;pwned\u0007`)
	feed(t, m, at(time.Second, events.Event{Type: events.VMMigrationFailed, Host: "h1", Cluster: "c1", VM: "vm\x1b[31m", Message: "\u009b2J"}))
	if view = m.View(); bad(view) {
		t.Errorf("an escape sequence from a host reached the view:\n%q", view)
	}
	requireContains(t, view, `vm\u001b[31m: \u009b2J`)
}
