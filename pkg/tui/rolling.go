package tui

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/charmbracelet/bubbles/help"
	"github.com/charmbracelet/bubbles/key"
	"github.com/charmbracelet/bubbles/spinner"
	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/charmbracelet/x/ansi"

	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/termtext"
)

// DefaultTick is how often elapsed times are redrawn.
const DefaultTick = 250 * time.Millisecond

// TickMsg asks the rolling view to redraw its elapsed times.
type TickMsg time.Time

// HostRow is one host of the run, as the state file lists it before any event arrives.
type HostRow struct {
	Name    string
	Cluster string
}

// RollingOptions tune the rolling view. The zero value is usable.
type RollingOptions struct {
	// Now is the clock elapsed times are measured with (default time.Now); tests fix it.
	Now func() time.Time
	// Tick is how often elapsed times are redrawn: 0 means DefaultTick, negative never.
	Tick time.Duration
	// ExitOnFinish quits as soon as run.finished arrives instead of waiting for a key.
	ExitOnFinish bool
	// StartedAt is when the run began (a resumed run: from the state file). Zero: run.started,
	// else the first event.
	StartedAt time.Time
	// Renderer draws the styles (nil: lipgloss's default); give one made on the output the
	// program writes to, so colour follows that terminal.
	Renderer *lipgloss.Renderer
}

// StageState is where one stage of one host is.
type StageState int

// Stage states, from the stage events' outcomes.
const (
	StagePending StageState = iota
	StageRunning
	StageOK
	StageSkipped // exit 70: no maintenance needed
	StageFailed
	StageTimedOut
	StageTerminated
)

var stageStateNames = [...]string{"pending", "running", "ok", "skipped", "failed", "timed out", "terminated"}

// String names the state as the view shows it.
func (s StageState) String() string {
	if int(s) < len(stageStateNames) {
		return stageStateNames[s]
	}
	return "StageState(" + strconv.Itoa(int(s)) + ")"
}

// StageStatus is one stage of one host.
type StageStatus struct {
	Name     string
	State    StageState
	Started  time.Time
	Ended    time.Time
	ExitCode int
	Note     string
}

// HostStatus is what the view knows of one host.
type HostStatus struct {
	Name    string
	Cluster string
	// Phase is waiting, running STAGE, in maintenance, done, skipped: REASON, ...
	Phase string
	// Stages are PreFlight, PreMaintenance, Maintenance, PostMaintenance, in that order.
	Stages [4]StageStatus
	// VMsMoved counts vm.migrated events off this host; VMsFailed vm.migration_failed.
	VMsMoved  int
	VMsFailed int
	// LastLine is the last output line of a stage, or the latest event message.
	LastLine string
}

type hostRow struct {
	HostStatus
	base     string // phase when no stage runs and the host has not ended
	terminal string // done, or skipped: REASON
}

type clusterRow struct {
	name  string
	state string
	hosts []*hostRow
}

// RollingModel is the live view of a rolling-maintenance run: one row per host, grouped by
// cluster, with its four stages, phase, VMs evacuated and last output line.
type RollingModel struct {
	common   Common
	help     help.Model
	opts     RollingOptions
	now      func() time.Time
	src      <-chan events.Event
	runID    string
	clusters []*clusterRow
	hosts    map[string]*hostRow

	started, ended time.Time
	state          string // waiting, running, aborting, then run.finished's run state
	details        string
	note           string // the latest run-level message
	finished       bool
	closed         bool
	detached       bool
}

var _ Component = (*RollingModel)(nil)

// NewRolling returns the view of run runID over hosts, in their order, grouped by cluster.
func NewRolling(runID string, hosts []HostRow, opts RollingOptions) *RollingModel {
	m := &RollingModel{
		common: NewCommon(opts.Renderer),
		help:   help.New(),
		opts:   opts,
		now:    opts.Now,
		runID:  runID,
		hosts:  map[string]*hostRow{},
		state:  "waiting",
	}
	if m.now == nil {
		m.now = time.Now
	}
	m.help.Styles = m.common.Styles.Help
	m.started = opts.StartedAt
	for _, h := range hosts {
		m.host(termtext.Line(h.Name), termtext.Line(h.Cluster))
	}
	return m
}

