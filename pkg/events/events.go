// Package events is the one stream every engine reports progress on. The same events are
// rendered live by the TUI on a terminal, written one JSON object per line with --events,
// printed as plain lines otherwise, and journaled in the state file, so `rolling status` and
// `resume` read what the operator saw.
package events

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"
)

// Event types, declared once.
const (
	RunStarted            = "run.started"
	RunResumed            = "run.resumed"
	RunAbortRequested     = "run.abort_requested"
	RunPreFlightDone      = "run.preflight_done"
	RunCapacityChecked    = "run.capacity_checked"
	RunFinished           = "run.finished"
	ClusterDisabling      = "cluster.disabling"
	ClusterDisabled       = "cluster.disabled"
	ClusterEnabled        = "cluster.enabled"
	ClusterEnableFailed   = "cluster.enable_failed"
	ClusterDone           = "cluster.done"
	HostStarted           = "host.started"
	HostStep              = "host.step"
	HostDone              = "host.done"
	HostStageStarted      = "host.stage.started"
	HostStageRunning      = "host.stage.running"
	HostStageFinished     = "host.stage.finished"
	HostSkipped           = "host.skipped"
	HostMaintenancePrep   = "host.maintenance.preparing"
	HostMaintenancePlan   = "host.maintenance.planned"
	HostMaintenanceIn     = "host.maintenance.entered"
	HostMaintenanceError  = "host.maintenance.error"
	HostMaintenanceCancel = "host.maintenance.cancelled"
	HostAgentRestart      = "host.agent.restart"
	VMMigrating           = "vm.migrating"
	VMMigrated            = "vm.migrated"
	VMMigrationFailed     = "vm.migration_failed"
)

// Event is one thing that happened. Fields carries what is particular to its type.
type Event struct {
	Time    time.Time      `json:"time"`
	Type    string         `json:"type"`
	RunID   string         `json:"run_id,omitempty"`
	Cluster string         `json:"cluster,omitempty"`
	Host    string         `json:"host,omitempty"`
	Stage   string         `json:"stage,omitempty"`
	VM      string         `json:"vm,omitempty"`
	Outcome string         `json:"outcome,omitempty"`
	Message string         `json:"message,omitempty"`
	Fields  map[string]any `json:"fields,omitempty"`
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

// Line renders an event for people in one line.
func Line(e Event) string {
	var b strings.Builder
	b.WriteString(e.Time.UTC().Format("15:04:05"))
	b.WriteString(" ")
	b.WriteString(e.Type)
	for _, kv := range [][2]string{{"cluster", e.Cluster}, {"host", e.Host}, {"stage", e.Stage}, {"vm", e.VM}, {"outcome", e.Outcome}} {
		if kv[1] != "" {
			fmt.Fprintf(&b, " %s=%s", kv[0], kv[1])
		}
	}
	keys := make([]string, 0, len(e.Fields))
	for k := range e.Fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%v", k, e.Fields[k])
	}
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	return b.String()
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
