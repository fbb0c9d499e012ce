package hooks

import "time"

// Outcome is how a stage execution ended; the values are stable JSON strings.
type Outcome string

// Outcomes of a stage execution.
const (
	// Succeeded: the script exited 0, or the stage counts as completed (see Status.Note).
	Succeeded Outcome = "succeeded"
	// Skipped: the script exited 70, "no maintenance needed".
	Skipped Outcome = "skipped"
	// Terminated: the script exited 143 or was killed by a signal.
	Terminated Outcome = "terminated"
	// TimedOut: the script outlived its timeout and was killed.
	TimedOut Outcome = "timed_out"
	// Failed: any other exit code, or the script could not be run.
	Failed Outcome = "failed"
	// NotFound: the stage has no script. Executors return ErrNoScript instead of running
	// anything; callers that report it as an outcome use this value.
	NotFound Outcome = "not_found"
)

// Exit codes with a meaning of their own.
const (
	// ExitNoMaintenance is the exit code by which a script says no maintenance is needed.
	ExitNoMaintenance = 70
	// ExitTerminated is the exit code of a process that ended on SIGTERM (128+15).
	ExitTerminated = 143
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

// State says whether a stage execution is still going.
type State string

// States of a stage execution.
const (
	Running   State = "running"
	Completed State = "completed"
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