// Replay folds events recorded before the view attached (a resumed run's journal), so hosts
// that finished before show as finished, with their stage results and VMs moved.
func (m *RollingModel) Replay(past []events.Event) {
	for _, e := range past {
		m.apply(e)
	}
	if m.finished {
		// The engine goes on (a resumed run); its own events decide the end again.
		m.finished, m.ended = false, time.Time{}
	}
}

// Listen sets the stream Init waits on; Run calls it.
func (m *RollingModel) Listen(ch <-chan events.Event) { m.src = ch }

// SetSize records the terminal size.
func (m *RollingModel) SetSize(width, height int) {
	m.common.SetSize(width, height)
	m.help.Width = width
}

// ShortHelp is the footer's keys.
func (m *RollingModel) ShortHelp() []key.Binding {
	if m.finished {
		return []key.Binding{m.common.KeyMap.Exit}
	}
	return []key.Binding{m.common.KeyMap.Detach}
}

// FullHelp is every key.
func (m *RollingModel) FullHelp() [][]key.Binding { return [][]key.Binding{m.ShortHelp()} }

// Detached reports whether the operator left with q or ctrl+c before the run finished.
func (m *RollingModel) Detached() bool { return m.detached }

// Finished reports whether run.finished arrived, with its outcome and details.
func (m *RollingModel) Finished() (done bool, state, details string) {
	return m.finished, m.state, m.details
}

// Host returns what the view knows of host name.
func (m *RollingModel) Host(name string) (HostStatus, bool) {
	h, ok := m.hosts[name]
	if !ok {
		return HostStatus{}, false
	}
	st := h.HostStatus
	st.Phase = h.phase()
	return st, true
}

// ClusterState returns the cluster line's state (disabled, enabled, ...; empty before any event).
func (m *RollingModel) ClusterState(name string) string {
	for _, c := range m.clusters {
		if c.name == name {
			return c.state
		}
	}
	return ""
}

// Init starts waiting for events and ticking.
func (m *RollingModel) Init() tea.Cmd {
	return tea.Batch(WaitForEvent(m.src), m.tick())
}

func (m *RollingModel) tick() tea.Cmd {
	d := m.opts.Tick
	if d < 0 || m.finished {
		return nil
	}
	if d == 0 {
		d = DefaultTick
	}
	return tea.Tick(d, func(t time.Time) tea.Msg { return TickMsg(t) })
}

// Update applies one message.
func (m *RollingModel) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.WindowSizeMsg:
		m.SetSize(msg.Width, msg.Height)
	case tea.KeyMsg:
		if m.finished {
			return m, tea.Quit
		}
		if key.Matches(msg, m.common.KeyMap.Detach) {
			m.detached = true
			return m, tea.Quit
		}
	case EventMsg:
		m.apply(events.Event(msg))
		if m.finished && m.opts.ExitOnFinish {
			return m, tea.Quit
		}
		return m, WaitForEvent(m.src)
	case ChannelClosedMsg:
		m.closed = true
		// Without run.finished the engine stopped short; its caller reports why.
		if !m.finished || m.opts.ExitOnFinish {
			return m, tea.Quit
		}
	case TickMsg:
		return m, m.tick()
	}
	return m, nil
}

// host returns the row of host name, adding it (under cluster) if the run had not listed it.
func (m *RollingModel) host(name, cluster string) *hostRow {
	if h, ok := m.hosts[name]; ok {
		return h
	}
	h := &hostRow{HostStatus: HostStatus{Name: name, Cluster: cluster}, base: "waiting"}
	for i, st := range events.Stages() {
		h.Stages[i].Name = string(st)
	}
	m.hosts[name] = h
	c := m.cluster(cluster)
	c.hosts = append(c.hosts, h)
	return h
}

func (m *RollingModel) cluster(name string) *clusterRow {
	for _, c := range m.clusters {
		if c.name == name {
			return c
		}
	}
	c := &clusterRow{name: name}
	m.clusters = append(m.clusters, c)
	return c
}

