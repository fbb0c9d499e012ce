package virt

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"unicode"
)

// pathKind says where a file the guest gets from the host may lie.
type pathKind int

const (
	// diskFile: a disk, cdrom, backing store, kernel, initrd or dtb: inside vm.disk.dirs.
	diskFile pathKind = iota
	// firmwareFile: a firmware loader or nvram template: inside vm.disk.dirs or the
	// distributions' firmware directories (read-only files of the host's packages).
	firmwareFile
	// nvramFile: a VM's own UEFI variable store, which libvirt creates and writes: inside
	// vm.disk.dirs or libvirt's nvram directory.
	nvramFile
)

// firmwareDirs are where Debian, Ubuntu, Fedora and RHEL install OVMF, AAVMF, SeaBIOS and qemu's
// firmware.
var firmwareDirs = []string{"/usr/share/OVMF", "/usr/share/AAVMF", "/usr/share/edk2", "/usr/share/qemu", "/usr/share/seabios"}

// nvramDirs is libvirt's own directory of per-VM variable stores.
var nvramDirs = []string{"/var/lib/libvirt/qemu/nvram"}

// hostPaths is where, on this host, each kind of file may lie, symbolic links resolved.
type hostPaths struct {
	diskDirs []string // as configured, for messages
	dirs     map[pathKind][]string
}

func newHostPaths(diskDirs []string) *hostPaths {
	h := &hostPaths{diskDirs: diskDirs, dirs: map[pathKind][]string{}}
	disk := resolveAll(diskDirs)
	h.dirs[diskFile] = disk
	h.dirs[firmwareFile] = append(append([]string{}, disk...), resolveAll(firmwareDirs)...)
	h.dirs[nvramFile] = append(append([]string{}, disk...), resolveAll(nvramDirs)...)
	return h
}

func resolveAll(dirs []string) []string {
	out := make([]string, 0, len(dirs))
	for _, d := range dirs {
		if r, err := filepath.EvalSymlinks(d); err == nil {
			d = r
		}
		out = append(out, filepath.Clean(d))
	}
	return out
}

// where names the allowed directories of a kind for a message.
func (h *hostPaths) where(kind pathKind) string {
	s := fmt.Sprintf("vm.disk.dirs (%s)", strings.Join(h.diskDirs, ", "))
	switch kind {
	case firmwareFile:
		s += fmt.Sprintf(" and the firmware directories (%s)", strings.Join(firmwareDirs, ", "))
	case nvramFile:
		s += fmt.Sprintf(" and libvirt's nvram directory (%s)", strings.Join(nvramDirs, ", "))
	}
	return s
}

// pathCheck checks an attribute that names a host file of the given kind.
func pathCheck(what string, kind pathKind) func(c *checker, where, value string) error {
	return func(c *checker, _ string, value string) error { return c.path(what, kind, value) }
}

// pathText checks an element whose text names a host file of the given kind. libvirt reads the
// text as it is, so no white space is trimmed.
func pathText(what string, kind pathKind) func(c *checker, where, text string) error {
	return func(c *checker, _, text string) error {
		if text == "" {
			return nil // libvirt's default, or a firmware it picks itself
		}
		return c.path(what, kind, text)
	}
}

// path checks one host path: absolute, clean, printable and, on a host, inside the allowed
// directories once every symbolic link in it is resolved, and a regular file if it exists.
func (c *checker) path(what string, kind pathKind, p string) error {
	if !filepath.IsAbs(p) || filepath.Clean(p) != p || strings.IndexFunc(p, func(r rune) bool { return unicode.IsControl(r) || r == unicode.ReplacementChar }) >= 0 {
		return refuse("%s: %s %q is not a clean absolute path", c.device, what, p)
	}
	if c.paths == nil {
		return nil
	}
	real, err := resolve(p)
	if err != nil {
		return refuse("%s: %s %s cannot be resolved: %v", c.device, what, p, err)
	}
	if !inside(real, c.paths.dirs[kind]) {
		if real != p {
			return refuse("%s: %s %s (%s) is outside %s", c.device, what, p, real, c.paths.where(kind))
		}
		return refuse("%s: %s %s is outside %s", c.device, what, p, c.paths.where(kind))
	}
	fi, err := os.Stat(real)
	if err == nil && !fi.Mode().IsRegular() {
		return refuse("%s: %s %s is not a regular file (%s): use an image file", c.device, what, p, fi.Mode().Type())
	}
	return nil
}

// resolve resolves every symbolic link in the clean absolute path p. A path that does not exist
// yet (an nvram file libvirt will create) resolves its longest existing parent, so that a link
// to /etc inside vm.disk.dirs cannot name a file under /etc.
func resolve(p string) (string, error) {
	real, err := filepath.EvalSymlinks(p)
	if err == nil {
		return real, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	if _, lerr := os.Lstat(p); lerr == nil {
		// p exists but is a dangling link: where it points decides.
		target, rerr := os.Readlink(p)
		if rerr != nil {
			return "", rerr
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(p), target)
		}
		return "", fmt.Errorf("it is a dangling symbolic link to %s", filepath.Clean(target))
	}
	dir := filepath.Dir(p)
	if dir == p {
		return p, nil
	}
	parent, err := resolve(dir)
	if err != nil {
		return "", err
	}
	return filepath.Join(parent, filepath.Base(p)), nil
}

// inside reports whether the clean path p is one of dirs or below one.
func inside(p string, dirs []string) bool {
	for _, d := range dirs {
		if p == d || strings.HasPrefix(p, strings.TrimSuffix(d, "/")+"/") {
			return true
		}
	}
	return false
}
