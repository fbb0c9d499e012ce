package hooks

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/kvmctl/kvmctl/pkg/events"
)

// ErrNoScript reports that a stage has no script in the hooks directory. Whether that counts as
// success is the caller's decision (the seed skips such a stage, except that a missing
// Maintenance script skips the host).
var ErrNoScript = errors.New("no script for stage")

// RefusedError reports a stage script that exists but must not run, and why.
type RefusedError struct {
	Stage  events.Stage
	Path   string
	Reason string
	// noScript is set when the stage has no script and is refused for its directory alone.
	noScript bool
}

// Error returns "refuse <stage> script <path>: <reason>".
func (e *RefusedError) Error() string {
	return fmt.Sprintf("refuse %s script %s: %s", e.Stage, e.Path, e.Reason)
}

// ScriptInfo describes the script of one stage, as listed by GET /v1/hooks.
type ScriptInfo struct {
	Stage   events.Stage `json:"stage"`
	Present bool         `json:"present"`
	Path    string       `json:"path,omitempty"`
	// Refused is the reason the script would not run; empty when it would.
	Refused string `json:"refused,omitempty"`
}

// scriptSuffixes are the accepted script names per stage: NAME, NAME.sh, NAME.py.
var scriptSuffixes = []string{"", ".sh", ".py"}

// Discover lists the script of every stage in dir. It fails only when dir itself is unusable;
// a refused script is reported in its ScriptInfo.
func Discover(dir string) ([]ScriptInfo, error) {
	if _, err := realDir(dir); err != nil {
		return nil, err
	}
	infos := make([]ScriptInfo, 0, 4)
	for _, st := range events.Stages() {
		info := ScriptInfo{Stage: st}
		path, err := Resolve(dir, st)
		var refused *RefusedError
		switch {
		case err == nil:
			info.Present, info.Path = true, path
		case errors.Is(err, ErrNoScript):
		case errors.As(err, &refused):
			info.Present, info.Path, info.Refused = !refused.noScript, refused.Path, refused.Reason
		default:
			return nil, err
		}
		infos = append(infos, info)
	}
	return infos, nil
}

// Resolve returns the real path of the script of stage in dir. It returns ErrNoScript when the
// stage has none, and a *RefusedError when the script is ambiguous or fails a check: it must be a
// regular file whose real path lies inside the real hooks directory, executable, not writable by
// group or others, and owned by root or by the agent's user; the hooks directory and every
// directory above it must pass CheckTrustedPath. An untrusted hooks directory refuses every
// stage, with or without a script: whoever can write there decides what runs.
func Resolve(dir string, stage events.Stage) (string, error) {
	if _, err := events.ParseStage(string(stage)); err != nil {
		return "", err
	}
	root, err := realDir(dir)
	if err != nil {
		return "", err
	}
	var found []string
	for _, suf := range scriptSuffixes {
		p := filepath.Join(dir, string(stage)+suf)
		if _, err := os.Lstat(p); err == nil {
			found = append(found, p)
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", &RefusedError{Stage: stage, Path: p, Reason: err.Error()}
		}
	}
	if reason := checkHooksDir(dir, root); reason != "" {
		if len(found) == 0 {
			return "", &RefusedError{Stage: stage, Path: root, Reason: reason, noScript: true}
		}
		return "", &RefusedError{Stage: stage, Path: found[0], Reason: reason}
	}
	switch len(found) {
	case 0:
		return "", fmt.Errorf("%s in %s: %w", stage, dir, ErrNoScript)
	case 1:
	default:
		return "", &RefusedError{Stage: stage, Path: found[0],
			Reason: "more than one script for the stage: " + strings.Join(found, " and ") + "; keep one"}
	}
	return checkScript(root, stage, found[0])
}

func realDir(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("hooks dir: %w", err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", fmt.Errorf("hooks dir: %w", err)
	}
	fi, err := os.Stat(real)
	if err != nil {
		return "", fmt.Errorf("hooks dir: %w", err)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("hooks dir %s: not a directory", dir)
	}
	return real, nil
}

// checkHooksDir returns why the hooks dir, as configured (dir) and as resolved (root), cannot be
// trusted, or "".
func checkHooksDir(dir, root string) string {
	err := CheckTrustedPath(dir)
	var ut *UntrustedPathError
	switch {
	case err == nil:
		return ""
	case errors.As(err, &ut) && ut.Path == root:
		return "hooks dir " + ut.Error()
	case errors.As(err, &ut):
		return "hooks dir " + root + ": parent dir " + ut.Error()
	default:
		return "hooks dir " + root + ": " + err.Error()
	}
}

// Verify checks again, right before it runs, a script that Resolve returned for stage in dir:
// it must pass every check of Resolve and still be the same path. It returns the refusal.
func Verify(dir string, stage events.Stage, script string) error {
	got, err := Resolve(dir, stage)
	if err != nil {
		var refused *RefusedError
		if errors.As(err, &refused) {
			return err
		}
		return &RefusedError{Stage: stage, Path: script, Reason: err.Error()}
	}
	if got != script {
		return &RefusedError{Stage: stage, Path: script, Reason: "the stage's script is now " + got + "; start the stage again"}
	}
	return nil
}

func checkScript(root string, stage events.Stage, path string) (string, error) {
	refuse := func(format string, a ...any) error {
		return &RefusedError{Stage: stage, Path: path, Reason: fmt.Sprintf(format, a...)}
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", refuse("%v", err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", refuse("cannot resolve its real path: %v", err)
	}
	if !strings.HasPrefix(real, root+string(filepath.Separator)) {
		return "", refuse("real path %s is outside the hooks dir %s", real, root)
	}
	if sub := filepath.Dir(real); sub != root {
		// A subdirectory of the hooks dir: it must be as tight as the hooks dir.
		var ut *UntrustedPathError
		if err := CheckTrustedPath(sub); errors.As(err, &ut) {
			return "", refuse("dir %s", ut.Error())
		} else if err != nil {
			return "", refuse("%v", err)
		}
	}
	fi, err := os.Stat(real)
	if err != nil {
		return "", refuse("%v", err)
	}
	if !fi.Mode().IsRegular() {
		return "", refuse("not a regular file (%s)", fi.Mode().Type())
	}
	mode := fi.Mode().Perm()
	if mode&0o022 != 0 {
		return "", refuse("writable by group or others (mode %04o); chmod go-w it", mode)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		if uid := os.Getuid(); st.Uid != 0 && int(st.Uid) != uid {
			return "", refuse("owned by uid %d, not root or the agent's user (uid %d)", st.Uid, uid)
		}
	}
	if mode&0o111 == 0 || syscall.Access(real, 1 /* X_OK */) != nil {
		return "", refuse("not executable (mode %04o); chmod +x it", mode)
	}
	return real, nil
}