// clean returns e with every text a host may have written (script output, messages, names)
// made safe for the terminal: the view draws it as text, never as escape sequences.
func clean(e events.Event) events.Event {
	for _, s := range []*string{&e.Host, &e.Cluster, &e.VM, &e.To, &e.Note, &e.LastLine, &e.Message, &e.ExecID} {
		*s = termtext.Line(*s)
	}
	e.Stage, e.Step = events.Stage(termtext.Line(string(e.Stage))), events.Step(termtext.Line(string(e.Step)))
	hosts := make([]string, len(e.Hosts))
	for i, h := range e.Hosts {
		hosts[i] = termtext.Line(h)
	}
	e.Hosts = hosts
	return e
}

// apply folds one event into the view. It only records what the engine reported.
func (m *RollingModel) apply(e events.Event) {
	e = clean(e)
	t := e.Time
	if t.IsZero() {
		t = m.now()
	}
	if m.started.IsZero() {
		m.started = t
	}
	if m.state == "waiting" {
		m.state = "running"
	}
	switch e.Type {
	case events.RunStarted:
		if m.opts.StartedAt.IsZero() {
			m.started = t
		}
		m.note = fmt.Sprintf("started: %d hosts in %d clusters", e.HostCount, e.ClusterCount)
		return
	case events.RunResumed:
		m.note = "resumed"
		return
	case events.RunAbortRequested:
		m.state = "aborting"
		m.note = join("abort requested", e.Message)
		return
	case events.RunPreFlightDone:
		m.note = join("PreFlight done", e.Message)
		return
	case events.RunFinished:
		m.finished, m.state, m.details, m.ended = true, string(e.RunState), e.Message, t
		return
	case events.ClusterDisabling:
		m.cluster(e.Cluster).state = join("disabling", e.Message)
		return
	case events.ClusterDisabled:
		m.cluster(e.Cluster).state = "disabled"
		return
	case events.ClusterEnabled:
		m.cluster(e.Cluster).state = join("enabled", e.Message)
		return
	case events.ClusterEnableFailed:
		m.cluster(e.Cluster).state = join("enable failed", e.Message)
		return
	case events.ClusterDone:
		if c := m.cluster(e.Cluster); !strings.HasPrefix(c.state, "enable") {
			c.state = "done"
		}
		return
	case events.HostMaintenancePlan:
		if e.Host == "" {
			// The rolling engine plans a batch: Hosts lists it.
			for _, name := range e.Hosts {
				m.host(name, e.Cluster).base = "planned"
			}
			return
		}
	}
	if e.Host == "" {
		return
	}
	h := m.host(e.Host, e.Cluster)
	if e.Message != "" && e.Type != events.HostSkipped {
		h.LastLine = e.Message
	}
	switch e.Type {
	case events.HostStarted:
		h.base = "started"
	case events.HostStep:
		switch e.Step {
		case events.StepPrepared:
			h.base = "preparing maintenance"
		case events.StepInMaintenance:
			h.base = "in maintenance"
			h.VMsMoved = max(h.VMsMoved, e.VMs)
		case events.StepCancelled:
			h.base = "maintenance ended"
		}
	case events.HostNotReached:
		h.base = "not reached"
	case events.HostStageStarted, events.HostStageRunning:
		if i := e.Stage.Index(); i >= 0 {
			s := &h.Stages[i]
			if s.State != StageRunning || s.Started.IsZero() {
				s.Started = t
			}
			s.State, s.Ended = StageRunning, time.Time{}
			// The agent sends a stage's output when it ends; until then the line says what runs,
			// not what the previous stage printed.
			if e.Message == "" {
				h.LastLine = string(e.Stage) + " running…"
			}
		}
	case events.HostStageFinished:
		i := e.Stage.Index()
		if i < 0 {
			break
		}
		s := &h.Stages[i]
		s.State, s.Ended = outcomeState(e.Outcome), t
		if s.Started.IsZero() {
			s.Started = t
		}
		if e.ExitCode != nil {
			s.ExitCode = *e.ExitCode
		}
		s.Note = e.Note
		if e.LastLine != "" {
			h.LastLine = e.LastLine
		} else if s.Note != "" {
			h.LastLine = s.Note
		}
		if s.State != StageOK && s.State != StageSkipped {
			h.base = string(e.Stage) + " " + s.State.String()
		}
	case events.HostSkipped:
		h.terminal = join("skipped", e.Message)
	case events.HostDone:
		h.terminal = "done"
	case events.HostMaintenancePlan:
		h.base = "planned"
		if e.VMs > 0 {
			h.base = fmt.Sprintf("planned: %d VMs to move", e.VMs)
		}
	case events.HostMaintenancePrep:
		h.base = "preparing maintenance"
	case events.HostMaintenanceIn:
		h.base = "in maintenance"
		h.VMsMoved = max(h.VMsMoved, e.VMs)
	case events.HostMaintenanceError:
		h.base = "maintenance error"
	case events.HostMaintenanceCancel:
		h.base = "maintenance ended"
	case events.HostAgentRestart:
		h.base = "restarting agent"
	case events.VMMigrating:
		h.base = "evacuating VMs"
		h.LastLine = fmt.Sprintf("moving %s to %s", e.VM, e.To)
	case events.VMMigrated:
		h.VMsMoved++
		h.LastLine = fmt.Sprintf("moved %s to %s", e.VM, e.To)
		if e.DurationMS > 0 {
			h.LastLine += " in " + duration(time.Duration(e.DurationMS)*time.Millisecond)
		}
	case events.VMMigrationFailed:
		h.VMsFailed++
		h.LastLine = join(e.VM, e.Message)
	}
}

