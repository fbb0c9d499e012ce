package fence

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"

	"github.com/kvmctl/kvmctl/pkg/bmcconf"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// execDriver runs the operator's program through a template per action (seed 002), or
// bmcconf.DefaultTemplate with the exec program: split into words once, variables substituted inside
// the words, run without a shell. $IPMI_PASSWORD_FILE is a file of mode 0600 that holds the
// password while the program runs and is removed afterwards.
type execDriver struct {
	b     state.BMC
	host  string
	opts  Options
	tmpls map[string]*bmcconf.Template
}

func newExec(b state.BMC, host string, opts Options) *execDriver {
	return &execDriver{b: b, host: host, opts: opts, tmpls: bmcconf.Templates(b)}
}

// Status runs the status template; its output says on or off (see parsePower).
func (d *execDriver) Status(ctx context.Context) (Power, error) {
	out, err := d.run(ctx, "status")
	return powerOf(out, err, fmt.Sprintf("status of host %s's BMC (exec)", d.host))
}

// Off runs the off template.
func (d *execDriver) Off(ctx context.Context) error { return d.action(ctx, "off") }

// On runs the on template.
func (d *execDriver) On(ctx context.Context) error { return d.action(ctx, "on") }

// Reset runs the reboot template.
func (d *execDriver) Reset(ctx context.Context) error { return d.action(ctx, "reboot") }

// Soft is not one of seed 002's actions: ErrUnsupported.
func (d *execDriver) Soft(ctx context.Context) error {
	return fmt.Errorf("soft shutdown of host %s's BMC (exec): %w: the exec driver has no soft action", d.host, ErrUnsupported)
}

// Identify runs the blink template.
func (d *execDriver) Identify(ctx context.Context) error { return d.action(ctx, "blink") }

// Test runs the test template.
func (d *execDriver) Test(ctx context.Context) error { return d.action(ctx, "test") }

// Close does nothing: every action is a program run of its own.
func (d *execDriver) Close() error { return nil }

func (d *execDriver) action(ctx context.Context, a string) error {
	_, err := d.run(ctx, a)
	return err
}

// run runs the template of action a within Options.Budget and returns its stdout.
func (d *execDriver) run(ctx context.Context, a string) (string, error) {
	t, ok := d.tmpls[a]
	if !ok {
		return "", fmt.Errorf("%s of host %s's BMC (exec): %w: no %s template and no exec program (kvmctl bmc set --host %s --action-%s T)",
			a, d.host, ErrUnsupported, a, d.host, a)
	}
	vals := map[string]string{
		bmcconf.VarExec: d.b.Exec, bmcconf.VarUsername: d.b.Username, bmcconf.VarPassword: d.b.Password, bmcconf.VarAction: a,
		bmcconf.VarHost: d.b.Address, bmcconf.VarPort: strconv.Itoa(d.b.Port), bmcconf.VarInterface: d.b.Interface,
	}
	if slices.Contains(t.Vars(), bmcconf.VarPasswordFile) {
		path, err := d.passwordFile()
		if err != nil {
			return "", fmt.Errorf("%s of host %s's BMC (exec): %w", a, d.host, err)
		}
		defer os.Remove(path)
		vals[bmcconf.VarPasswordFile] = path
	}
	ctx, cancel := context.WithTimeout(ctx, d.opts.Budget())
	defer cancel()
	out, err := program{argv: t.Expand(vals), secret: d.b.Password}.run(ctx)
	if err != nil {
		return out, fmt.Errorf("%s of host %s's BMC (exec): %w", a, d.host, err)
	}
	return out, nil
}

// passwordFile writes the password to a new file that only this user can read (CreateTemp
// makes it 0600) and returns its path; the caller removes it.
func (d *execDriver) passwordFile() (string, error) {
	f, err := os.CreateTemp(d.opts.TempDir, "kvmctl-bmc-*")
	if err != nil {
		return "", fmt.Errorf("password file: %w", err)
	}
	_, werr := f.WriteString(d.b.Password)
	cerr := f.Close()
	if werr != nil || cerr != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("password file %s: %w", f.Name(), errors.Join(werr, cerr))
	}
	return f.Name(), nil
}
