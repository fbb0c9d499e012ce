package hooks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/kvmctl/kvmctl/pkg/events"
)

// StageExecMain is the main of the stage runner (kvmagent-stage SPEC) and of the agent's hidden
// "stage-exec SPEC" subcommand, which the ServiceExecutor starts detached from the agent: it
// runs the stage script described by the spec file, writing its pid (<id>.pid) before, the
// script's process group as soon as it runs, and the result (the record) after, and returns the
// process exit code. The script's output goes to <id>.log. SIGTERM or SIGINT stop the
// script (SIGTERM, grace, SIGKILL).
//
// cmd/kvmagent-stage is
//
//	func main() { os.Exit(hooks.StageExecMain(os.Args[1:])) }
func StageExecMain(args []string) int {
	if err := stageExec(args); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", runnerName(), err)
		return 1
	}
	return 0
}

// runnerName names this process in its messages: kvmagent-stage, or the agent's stage-exec.
func runnerName() string {
	if filepath.Base(os.Args[0]) == StageRunnerName {
		return StageRunnerName
	}
	return StageExecCommand
}

func stageExec(args []string) error {
	if len(args) != 1 || !strings.HasSuffix(args[0], ".spec") {
		return fmt.Errorf("usage: %s <stages dir>/<id>.spec (the agent starts it for each stage)", runnerName())
	}
	specPath := args[0]
	b, err := os.ReadFile(specPath)
	if err != nil {
		return fmt.Errorf("read spec: %w", err)
	}
	var es execSpec
	if err := json.Unmarshal(b, &es); err != nil {
		return fmt.Errorf("decode spec: %w", err)
	}
	if !validID(es.ID) || filepath.Base(specPath) != es.ID+".spec" {
		return fmt.Errorf("spec %s: id %q does not match its name", specPath, es.ID)
	}
	s := store{dir: filepath.Dir(specPath)}
	rec, err := s.read(es.ID)
	if err != nil {
		return err
	}
	if rec.State == events.StageCompleted || rec.PID != 0 {
		// Started twice (e.g. a unit restarted): never run the script a second time.
		return fmt.Errorf("stage %s already %s by pid %d", es.ID, rec.State, rec.PID)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	me := stageProcs{PID: os.Getpid()}
	me.PIDStart, _ = procStart(me.PID)
	if err := s.claim(es.ID, me); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("stage %s already started by another runner (%s)", es.ID, s.pidPath(es.ID))
		}
		return err
	}
	rec.PID, rec.PIDStart, rec.BootID = me.PID, me.PIDStart, es.BootID
	var res runResult
	if err := Verify(es.Run.Dir, es.Stage, es.Run.Script); err != nil {
		// The script or its directory changed since Start checked them: it must not run.
		res = refusedResult(err, time.Now())
	} else {
		// No Pdeathsig on the script: if this runner dies, the script runs on and the agent
		// watches its process group (a Maintenance script may be halfway through installing a
		// kernel). Its output goes to <id>.log, which outlives this process.
		res = runScript(ctx, es.Run, s.logPath(es.ID), func(p stageProcs) error {
			p.PID, p.PIDStart = me.PID, me.PIDStart
			return s.writeProcs(es.ID, p)
		}, time.Now)
	}
	rec.State, rec.Outcome, rec.ExitCode, rec.Output, rec.Note = events.StageCompleted, res.Outcome, res.ExitCode, res.Output, res.Note
	rec.StartedAt, rec.EndedAt = res.StartedAt, res.EndedAt
	if err := s.write(rec); err != nil {
		return err
	}
	s.removeLeftovers(es.ID)
	return nil
}
