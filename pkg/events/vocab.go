package events

import (
	"fmt"
	"strings"
)

// This file is the vocabulary every side shares: the agent (stages, outcomes), the engines
// (steps, run states) and the renderers. Each word is declared here and nowhere else.

// Stage is one step of rolling maintenance that runs a hook script; its name is also the
// script's base name on the host (seed 001).
type Stage string

// The four stages, in the order a run takes them.
const (
	PreFlight       Stage = "PreFlight"
	PreMaintenance  Stage = "PreMaintenance"
	Maintenance     Stage = "Maintenance"
	PostMaintenance Stage = "PostMaintenance"
)

// Stages returns every stage in execution order.
func Stages() []Stage {
	return []Stage{PreFlight, PreMaintenance, Maintenance, PostMaintenance}
}

// ParseStage returns the stage named s (exact spelling) or an error listing the valid names.
func ParseStage(s string) (Stage, error) {
	names := make([]string, 0, 4)
	for _, st := range Stages() {
		if string(st) == s {
			return st, nil
		}
		names = append(names, string(st))
	}
	return "", fmt.Errorf("unknown stage %q: valid stages are %s", s, strings.Join(names, ", "))
}

// String returns the stage name.
func (s Stage) String() string { return string(s) }

// Index is the stage's position in Stages, or -1 for a name that is no stage.
func (s Stage) Index() int {
	for i, st := range Stages() {
		if st == s {
			return i
		}
	}
	return -1
}

// Outcome is how a stage execution ended; the values are stable JSON strings.
type Outcome string

// Outcomes of a stage execution.
const (
	// OutcomeSucceeded: the script exited 0, or the stage counts as completed (see its note).
	OutcomeSucceeded Outcome = "succeeded"
	// OutcomeSkipped: the script exited 70, "no maintenance needed".
	OutcomeSkipped Outcome = "skipped"
	// OutcomeTerminated: the script exited 143 or was killed by a signal.
	OutcomeTerminated Outcome = "terminated"
	// OutcomeTimedOut: the script outlived its timeout and was killed.
	OutcomeTimedOut Outcome = "timed_out"
	// OutcomeFailed: any other exit code, or the script could not be run.
	OutcomeFailed Outcome = "failed"
	// OutcomeNotFound: the stage has no script; nothing ran.
	OutcomeNotFound Outcome = "not_found"
)

// StageState says whether a stage execution is still going.
type StageState string

// States of a stage execution.
const (
	StageStarting  StageState = "starting" // recorded by kvmctl before the agent was asked
	StageRunning   StageState = "running"
	StageCompleted StageState = "completed"
)

// Step is how far a host got in a rolling run: the last step it finished. A resumed run reads
// it to know what is left (see pkg/orchestrate's step table).
type Step string

// Host steps of a rolling run, in the order a host goes through them, then the two ends.
const (
	StepPending         Step = "pending"
	StepPreFlightDone   Step = "preflight_done"
	StepScriptChecked   Step = "maintenance_script_checked"
	StepPreMaintDone    Step = "premaintenance_done"
	StepPrepared        Step = "prepare_for_maintenance"
	StepInMaintenance   Step = "in_maintenance"
	StepMaintenanceDone Step = "maintenance_done"
	StepCancelled       Step = "maintenance_cancelled"
	StepDone            Step = "done"
	StepSkipped         Step = "skipped"
)

// Steps that are journaled as host.step events but are not a host's place in the order.
const (
	// StepLeftMaintenance: the run took the host out of the maintenance it put it in.
	StepLeftMaintenance Step = "left_maintenance"
	// StepRestored: the run ended before the host was done; its maintenance was cancelled.
	StepRestored Step = "restored"
	// StepWaitingStage: an abort waits for a stage the dead kvmctl started.
	StepWaitingStage Step = "waiting_for_stage"
)

var stepOrder = map[Step]int{StepPending: 0, StepPreFlightDone: 1, StepScriptChecked: 2, StepPreMaintDone: 3,
	StepPrepared: 4, StepInMaintenance: 5, StepMaintenanceDone: 6, StepCancelled: 7, StepDone: 8, StepSkipped: 9}

// Order is the step's position in the order a host goes through them (-1 for an event-only step).
func (s Step) Order() int {
	if n, ok := stepOrder[s]; ok {
		return n
	}
	return -1
}

// RunState is where a rolling run is.
type RunState string

// Run states.
const (
	RunRunning   RunState = "running"
	RunSucceeded RunState = "succeeded"
	RunFailed    RunState = "failed"
	RunAborted   RunState = "aborted"
)

// Exit codes of stage scripts with a meaning of their own (seed 001).
const (
	// ExitNoMaintenance is the exit code by which a script says no maintenance is needed.
	ExitNoMaintenance = 70
	// ExitTerminated is the exit code of a process that ended on SIGTERM (128+15).
	ExitTerminated = 143
)
