// Package events is the one stream every engine reports progress on, and the vocabulary (event
// types, stages, outcomes, steps) that the agent, the engines and the renderers share. The same
// events are rendered live by the TUI on a terminal, written one JSON object per line with
// --events, printed as plain lines otherwise, and journaled in the state file, so `rolling
// status` and `resume` read what the operator saw. It imports nothing of the project.
package events

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Type names what happened.
type Type string

// Event types, declared once.
const (
	RunStarted            Type = "run.started"
	RunResumed            Type = "run.resumed"
	RunAbortRequested     Type = "run.abort_requested"
	RunPreFlightDone      Type = "run.preflight_done"
	RunCapacityChecked    Type = "run.capacity_checked"
	RunFinished           Type = "run.finished"
	ClusterDisabling      Type = "cluster.disabling"
	ClusterDisabled       Type = "cluster.disabled"
	ClusterEnabled        Type = "cluster.enabled"
	ClusterEnableFailed   Type = "cluster.enable_failed"
	ClusterDone           Type = "cluster.done"
	HostStarted           Type = "host.started"
	HostStep              Type = "host.step"
	HostDone              Type = "host.done"
	HostNotReached        Type = "host.not_reached"
	HostStageStarted      Type = "host.stage.started"
	HostStageRunning      Type = "host.stage.running"
	HostStageFinished     Type = "host.stage.finished"
	HostSkipped           Type = "host.skipped"
	HostMaintenancePrep   Type = "host.maintenance.preparing"
	HostMaintenancePlan   Type = "host.maintenance.planned"
	HostMaintenanceIn     Type = "host.maintenance.entered"
	HostMaintenanceError  Type = "host.maintenance.error"
	HostMaintenanceCancel Type = "host.maintenance.cancelled"
	HostAgentRestart      Type = "host.agent.restart"
	VMMigrating           Type = "vm.migrating"
	VMMigrated            Type = "vm.migrated"
	VMMigrationFailed     Type = "vm.migration_failed"
	ActionStarted         Type = "action.started"
	ActionFinished        Type = "action.finished"
	// The audit stream of power actions: an intent is written before the BMC is called, its
	// result after; a refusal (cap, hold) instead of an intent; a reconciliation settles an
	// intent whose kvmctl died before the result.
	FenceIntent     Type = "fence.intent"
	FenceResult     Type = "fence.result"
	FenceRefused    Type = "fence.refused"
	FenceReconciled Type = "fence.reconciled"
	NotifyFailed    Type = "notify.failed"
	// A host's HA life (stream ha/HOST): each state it enters, each activity check with what
	// every neighbour read, each guard that stopped a fence, each VM start of a recovery.
	HAWatchStarted  Type = "ha.watch_started"
	HAWatchStopped  Type = "ha.watch_stopped"
	HADisabled      Type = "ha.disabled"
	HAIneligible    Type = "ha.ineligible"
	HAAvailable     Type = "ha.available"
	HASuspect       Type = "ha.suspect"
	HAActivityCheck Type = "ha.activity_check"
	HADegraded      Type = "ha.degraded"
	HAFencing       Type = "ha.fencing"
	HAFenceFailed   Type = "ha.fence_failed"
	HAFenced        Type = "ha.fenced"
	HARecovering    Type = "ha.recovering"
	HARecovered     Type = "ha.recovered"
	HAGuard         Type = "ha.guard"
	HAConfirmedDown Type = "ha.confirmed_down"
	VMRecoverIntent Type = "vm.recover_intent"
	VMRecovered     Type = "vm.recovered"
	VMRecoverFailed Type = "vm.recover_failed"
	VMUnplaced      Type = "vm.unplaced"
	// VMStaleRemoved: a fenced host that came back still had a copy of a VM HA started
	// elsewhere; the copy was removed so that it never runs twice.
	VMStaleRemoved Type = "vm.stale_copy_removed"
)

