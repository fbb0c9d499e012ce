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
	// NoteAgentRestartScriptEnded: the agent that ran the script died; a later one watched the
	// script's process group until it was gone, so the script's output is known but not its
	// exit status.
	NoteAgentRestartScriptEnded = "agent restarted; the script ran on and ended, exit status unknown"
	// NoteRunnerDiedScriptEnded: the stage runner died while its script ran; the agent watched
	// the script's process group until it was gone. Its exit status is unknown.
	NoteRunnerDiedScriptEnded = "stage runner died; the script ran on and ended, exit status unknown"
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
