package hooks

import (
	"time"

	"github.com/kvmctl/kvmctl/pkg/events"
)

// Outcome is how a stage execution ended (pkg/events' word).
type Outcome = events.Outcome

// Outcomes of a stage execution.
const (
	Succeeded  = events.OutcomeSucceeded
	Skipped    = events.OutcomeSkipped
	Terminated = events.OutcomeTerminated
	TimedOut   = events.OutcomeTimedOut
	Failed     = events.OutcomeFailed
	NotFound   = events.OutcomeNotFound
)

// Exit codes with a meaning of their own.
const (
	ExitNoMaintenance = events.ExitNoMaintenance
	ExitTerminated    = events.ExitTerminated
)

// Notes set on stages whose outcome was inferred rather than observed.
const (
	NoteRebooted      = "host rebooted during stage"
	NoteAgentRestart  = "agent restarted"
	NoteRunnerDied    = "stage runner died"
	NoteRunnerMissing = "stage runner never started"
	// NoteRecordUnreadable: the stage's record could not be decoded and was kept aside as
	// <id>.json.corrupt.
	NoteRecordUnreadable = "record unreadable"
)

// State says whether a stage execution is still going (pkg/events' word).
type State = events.StageState

// States of a stage execution.
const (
	Running   = events.StageRunning
	Completed = events.StageCompleted
)

// Status is what an executor knows about one stage execution.
type Status struct {
	ID        string    `json:"id"`
	RunID     string    `json:"run_id"`
	Stage     Stage     `json:"stage"`
	State     State     `json:"state"`
	Outcome   Outcome   `json:"outcome,omitempty"`
	ExitCode  int       `json:"exit_code"`
	Output    string    `json:"output,omitempty"`
	StartedAt time.Time `json:"started_at"`
	EndedAt   time.Time `json:"ended_at,omitzero"`
	Note      string    `json:"note,omitempty"`
}
