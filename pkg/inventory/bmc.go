package inventory

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/kvmctl/kvmctl/pkg/bmcconf"
	"github.com/kvmctl/kvmctl/pkg/safetext"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// BMCError is a refused BMC setting; Key is its name in the inventory YAML ("port",
// "actions.off"), so that a file's refusal can name its line.
type BMCError struct {
	Key string
	Err error
}

func (e *BMCError) Error() string { return e.Err.Error() }

// Unwrap returns the reason.
func (e *BMCError) Unwrap() error { return e.Err }

// ValidBMC checks every BMC setting of b that is set, as an operator gives them: a known
// driver, interface and action; an address that is a host name or an IP address; a port from 1
// to 65535; an absolute exec path; templates that split into words (bmcconf.CheckTemplate); no
// control character anywhere. Whether the settings are complete is bmcconf.Missing's question,
// asked of a host's effective settings.
func ValidBMC(b state.BMC) error {
	oneOf := func(key, what, v string, known []string) error {
		if v == "" || slices.Contains(known, v) {
			return nil
		}
		return &BMCError{key, fmt.Errorf("unknown BMC %s %q: use %s", what, v, strings.Join(known, ", "))}
	}
	for _, err := range []error{
		oneOf("driver", "driver", b.Driver, bmcconf.Drivers),
		oneOf("interface", "interface", b.Interface, bmcconf.Interfaces),
		oneOf("action", "action", b.Action, bmcconf.HAActions),
	} {
		if err != nil {
			return err
		}
	}
	if b.Address != "" {
		if err := validBMCAddress(b.Address); err != nil {
			return &BMCError{"address", err}
		}
	}
	if b.Port < 0 || b.Port > 65535 {
		return &BMCError{"port", fmt.Errorf("invalid BMC port %d: use 1 to 65535", b.Port)}
	}
	if err := safetext.Check("BMC username", b.Username); err != nil {
		return &BMCError{"username", err}
	}
	if err := ValidPassword(b.Password); err != nil {
		return &BMCError{"password_file", err}
	}
	if b.Exec != "" {
		if err := safetext.Check("BMC exec program", b.Exec); err != nil {
			return &BMCError{"exec", err}
		}
		if !filepath.IsAbs(b.Exec) {
			return &BMCError{"exec", fmt.Errorf("invalid BMC exec program %q: give its absolute path, it is run without a shell or PATH", b.Exec)}
		}
	}
	for _, a := range slices.Sorted(maps.Keys(b.Actions)) {
		key := "actions." + a
		if !slices.Contains(bmcconf.TemplateActions, a) {
			return &BMCError{key, fmt.Errorf("unknown BMC template action %q: use %s", a, strings.Join(bmcconf.TemplateActions, ", "))}
		}
		if err := bmcconf.CheckTemplate(a, b.Actions[a]); err != nil {
			return &BMCError{key, err}
		}
	}
	return nil
}

// validBMCAddress checks a BMC address: an IP address or a DNS name, without a port (the port
// is a setting of its own).
func validBMCAddress(addr string) error {
	if err := safetext.Check("BMC address", addr); err != nil {
		return err
	}
	if net.ParseIP(addr) != nil {
		return nil
	}
	if h, p, err := net.SplitHostPort(addr); err == nil {
		return fmt.Errorf("invalid BMC address %q: give the host %q alone and the port %s as the port", addr, h, p)
	}
	if len(addr) > 253 || !dnsName.MatchString(addr) {
		return fmt.Errorf("invalid BMC address %q: want a host name or an IP address, e.g. 10.0.0.211", addr)
	}
	return nil
}

// ValidPassword checks a BMC password without ever showing it: printable text, no control
// character (a newline would end it early in the file ipmitool reads).
func ValidPassword(pw string) error {
	var e *safetext.Error
	if errors.As(safetext.Check("password", pw), &e) {
		return fmt.Errorf("invalid BMC password: %s at byte %d (the password is not shown): use printable text", e.Char, e.Offset)
	}
	return nil
}

// maxPassword is the most a password file or pipe may hold: IPMI's passwords have 20 bytes at
// most, an exec program's may be longer, and none is a kilobyte.
const maxPassword = 4096

// ReadPassword reads a BMC password from r, where from names (a password file PATH, standard
// input): the password and at most one newline after it. The errors never show what r holds.
func ReadPassword(r io.Reader, from string) (string, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxPassword+1))
	if err != nil {
		return "", fmt.Errorf("read the password from %s: %w", from, err)
	}
	if len(data) > maxPassword {
		return "", fmt.Errorf("%s holds more than %d bytes: it should hold the password alone", from, maxPassword)
	}
	pw := strings.TrimSuffix(strings.TrimSuffix(string(data), "\n"), "\r")
	if pw == "" {
		return "", fmt.Errorf("%s holds no password", from)
	}
	if err := ValidPassword(pw); err != nil {
		return "", fmt.Errorf("%s: %w", from, err)
	}
	return pw, nil
}

// ReadPasswordFile reads a BMC password from path (see ReadPassword): a regular file that
// neither group nor others may read or write (chmod 600).
func ReadPasswordFile(path string) (string, error) {
	// Without O_NONBLOCK, opening a FIFO would wait for a writer; a regular file ignores it.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return "", fmt.Errorf("password file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("password file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("password file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("password file %s has mode %04o: group or others may read or change it; run `chmod 600 %s`", path, perm, path)
	}
	return ReadPassword(f, "password file "+path)
}

// removeBMC deletes the BMC settings and the HA records of a cluster or host that is removed.
func removeBMC(tx state.Tx, kind, name string) error {
	if err := state.DeleteHA(tx, kind, name); err != nil {
		return err
	}
	return tx.Delete(state.BucketBMC, state.BMCKey(kind, name))
}
