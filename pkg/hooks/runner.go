package hooks

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// StageRunnerName is the file name of the stage runner, the small program (cmd/kvmagent-stage)
// that the ServiceExecutor starts detached to run one stage: installed beside kvmagent, it is
// found there. It does not link libvirt as kvmagent does, so it starts in a few milliseconds.
const StageRunnerName = "kvmagent-stage"

// CheckStageRunner checks the stage runner at path as a stage script is checked: an absolute
// path to a regular, executable file that only root or the agent's user can change (the file
// and every directory above it pass CheckTrustedPath). The runner starts every stage script as
// the agent's user: whoever could replace it would run anything there. A missing file is an
// error that wraps fs.ErrNotExist.
func CheckStageRunner(path string) error {
	if !filepath.IsAbs(path) {
		return fmt.Errorf("stage runner %q is not an absolute path", path)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("stage runner: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("stage runner %s is not a regular file (%s)", path, fi.Mode().Type())
	}
	if fi.Mode().Perm()&0o111 == 0 || syscall.Access(path, 1 /* X_OK */) != nil {
		return fmt.Errorf("stage runner %s is not executable (mode %04o): chmod +x %[1]s", path, fi.Mode().Perm())
	}
	if err := CheckTrustedPath(path); err != nil {
		return fmt.Errorf("stage runner %s: %w", path, err)
	}
	return nil
}

// stageRunner returns the command, less the spec file, that runs one stage detached: c.Runner
// when set (it must pass CheckStageRunner), else the StageRunnerName beside the agent's binary,
// else the agent's own StageExecCommand. The last works (and is what an agent upgraded in place
// from a version without the runner had started), but every stage then loads all the agent
// links: that is logged once, here, with why the runner was not used.
func (c Config) stageRunner() ([]string, error) {
	if c.Runner != "" {
		if err := CheckStageRunner(c.Runner); err != nil {
			return nil, err
		}
		return []string{c.Runner}, nil
	}
	binary := c.Binary
	if binary == "" {
		var err error
		if binary, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("find agent binary: %w", err)
		}
	}
	beside := filepath.Join(filepath.Dir(binary), StageRunnerName)
	err := CheckStageRunner(beside)
	if err == nil {
		return []string{beside}, nil
	}
	msg := "stage runner is not trusted: stages run through the agent's own " + StageExecCommand +
		" and start slower; fix the file, or set rolling.maintenance.stage.runner"
	if errors.Is(err, fs.ErrNotExist) {
		msg = "stage runner is missing: stages run through the agent's own " + StageExecCommand +
			" and start slower; install " + StageRunnerName + " beside the agent, or set rolling.maintenance.stage.runner"
	}
	c.Log.Warn(msg, "runner", beside, "agent", binary, "err", err)
	return []string{binary, StageExecCommand}, nil
}