// FileRead is one file as a neighbour read it in an HA activity check: a heartbeat (Seq and
// BootID) or a VM disk (MTime and Size). Advanced says it changed since the same neighbour's
// previous read; Baseline that there was none to compare with.
type FileRead struct {
	Checker  string    `json:"checker"`
	Path     string    `json:"path"`
	Seq      uint64    `json:"seq,omitempty"`
	BootID   string    `json:"boot_id,omitempty"`
	MTime    time.Time `json:"mtime,omitzero"`
	Size     int64     `json:"size,omitempty"`
	Advanced bool      `json:"advanced,omitempty"`
	Baseline bool      `json:"baseline,omitempty"`
	Error    string    `json:"error,omitempty"`
}

// Event is one thing that happened. Every field but Time and Type is optional and typed: a
// renderer reads what the engine decided, it never works it out again.
type Event struct {
	Time time.Time `json:"time"`
	Type Type      `json:"type"`
	// Stream is the journal stream the event belongs to: a rolling run's id, or a standalone
	// maintenance action's.
	Stream  string `json:"stream,omitempty"`
	RunID   string `json:"run_id,omitempty"`
	Cluster string `json:"cluster,omitempty"`
	Host    string `json:"host,omitempty"`
	// Hosts lists the hosts an event is about together (a batch planned at once).
	Hosts []string `json:"hosts,omitempty"`
	Stage Stage    `json:"stage,omitempty"`
	Step  Step     `json:"step,omitempty"`
	VM    string   `json:"vm,omitempty"`
	// To is where a VM goes.
	To       string   `json:"to,omitempty"`
	Outcome  Outcome  `json:"outcome,omitempty"`
	RunState RunState `json:"run_state,omitempty"`
	ExitCode *int     `json:"exit_code,omitempty"`
	ExecID   string   `json:"exec_id,omitempty"`
	Note     string   `json:"note,omitempty"`
	LastLine string   `json:"last_line,omitempty"`
	// VMs counts the VMs an event is about (planned, moved); Unplaced those that fit nowhere.
	VMs      int `json:"vms,omitempty"`
	Unplaced int `json:"unplaced,omitempty"`
	// HostCount and ClusterCount size a run; Forced and MaxUnavailable are its options.
	HostCount      int   `json:"host_count,omitempty"`
	ClusterCount   int   `json:"cluster_count,omitempty"`
	Forced         bool  `json:"forced,omitempty"`
	MaxUnavailable int   `json:"max_unavailable,omitempty"`
	PreviousPID    int   `json:"previous_pid,omitempty"`
	DurationMS     int64 `json:"duration_ms,omitempty"`
	// Action is what a standalone maintenance action does (enable, cancel), or a power action
	// (off, reboot, blink, ...).
	Action string `json:"action,omitempty"`
	// AuditID ties a power action's intent, result and notifications together.
	AuditID string `json:"audit_id,omitempty"`
	// Who asked (an operator: user@machine pid N; HA: ha watch pid N) and why, with the evidence
	// a decision rested on.
	Who      string `json:"who,omitempty"`
	Reason   string `json:"reason,omitempty"`
	Evidence string `json:"evidence,omitempty"`
	// PowerBefore and PowerAfter are the chassis power states the BMC reported; Sent the BMC
	// requests in order; Fenced says the power was confirmed off.
	PowerBefore string   `json:"power_before,omitempty"`
	PowerAfter  string   `json:"power_after,omitempty"`
	Sent        []string `json:"sent,omitempty"`
	Fenced      bool     `json:"fenced,omitempty"`
	// HAState is the HA state a host entered, FromState the one it left; Verdict an activity
	// check's (ACTIVE, INACTIVE, UNKNOWN), Attempt its place in the INACTIVE streak, Reads what
	// each neighbour read; Guard names the guard that stopped a fence.
	HAState   string     `json:"ha_state,omitempty"`
	FromState string     `json:"from_state,omitempty"`
	Verdict   string     `json:"verdict,omitempty"`
	Attempt   int        `json:"attempt,omitempty"`
	Reads     []FileRead `json:"reads,omitempty"`
	Guard     string     `json:"guard,omitempty"`
	UUID      string     `json:"uuid,omitempty"`
	Message   string     `json:"message,omitempty"`
}