func outcomeState(outcome events.Outcome) StageState {
	switch outcome {
	case events.OutcomeSucceeded:
		return StageOK
	case events.OutcomeSkipped:
		return StageSkipped
	case events.OutcomeTimedOut:
		return StageTimedOut
	case events.OutcomeTerminated:
		return StageTerminated
	default:
		return StageFailed
	}
}

func join(what, msg string) string {
	if msg == "" {
		return what
	}
	return what + ": " + msg
}

func (h *hostRow) phase() string {
	if h.terminal != "" {
		return h.terminal
	}
	for _, s := range h.Stages {
		if s.State == StageRunning {
			return "running " + s.Name
		}
	}
	return h.base
}

func (h *hostRow) ended() bool { return h.terminal != "" }

// counts returns hosts done, skipped and remaining.
func (m *RollingModel) counts() (done, skipped, remaining int) {
	for _, h := range m.hosts {
		switch {
		case h.terminal == "done":
			done++
		case h.terminal != "":
			skipped++
		default:
			remaining++
		}
	}
	return done, skipped, remaining
}

// clock is "now" for elapsed times: frozen once the run has finished.
func (m *RollingModel) clock() time.Time {
	if m.finished {
		return m.ended
	}
	return m.now()
}

// duration renders d compactly and stably: 9s, 4m05s, 1h02m.
func duration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	switch {
	case d < time.Minute:
		return strconv.Itoa(int(d/time.Second)) + "s"
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d/time.Minute), int(d%time.Minute/time.Second))
	default:
		return fmt.Sprintf("%dh%02dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	}
}

var spin = spinner.MiniDot

// stageCell is the text and style of one stage: its state, then its elapsed time.
func (m *RollingModel) stageCell(h *hostRow, s StageStatus, compact bool) (string, lipgloss.Style) {
	st := m.common.Styles
	var label string
	style := st.Pending
	switch s.State {
	case StagePending:
		if h.ended() || m.finished {
			return "-", st.Pending
		}
		return "·", st.Pending
	case StageRunning:
		// The frame follows the clock, not a goroutine: a fixed clock draws a fixed frame.
		elapsed := m.clock().Sub(s.Started)
		frame := spin.Frames[int(max(elapsed, 0)/spin.FPS)%len(spin.Frames)]
		return frame + " " + duration(elapsed), st.Running
	case StageOK:
		label, style = "ok", st.OK
	case StageSkipped:
		label, style = "skipped(70)", st.Skipped
		if compact {
			label = "skip"
		}
	case StageFailed:
		label, style = fmt.Sprintf("failed(%d)", s.ExitCode), st.Failed
		if compact {
			label = "fail"
		}
	case StageTimedOut:
		label, style = "timed out", st.Failed
		if compact {
			label = "t/o"
		}
	case StageTerminated:
		label, style = "killed", st.Failed
	}
	if compact {
		return label, style
	}
	return label + " " + duration(s.Ended.Sub(s.Started)), style
}

