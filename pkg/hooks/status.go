package hooks

import (
	"time"

	"github.com/kvmctl/kvmctl/pkg/events"
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
	// NoteRunnerUnverifiable: the runner's pid was recorded without its start time, so a live
	// process with that pid cannot be told from one that reused it: it counts as gone.
	NoteRunnerUnverifiable = "stage runner unverifiable: pid recorded without its start time"
)

// Status is what an executor knows about one stage execution.
type Status struct {
	ID        string            `json:"id"`
	RunID     string            `json:"run_id"`
	Stage     events.Stage      `json:"stage"`
	State     events.StageState `json:"state"`
	Outcome   events.Outcome    `json:"outcome,omitempty"`
	ExitCode  int               `json:"exit_code"`
	Output    string            `json:"output,omitempty"`
	StartedAt time.Time         `json:"started_at"`
	EndedAt   time.Time         `json:"ended_at,omitzero"`
	Note      string            `json:"note,omitempty"`
}