// Int returns a pointer to n, for ExitCode.
func Int(n int) *int { return &n }

// UnmarshalJSON reads an event, also as journals written before the fields were typed kept it
// (a "fields" map, a step id in "stage", a batch as a comma list in "message").
func (e *Event) UnmarshalJSON(b []byte) error {
	type plain Event
	var v struct {
		plain
		Legacy map[string]any `json:"fields"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*e = Event(v.plain)
	if v.Legacy == nil && e.Type != HostStep && e.Type != RunFinished && e.Type != HostMaintenancePlan {
		return nil
	}
	num := func(k string) (int, bool) {
		f, ok := v.Legacy[k].(float64)
		return int(f), ok
	}
	str := func(k string) string { s, _ := v.Legacy[k].(string); return s }
	if n, ok := num("exit_code"); ok && e.ExitCode == nil {
		e.ExitCode = Int(n)
	}
	e.Note = first(e.Note, str("note"))
	e.LastLine = first(e.LastLine, str("last_line"))
	e.ExecID = first(e.ExecID, str("exec_id"))
	e.To = first(e.To, str("to"))
	if n, ok := num("ms"); ok && e.DurationMS == 0 {
		e.DurationMS = int64(n)
	}
	for _, k := range []string{"vms", "vms_moved"} {
		if n, ok := num(k); ok && e.VMs == 0 {
			e.VMs = n
		}
	}
	if n, ok := num("unplaced"); ok && e.Unplaced == 0 {
		e.Unplaced = n
	}
	if n, ok := num("hosts"); ok && e.HostCount == 0 {
		e.HostCount = n
	}
	if n, ok := num("clusters"); ok && e.ClusterCount == 0 {
		e.ClusterCount = n
	}
	if f, ok := v.Legacy["forced"].(bool); ok {
		e.Forced = e.Forced || f
	}
	if n, ok := num("max_unavailable"); ok && e.MaxUnavailable == 0 {
		e.MaxUnavailable = n
	}
	if n, ok := num("previous_pid"); ok && e.PreviousPID == 0 {
		e.PreviousPID = n
	}
	switch e.Type {
	case HostStep:
		if e.Step == "" && e.Stage.Index() < 0 {
			e.Step, e.Stage = Step(e.Stage), ""
		}
	case RunFinished:
		if e.RunState == "" && e.Outcome != "" {
			e.RunState, e.Outcome = RunState(e.Outcome), ""
		}
	case HostMaintenancePlan:
		if e.Host == "" && len(e.Hosts) == 0 && e.Message != "" {
			for _, h := range strings.Split(e.Message, ",") {
				if h = strings.TrimSpace(h); h != "" {
					e.Hosts = append(e.Hosts, h)
				}
			}
			e.Message = ""
		}
	}
	return nil
}

func first(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// Sink receives events; engines take one and never know how it renders.
type Sink interface {
	Emit(Event) error
}

// SinkFunc adapts a function to a Sink.
type SinkFunc func(Event) error

// Emit calls f.
func (f SinkFunc) Emit(e Event) error { return f(e) }

// Discard drops every event.
var Discard Sink = SinkFunc(func(Event) error { return nil })

// OrDiscard returns s, or Discard when s is nil.
func OrDiscard(s Sink) Sink {
	if s == nil {
		return Discard
	}
	return s
}

// NDJSON writes each event as one JSON line, as it happens (--events).
type NDJSON struct {
	mu sync.Mutex
	w  io.Writer
}

// NewNDJSON returns a sink writing to w.
func NewNDJSON(w io.Writer) *NDJSON { return &NDJSON{w: w} }

// Emit writes e on its own line.
func (s *NDJSON) Emit(e Event) error {
	raw, err := json.Marshal(e)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, err = s.w.Write(append(raw, '\n'))
	return err
}

// Plain writes each event as one readable line (no TTY, no --events, no --json).
type Plain struct {
	mu sync.Mutex
	w  io.Writer
}

// NewPlain returns a sink writing lines to w.
func NewPlain(w io.Writer) *Plain { return &Plain{w: w} }

// Emit writes e as "TIME TYPE host=... message".
func (s *Plain) Emit(e Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, err := fmt.Fprintln(s.w, Line(e))
	return err
}

// Line renders an event for people in one line: its time, type and every field it has.
func Line(e Event) string {
	var b strings.Builder
	b.WriteString(e.Time.UTC().Format("15:04:05"))
	b.WriteString(" ")
	b.WriteString(string(e.Type))
	kv := func(k, v string) {
		if v != "" {
			fmt.Fprintf(&b, " %s=%s", k, v)
		}
	}
	num := func(k string, n int64) {
		if n != 0 {
			kv(k, strconv.FormatInt(n, 10))
		}
	}
	kv("cluster", e.Cluster)
	kv("host", e.Host)
	kv("hosts", strings.Join(e.Hosts, ","))
	kv("stage", string(e.Stage))
	kv("step", string(e.Step))
	kv("vm", e.VM)
	kv("to", e.To)
	kv("action", e.Action)
	kv("audit_id", e.AuditID)
	kv("who", quoteIfSpaced(e.Who))
	kv("reason", quoteIfSpaced(e.Reason))
	kv("power_before", e.PowerBefore)
	kv("power_after", e.PowerAfter)
	kv("sent", strings.Join(e.Sent, ","))
	if e.Fenced {
		kv("fenced", "true")
	}
	kv("from_state", e.FromState)
	kv("ha_state", e.HAState)
	kv("verdict", e.Verdict)
	num("attempt", int64(e.Attempt))
	kv("guard", e.Guard)
	kv("uuid", e.UUID)
	if len(e.Reads) > 0 {
		kv("reads", ReadsSummary(e.Reads))
	}
	kv("outcome", string(e.Outcome))
	kv("run_state", string(e.RunState))
	if e.ExitCode != nil {
		kv("exit_code", strconv.Itoa(*e.ExitCode))
	}
	num("vms", int64(e.VMs))
	num("unplaced", int64(e.Unplaced))
	num("host_count", int64(e.HostCount))
	num("cluster_count", int64(e.ClusterCount))
	if e.Forced {
		kv("forced", "true")
	}
	num("max_unavailable", int64(e.MaxUnavailable))
	num("previous_pid", int64(e.PreviousPID))
	num("duration_ms", e.DurationMS)
	kv("exec_id", e.ExecID)
	kv("note", quoteIfSpaced(e.Note))
	kv("last_line", quoteIfSpaced(e.LastLine))
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	return b.String()
}

// ReadsSummary says an activity check's reads in a few words: per file, who read it and whether
// it advanced, "h3:hb-h2=same h3:h2-vm1.img=advanced h4:hb-h2=error".
func ReadsSummary(rs []FileRead) string {
	var out []string
	for _, r := range rs {
		what := "same"
		switch {
		case r.Error != "":
			what = "error"
		case r.Baseline:
			what = "baseline"
		case r.Advanced:
			what = "advanced"
		}
		name := r.Path
		if i := strings.LastIndexByte(name, '/'); i >= 0 {
			name = name[i+1:]
		}
		out = append(out, r.Checker+":"+name+"="+what)
	}
	return strings.Join(out, ",")
}

func quoteIfSpaced(s string) string {
	if strings.ContainsAny(s, " \t\n\"") {
		return strconv.Quote(s)
	}
	return s
}

// Tee sends every event to each sink, returning the first error.
func Tee(sinks ...Sink) Sink {
	return SinkFunc(func(e Event) error {
		var first error
		for _, s := range sinks {
			if err := s.Emit(e); err != nil && first == nil {
				first = err
			}
		}
		return first
	})
}
