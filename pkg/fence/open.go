package fence

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/kvmctl/kvmctl/pkg/backoff"
	"github.com/kvmctl/kvmctl/pkg/bmcconf"
	"github.com/kvmctl/kvmctl/pkg/clock"
	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// Options bound and equip a driver; the zero value means the defaults.
type Options struct {
	// Timeout bounds one attempt: setting up a session and one request (default 5s). A network
	// deadline is wall time, so it is the time package's, whatever Clock is.
	Timeout time.Duration
	// Attempts is how often a request the BMC did not answer in time is made before giving up
	// (default 3). An answer that refuses (a wrong password, an error code) is not retried.
	Attempts int
	// Backoff is the wait before the first retry, doubled for each next one up to four times
	// itself, less up to a quarter at random (default 500ms).
	Backoff time.Duration
	// Clock is what the waits between attempts take time from (default the real clock).
	Clock clock.Clock
	// IPMITool is the ipmitool program of the ipmitool driver (default "ipmitool", on PATH).
	IPMITool string
	// TempDir is where the exec driver writes $IPMI_PASSWORD_FILE (default os.TempDir()).
	TempDir string
	// IdentifySeconds is how long Identify lights the chassis LED (default 15, IPMI's own).
	IdentifySeconds uint8
}

// Defaults of Options.
const (
	DefaultTimeout         = 5 * time.Second
	DefaultAttempts        = 3
	DefaultBackoff         = 500 * time.Millisecond
	DefaultIdentifySeconds = 15
)

func (o Options) withDefaults() Options {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Attempts <= 0 {
		o.Attempts = DefaultAttempts
	}
	if o.Backoff <= 0 {
		o.Backoff = DefaultBackoff
	}
	o.Clock = clock.OrReal(o.Clock)
	if o.IPMITool == "" {
		o.IPMITool = "ipmitool"
	}
	if o.TempDir == "" {
		o.TempDir = os.TempDir()
	}
	if o.IdentifySeconds == 0 {
		o.IdentifySeconds = DefaultIdentifySeconds
	}
	return o
}

// Budget is the longest one driver call may take with these options: every attempt, and the
// longest waits between them. The ipmitool and exec drivers give their program this long.
func (o Options) Budget() time.Duration {
	o = o.withDefaults()
	d := time.Duration(o.Attempts) * o.Timeout
	for i := 0; i < o.Attempts-1; i++ {
		d += min(o.Backoff<<i, 4*o.Backoff)
	}
	return d
}

// wait sleeps, on the options' clock, before retry number retry (0 for the first).
func (o Options) wait(ctx context.Context, retry int) error {
	return clock.Sleep(ctx, o.Clock, backoff.Delay(retry, o.Backoff, 4*o.Backoff))
}

// Tester is a driver that can check its BMC without changing anything: seed 002's "test"
// action. The exec driver runs its test template; ipmi and ipmitool ask the power status.
type Tester interface {
	Test(ctx context.Context) error
}

// IPMI limits on the credentials (IPMI v2.0 §13.29: 16-byte user names, 20-byte passwords;
// IPMI v1.5 passwords have 16).
const (
	maxUsername      = 16
	maxPassword      = 20
	maxPasswordLan15 = 16
)

// Open builds the driver of a host's effective BMC settings (see Effective). Settings that
// lack what their driver needs are refused with an error naming each missing field and the
// command that sets it; so are settings that driver cannot use. Nothing is sent to the BMC
// until a method is called.
func Open(b state.BMC, host string, opts Options) (Driver, error) {
	b = bmcconf.WithDefaults(b)
	if missing := Missing(b); len(missing) > 0 {
		return nil, errs.Refused(incomplete(host, missing))
	}
	if err := usable(b); err != nil {
		return nil, errs.Refusedf("the BMC settings of host %s: %w", host, err)
	}
	opts = opts.withDefaults()
	switch b.Driver {
	case bmcconf.DriverIPMITool:
		return newIPMITool(b, host, opts), nil
	case bmcconf.DriverExec:
		return newExec(b, host, opts), nil
	default:
		return newIPMI(b, host, opts)
	}
}

// usable checks what the driver of b needs of its values; the values themselves were checked
// when they were set (pkg/inventory's ValidBMC).
func usable(b state.BMC) error {
	if !slices.Contains(bmcconf.Drivers, b.Driver) {
		return fmt.Errorf("unknown driver %q: use %s", b.Driver, strings.Join(bmcconf.Drivers, ", "))
	}
	if b.Driver == bmcconf.DriverExec {
		return nil
	}
	if !slices.Contains(bmcconf.Interfaces, b.Interface) {
		return fmt.Errorf("unknown interface %q: use %s", b.Interface, strings.Join(bmcconf.Interfaces, " or "))
	}
	if len(b.Username) > maxUsername {
		return fmt.Errorf("the username has %d bytes: IPMI allows %d", len(b.Username), maxUsername)
	}
	limit := maxPassword
	if b.Interface == bmcconf.InterfaceLan {
		limit = maxPasswordLan15
	}
	if len(b.Password) > limit {
		return fmt.Errorf("the password has %d bytes: IPMI over %s allows %d", len(b.Password), b.Interface, limit)
	}
	return nil
}

var (
	_ Tester = (*ipmiDriver)(nil)
	_ Tester = (*ipmitoolDriver)(nil)
	_ Tester = (*execDriver)(nil)
	_ Driver = (*ipmiDriver)(nil)
	_ Driver = (*ipmitoolDriver)(nil)
	_ Driver = (*execDriver)(nil)
)
