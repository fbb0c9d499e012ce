// Package hooks finds and runs the rolling-maintenance stage scripts of a KVM host.
//
// A stage (PreFlight, PreMaintenance, Maintenance, PostMaintenance) has at most one script,
// NAME, NAME.sh or NAME.py, in the hooks directory. Scripts run without a shell, in their own
// process group, with a timeout, and only when they pass the ownership and permission checks of
// Resolve. Two executors run them behind the Executor interface: the ServiceExecutor (default)
// runs each stage detached from the agent through the stage runner, kvmagent-stage
// (StageExecMain; the agent's hidden "stage-exec" subcommand where the runner is missing), so a
// stage survives an agent restart; the AgentExecutor runs it as a child of the agent.
//
// A stage is running while its script runs. The process that started the script (the runner,
// or the agent) ends the stage when the script exits, with its exit status. When that process
// died first, the script runs on (no signal ties it to its parent, and its output goes to a
// file, not a pipe whose reader died), and the agent watches its process group instead: the
// stage is running while any process of the group lives, its timeout enforced by the agent, and
// completed once none does, with the tail of its output and an inferred outcome (agent
// executor: succeeded, as the seed says of a stage lost with the agent; service executor:
// failed), its exit status unknown.
//
// State lives in <stateDir>/stages:
//
//	stages/
//	  <id>.json   record of one stage execution (running or completed), written atomically
//	  <id>.spec   what the runner must run (service executor only, removed when done)
//	  <id>.pid    the stage's processes: the runner's pid, written before the script starts
//	              (service executor), and the script's process group with its leader's start
//	              time, added as soon as it runs (both executors); removed when done
//	  <id>.log    the script's stdout and stderr (and the runner's own stderr, setsid launch),
//	              removed once the record holds its tail
//	  <id>.json.corrupt  an entry that could not be a record, kept aside (the stage counts as
//	              failed)
//
// The id is derived from (run_id, stage), which makes Start idempotent across agent restarts.
package hooks
