// Package hooks finds and runs the rolling-maintenance stage scripts of a KVM host.
//
// A stage (PreFlight, PreMaintenance, Maintenance, PostMaintenance) has at most one script,
// NAME, NAME.sh or NAME.py, in the hooks directory. Scripts run without a shell, in their own
// process group, with a timeout, and only when they pass the ownership and permission checks of
// Resolve. Two executors run them behind the Executor interface: the ServiceExecutor (default)
// runs each stage detached from the agent through the stage runner, kvmagent-stage
// (StageExecMain; the agent's hidden "stage-exec" subcommand where the runner is missing), so a
// stage survives an agent restart; the AgentExecutor runs it as a child of the agent and counts
// a stage lost with the agent as completed.
//
// State lives in <stateDir>/stages:
//
//	stages/
//	  <id>.json   record of one stage execution (running or completed), written atomically
//	  <id>.spec   what the runner must run (service executor only, removed when done)
//	  <id>.pid    the runner's pid, written before the script starts (service executor only,
//	              removed when done)
//	  <id>.log    the runner's own stderr (service executor, setsid launch only)
//	  <id>.json.corrupt  a record that could not be decoded, kept aside (the stage counts as failed)
//
// The id is derived from (run_id, stage), which makes Start idempotent across agent restarts.
package hooks
