package orchestrate

import "github.com/kvmctl/kvmctl/pkg/events"

// StepRule says what a killed run's resume and abort do with a host that had finished Step
// (RunHost.Step, the last step journaled for it). Every step is journaled before the next action
// starts, and every stage carries its execution id once the agent accepted it, so the rules only
// ever re-attach to work in progress, never repeat it: the agent answers a second start of the
// same (run, stage) with the first execution.
type StepRule struct {
	Step   events.Step
	Resume string
	Abort  string
}

// StepTable is the documented table "killed after step X → resume does Y, abort does Z". The
// crash-point tests drive a run through every journal write and check each row; `rolling status`
// shows a dead run's row for each host.
var StepTable = []StepRule{
	{events.StepPending,
		"runs PreFlight (re-attaching to an execution the agent already started)",
		"nothing to undo: the host was not touched"},
	{events.StepPreFlightDone,
		"waits for the other hosts' PreFlight, then checks its Maintenance script",
		"nothing to undo"},
	{events.StepScriptChecked,
		"runs PreMaintenance (re-attaching to a started one)",
		"waits for a started PreMaintenance to end; nothing to undo"},
	{events.StepPreMaintDone,
		"rechecks capacity, marks the host PrepareForMaintenance",
		"nothing to undo"},
	{events.StepPrepared,
		"enters maintenance: finishes VM moves cut short, moves the rest",
		"cancels the host's maintenance"},
	{events.StepInMaintenance,
		"runs Maintenance (re-attaching to a started one)",
		"waits for a started Maintenance to end, then cancels the host's maintenance"},
	{events.StepMaintenanceDone,
		"cancels maintenance, runs PostMaintenance",
		"cancels the host's maintenance"},
	{events.StepCancelled,
		"runs PostMaintenance (re-attaching to a started one)",
		"waits for a started PostMaintenance to end; nothing to undo"},
	{events.StepDone, "nothing: the host is done", "nothing"},
	{events.StepSkipped, "nothing: the host was skipped", "nothing"},
}

// RuleFor returns the row of step s (the pending row for an unknown step).
func RuleFor(s events.Step) StepRule {
	for _, r := range StepTable {
		if r.Step == s {
			return r
		}
	}
	return StepTable[0]
}
