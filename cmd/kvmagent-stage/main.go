// Command kvmagent-stage is kvmagent's stage runner: for each rolling-maintenance stage, the
// agent's service executor starts `kvmagent-stage SPEC` detached from the agent (a transient
// systemd unit, or a child in a new session), and it runs the stage script the spec file
// describes and records the result where the agent reads it (see hooks.StageExecMain).
//
// It is built without cgo and does not link libvirt as kvmagent does, so a stage starts in a
// few milliseconds. Install it beside kvmagent; `kvmagent-stage version` prints its version.
//
// It runs one script and waits: the runtime need not read the cgroup's CPU limit at start (a
// tenth of a millisecond of every stage) nor watch it later.
//
//go:debug containermaxprocs=0
//go:debug updatemaxprocs=0
package main

import (
	"fmt"
	"os"

	"github.com/kvmctl/kvmctl/pkg/buildinfo"
	"github.com/kvmctl/kvmctl/pkg/hooks"
)

func main() {
	if len(os.Args) == 2 && (os.Args[1] == "version" || os.Args[1] == "--version") {
		fmt.Printf("%s %s\n", hooks.StageRunnerName, buildinfo.String())
		return
	}
	os.Exit(hooks.StageExecMain(os.Args[1:]))
}
