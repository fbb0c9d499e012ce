package hooks

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// UntrustedPathError reports a file or directory that someone other than root or the agent's
// user could replace, and how to fix it.
type UntrustedPathError struct {
	// Path is the file or directory at fault: the one checked or one of its parents.
	Path string
	// Problem says what is wrong, e.g. "is writable by others (mode 0777)".
	Problem string
	// Fix is the command that fixes it.
	Fix string
}

// Error returns "<path> <problem>: <fix>".
func (e *UntrustedPathError) Error() string {
	return e.Path + " " + e.Problem + ": " + e.Fix
}

// CheckTrustedPath checks that only root or the agent's user can change what path names: path
// itself must be owned by root or the agent's uid and not writable by group or others, and so
// must every directory above it up to /, where a sticky directory (like /tmp, mode 1777) may be
// writable by others because nobody can rename or remove what another user put in it. Both the
// directories of path as written and those of its real path (symlinks resolved) are checked: a
// symlink is only as safe as the directory that holds it. It returns an *UntrustedPathError,
// or another error when path cannot be resolved.
func CheckTrustedPath(path string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return err
	}
	if err := checkTrusted(real, false); err != nil {
		return err
	}
	for _, leaf := range []string{real, abs} {
		for d := filepath.Dir(leaf); ; d = filepath.Dir(d) {
			if err := checkTrusted(d, true); err != nil {
				return err
			}
			if d == filepath.Dir(d) {
				break
			}
		}
	}
	return nil
}

// checkTrusted checks one file or directory (symlinks followed); stickyOK lets a sticky
// directory be writable by others.
func checkTrusted(path string, stickyOK bool) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	mode := fi.Mode()
	bits := uint32(mode.Perm())
	if mode&os.ModeSticky != 0 {
		bits |= 0o1000
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		if uid := os.Getuid(); st.Uid != 0 && int(st.Uid) != uid {
			owner := "root"
			if uid != 0 {
				owner = fmt.Sprintf("root or uid %d", uid)
			}
			return &UntrustedPathError{Path: path,
				Problem: fmt.Sprintf("is owned by uid %d, not root or the agent's user (uid %d)", st.Uid, uid),
				Fix:     fmt.Sprintf("chown it to %s (chown %d %s)", owner, uid, path)}
		}
	}
	if mode.Perm()&0o022 == 0 || (stickyOK && fi.IsDir() && mode&os.ModeSticky != 0) {
		return nil
	}
	who := "group"
	if mode.Perm()&0o002 != 0 {
		who = "others"
	}
	return &UntrustedPathError{Path: path,
		Problem: fmt.Sprintf("is writable by %s (mode %04o)", who, bits),
		Fix:     "chmod go-w " + path}
}