// Column widths of the host table.
const (
	stageWidth        = 15
	compactStageWidth = 6
	vmsWidth          = 8
	minPhaseWidth     = 14
	maxHostWidth      = 24
	indent            = "  "
)

var compactStageNames = [4]string{"PreF", "PreM", "Maint", "PostM"}

// View draws the run.
func (m *RollingModel) View() string {
	width := m.common.width()
	st := m.common.Styles

	header := []string{m.headerLine()}
	if m.note != "" {
		header = append(header, st.Muted.Render(m.note))
	}
	header = append(header, "")

	var footer []string
	if m.finished || m.closed {
		footer = append(footer, "", m.summaryLine())
	}
	footer = append(footer, "", m.footerLine())

	avail := -1
	if h := m.common.Height; h > 0 {
		avail = max(h-len(header)-len(footer), 1)
	}
	body := m.window(m.table(width), avail)

	lines := append(append(header, body...), footer...)
	for i, l := range lines {
		lines[i] = fit(l, width)
	}
	return strings.Join(lines, "\n")
}

func (m *RollingModel) headerLine() string {
	st := m.common.Styles
	elapsed := "-"
	if !m.started.IsZero() {
		elapsed = duration(m.clock().Sub(m.started))
	}
	done, skipped, remaining := m.counts()
	state := m.state
	switch {
	case m.finished && state == string(events.RunSucceeded):
		state = st.Succeeded.Render(state)
	case m.finished:
		state = st.Unfinished.Render(state)
	}
	return fmt.Sprintf("%s %s · %s · %s · %d done · %d skipped · %d remaining",
		st.Title.Render("rolling"), m.runID, state, elapsed, done, skipped, remaining)
}

func (m *RollingModel) summaryLine() string {
	st := m.common.Styles
	if !m.finished {
		return st.Unfinished.Render("event stream ended before the run finished")
	}
	s := "run " + m.state
	if m.details != "" {
		s += ": " + m.details
	}
	if m.state == string(events.RunSucceeded) {
		return st.Succeeded.Render(s)
	}
	return st.Unfinished.Render(s)
}

func (m *RollingModel) footerLine() string {
	if m.finished {
		return m.help.ShortHelpView(m.ShortHelp())
	}
	return m.help.ShortHelpView(m.ShortHelp()) + m.common.Styles.Muted.Render(
		" · the run stays resumable: kvmctl rolling resume "+m.runID)
}

// tableLine is one line of the host table.
type tableLine struct {
	text string
	last string   // the host's last output, drawn under it when there is room
	host *hostRow // nil on the column header and cluster lines
}

