package fence

import (
	"context"
	"fmt"
	"math"
	"strconv"

	"github.com/kvmctl/kvmctl/pkg/state"
)

// ipmitoolDriver runs Debian's ipmitool, once per request, without a shell. The password
// reaches it through its environment (-E reads IPMI_PASSWORD), never its arguments, which
// every local user can read. ipmitool retries itself (-N seconds between retransmissions, -R
// tries); the whole run is bounded by Options.Budget.
type ipmitoolDriver struct {
	b    state.BMC
	host string
	opts Options
}

func newIPMITool(b state.BMC, host string, opts Options) *ipmitoolDriver {
	return &ipmitoolDriver{b: b, host: host, opts: opts}
}

// argv is ipmitool's command line for the subcommand args.
func (d *ipmitoolDriver) argv(args ...string) []string {
	secs := max(1, int(math.Ceil(d.opts.Timeout.Seconds())))
	out := []string{d.opts.IPMITool, "-I", d.b.Interface, "-H", d.b.Address, "-p", strconv.Itoa(d.b.Port)}
	if d.b.Username != "" {
		out = append(out, "-U", d.b.Username)
	}
	if d.b.Password != "" {
		out = append(out, "-E")
	}
	out = append(out, "-N", strconv.Itoa(secs), "-R", strconv.Itoa(d.opts.Attempts))
	return append(out, args...)
}

// run runs one ipmitool subcommand and returns its output.
func (d *ipmitoolDriver) run(ctx context.Context, what string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, d.opts.Budget())
	defer cancel()
	p := program{argv: d.argv(args...), secret: d.b.Password}
	if d.b.Password != "" {
		p.env = []string{"IPMI_PASSWORD=" + d.b.Password}
	}
	out, err := p.run(ctx)
	if err != nil {
		return out, fmt.Errorf("%s of host %s's BMC at %s (ipmitool, %s): %w", what, d.host, d.b.Address, d.b.Interface, err)
	}
	return out, nil
}

// Status runs `chassis power status` and reads "Chassis Power is on|off".
func (d *ipmitoolDriver) Status(ctx context.Context) (Power, error) {
	out, err := d.run(ctx, "chassis power status", "chassis", "power", "status")
	return powerOf(out, err, fmt.Sprintf("chassis power status of host %s's BMC (ipmitool)", d.host))
}

// Off runs `chassis power off`.
func (d *ipmitoolDriver) Off(ctx context.Context) error { return d.power(ctx, "off") }

// On runs `chassis power on`.
func (d *ipmitoolDriver) On(ctx context.Context) error { return d.power(ctx, "on") }

// Reset runs `chassis power reset`.
func (d *ipmitoolDriver) Reset(ctx context.Context) error { return d.power(ctx, "reset") }

// Soft runs `chassis power soft`.
func (d *ipmitoolDriver) Soft(ctx context.Context) error { return d.power(ctx, "soft") }

func (d *ipmitoolDriver) power(ctx context.Context, verb string) error {
	_, err := d.run(ctx, "chassis power "+verb, "chassis", "power", verb)
	return err
}

// Identify runs `chassis identify SECONDS`.
func (d *ipmitoolDriver) Identify(ctx context.Context) error {
	_, err := d.run(ctx, "chassis identify", "chassis", "identify", strconv.Itoa(int(d.opts.IdentifySeconds)))
	return err
}

// Test asks the power status.
func (d *ipmitoolDriver) Test(ctx context.Context) error {
	_, err := d.Status(ctx)
	return err
}

// Close does nothing: every run of ipmitool opens and closes its own session.
func (d *ipmitoolDriver) Close() error { return nil }
