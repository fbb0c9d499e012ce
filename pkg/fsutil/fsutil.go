// Package fsutil holds the one way kvmctl and kvmagent replace a file that must survive a crash,
// and the one rule for a file that must be its owner's alone (a key, a secret).
package fsutil

import (
	"os"
	"path/filepath"
)

// WriteFileAtomic replaces path with data so that a crash leaves either the old or the new
// content, never a mix: temp file in the same directory, chmod, fsync, rename, fsync the
// directory.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = os.Remove(f.Name())
		}
	}()
	if _, err = f.Write(data); err != nil {
		_ = f.Close()
		return err
	}
	if err = f.Chmod(perm); err != nil {
		_ = f.Close()
		return err
	}
	if err = f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(f.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Exposure says who besides its owner may reach a file of mode perm ("readable by others",
// "readable by group", "accessible by group or others"), or "" when nobody may: a private key or
// a secret file must be its owner's alone.
func Exposure(perm os.FileMode) string {
	switch perm = perm.Perm(); {
	case perm&0o077 == 0:
		return ""
	case perm&0o004 != 0:
		return "readable by others"
	case perm&0o040 != 0:
		return "readable by group"
	}
	return "accessible by group or others"
}