// table lays out the column header, the cluster lines and the host lines.
func (m *RollingModel) table(width int) []tableLine {
	st := m.common.Styles
	hostW := len("HOST")
	for _, h := range m.hosts {
		hostW = max(hostW, ansi.StringWidth(h.Name))
	}
	hostW = min(hostW, maxHostWidth)
	compact := len(indent)+hostW+1+4*(stageWidth+1)+vmsWidth+minPhaseWidth > width
	sw := stageWidth
	if compact {
		sw = compactStageWidth
	}

	var b strings.Builder
	b.WriteString(indent)
	b.WriteString(cell(st.ColHeader, "HOST", hostW+1))
	for i, s := range events.Stages() {
		name := string(s)
		if compact {
			name = compactStageNames[i]
		}
		b.WriteString(cell(st.ColHeader, name, sw+1))
	}
	b.WriteString(cell(st.ColHeader, "VMS", vmsWidth))
	b.WriteString(st.ColHeader.Render("PHASE"))
	lines := []tableLine{{text: b.String()}}

	for _, c := range m.clusters {
		line := st.Cluster.Render("cluster " + c.name)
		if c.state != "" {
			line += "  " + c.state
		}
		lines = append(lines, tableLine{text: line})
		for _, h := range c.hosts {
			b.Reset()
			b.WriteString(indent)
			b.WriteString(cell(st.Host, h.Name, hostW+1))
			if strings.HasPrefix(h.terminal, "skipped") {
				// The stages it will not run leave room for why: the reason is the news.
				for _, s := range h.Stages {
					if s.State == StagePending {
						break
					}
					text, style := m.stageCell(h, s, compact)
					b.WriteString(cell(style, text, sw+1))
				}
				reason := h.terminal
				if h.VMsMoved > 0 {
					reason += " · " + vms(h) + " moved"
				}
				b.WriteString(st.Skipped.Render(reason))
			} else {
				for _, s := range h.Stages {
					text, style := m.stageCell(h, s, compact)
					b.WriteString(cell(style, text, sw+1))
				}
				b.WriteString(cell(st.Host, vms(h), vmsWidth))
				b.WriteString(m.phaseStyle(h).Render(h.phase()))
			}
			tl := tableLine{text: b.String(), host: h}
			// A skipped host's reason is its phase already.
			if h.LastLine != "" && !strings.HasPrefix(h.terminal, "skipped") {
				tl.last = strings.Repeat(" ", len(indent)+hostW+1) + st.LastLine.Render("└ "+h.LastLine)
			}
			lines = append(lines, tl)
		}
	}
	return lines
}

func (m *RollingModel) phaseStyle(h *hostRow) lipgloss.Style {
	st := m.common.Styles
	switch {
	case h.terminal == "done":
		return st.OK
	case h.terminal != "":
		return st.Skipped
	case h.base == "maintenance error":
		return st.Failed
	}
	for _, s := range h.Stages {
		if s.State == StageRunning {
			return st.Running
		}
		if s.State >= StageFailed {
			return st.Failed
		}
	}
	return st.Host
}

func vms(h *hostRow) string {
	switch {
	case h.VMsMoved == 0 && h.VMsFailed == 0:
		return "-"
	case h.VMsFailed > 0:
		return fmt.Sprintf("%d/%d", h.VMsMoved, h.VMsMoved+h.VMsFailed)
	case h.VMsMoved == 1:
		return "1 VM"
	default:
		return fmt.Sprintf("%d VMs", h.VMsMoved)
	}
}

// window flattens the table into at most avail lines (avail < 0: no limit). When it must cut,
// it first drops the last-output lines, then keeps the column header and a window around the
// first host still in progress, saying how many lines it left out above and below.
func (m *RollingModel) window(table []tableLine, avail int) []string {
	flat := func(withLast bool) (lines []string, focus int) {
		focus = -1
		for _, tl := range table {
			lines = append(lines, tl.text)
			if focus < 0 && tl.host != nil && !tl.host.ended() {
				focus = len(lines) - 1
			}
			if withLast && tl.last != "" {
				lines = append(lines, tl.last)
			}
		}
		return lines, focus
	}
	lines, _ := flat(true)
	if avail < 0 || len(lines) <= avail {
		return lines
	}
	lines, focus := flat(false)
	if len(lines) <= avail {
		return lines
	}
	if avail < 3 {
		return lines[:max(avail, 0)]
	}
	head, rest := lines[0], lines[1:]
	room := avail - 1
	start := 0
	if focus > 0 {
		start = max(0, min(focus-1-room/2, len(rest)-room))
	}
	end := min(start+room, len(rest))
	shown := append([]string{head}, rest[start:end]...)
	st := m.common.Styles
	if start > 0 {
		shown[1] = st.Muted.Render(fmt.Sprintf("%s… %d more above", indent, start+1))
	}
	if end < len(rest) {
		shown[len(shown)-1] = st.Muted.Render(fmt.Sprintf("%s… %d more below", indent, len(rest)-end+1))
	}
	return shown
}
