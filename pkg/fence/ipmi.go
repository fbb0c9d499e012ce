package fence

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/bougou/go-ipmi/pkg/client"
	"github.com/bougou/go-ipmi/pkg/command/chassis"

	"github.com/kvmctl/kvmctl/pkg/bmcconf"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// ipmiDriver speaks IPMI itself (go-ipmi's client): RMCP+ (lanplus) or IPMI v1.5 (lan) over
// UDP. It keeps one session from the first request to Close.
type ipmiDriver struct {
	b    state.BMC
	host string
	opts Options

	mu sync.Mutex // one request at a time: a session is a sequence of numbered messages
	c  *client.Client
}

func newIPMI(b state.BMC, host string, opts Options) (*ipmiDriver, error) {
	// go-ipmi refuses some settings only when a client is made: find out now, not mid-fence.
	if _, err := client.NewClient(b.Address, b.Port, b.Username, b.Password); err != nil {
		return nil, fmt.Errorf("the BMC settings of host %s: %w", host, err)
	}
	return &ipmiDriver{b: b, host: host, opts: opts}, nil
}

// Status asks Get Chassis Status.
func (d *ipmiDriver) Status(ctx context.Context) (Power, error) {
	p := PowerUnknown
	err := d.do(ctx, "chassis status", func(ctx context.Context, c *client.Client) error {
		res, err := c.GetChassisStatus(ctx)
		if err != nil {
			return err
		}
		p = PowerOff
		if res.PowerIsOn {
			p = PowerOn
		}
		return nil
	})
	return p, err
}

// Off sends Chassis Control "power down".
func (d *ipmiDriver) Off(ctx context.Context) error {
	return d.control(ctx, "power down", chassis.ChassisControlPowerDown)
}

// On sends Chassis Control "power up".
func (d *ipmiDriver) On(ctx context.Context) error {
	return d.control(ctx, "power up", chassis.ChassisControlPowerUp)
}

// Reset sends Chassis Control "hard reset".
func (d *ipmiDriver) Reset(ctx context.Context) error {
	return d.control(ctx, "hard reset", chassis.ChassisControlHardReset)
}

// Soft sends Chassis Control "soft shutdown" (ACPI).
func (d *ipmiDriver) Soft(ctx context.Context) error {
	return d.control(ctx, "soft shutdown", chassis.ChassisControlSoftShutdown)
}

// Identify sends Chassis Identify for the configured number of seconds.
func (d *ipmiDriver) Identify(ctx context.Context) error {
	return d.do(ctx, "chassis identify", func(ctx context.Context, c *client.Client) error {
		_, err := c.ChassisIdentify(ctx, d.opts.IdentifySeconds, false)
		return err
	})
}

// Test opens a session and asks the power status.
func (d *ipmiDriver) Test(ctx context.Context) error {
	_, err := d.Status(ctx)
	return err
}

func (d *ipmiDriver) control(ctx context.Context, what string, c chassis.ChassisControl) error {
	return d.do(ctx, "chassis control "+what, func(ctx context.Context, cl *client.Client) error {
		_, err := cl.ChassisControl(ctx, c)
		return err
	})
}

// Close ends the session, if there is one; it waits at most one Timeout for the BMC.
func (d *ipmiDriver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.c == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), d.opts.Timeout)
	defer cancel()
	err := d.c.Close(ctx)
	d.c = nil
	if err != nil {
		return fmt.Errorf("close the session with host %s's BMC at %s: %w", d.host, d.addr(), err)
	}
	return nil
}

func (d *ipmiDriver) addr() string {
	return net.JoinHostPort(d.b.Address, fmt.Sprint(d.b.Port))
}

// do runs op on a session, making one first if there is none, each attempt within Timeout.
// An attempt the BMC did not answer in time is retried, after a wait on the clock, on a new
// session; so is one that failed on a session kept from before (the BMC may have dropped it).
// Anything else the BMC answered (a wrong password, an error code) is final: retrying a wrong
// password could lock the user out.
func (d *ipmiDriver) do(ctx context.Context, what string, op func(context.Context, *client.Client) error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var last error
	for attempt := 0; attempt < d.opts.Attempts; attempt++ {
		if attempt > 0 {
			if err := d.opts.wait(ctx, attempt-1); err != nil {
				break
			}
		}
		kept := d.c != nil
		actx, cancel := context.WithTimeout(ctx, d.opts.Timeout)
		fresh, err := d.attempt(actx, op)
		// go-ipmi may give up at the deadline a moment before actx says it has passed.
		timedOut := passed(actx) || isTimeout(err)
		cancel()
		if err == nil {
			return nil
		}
		last = err
		switch {
		case timedOut && !passed(ctx):
			last = fmt.Errorf("no answer within %s: %w", d.opts.Timeout, err)
		case fresh && !timedOut:
			last = fmt.Errorf("%w (does the BMC know this username and password? `kvmctl bmc show %s` shows where they come from)", err, d.host)
		}
		d.drop()
		if passed(ctx) || !(timedOut || kept) {
			break
		}
	}
	if passed(ctx) {
		cause := ctx.Err()
		if cause == nil {
			cause = context.DeadlineExceeded
		}
		if !errors.Is(last, cause) {
			last = fmt.Errorf("%w (after: %w)", cause, last)
		}
	}
	return fmt.Errorf("%s of host %s's BMC at %s (ipmi, %s): %w", what, d.host, d.addr(), d.b.Interface, last)
}

// passed reports whether ctx has ended or its deadline has passed.
func passed(ctx context.Context) bool {
	at, ok := ctx.Deadline()
	return ctx.Err() != nil || ok && !time.Now().Before(at)
}

// attempt makes a session when there is none, then runs op; fresh reports that opening the
// session failed.
func (d *ipmiDriver) attempt(ctx context.Context, op func(context.Context, *client.Client) error) (fresh bool, err error) {
	if d.c == nil {
		c, err := client.NewClient(d.b.Address, d.b.Port, d.b.Username, d.b.Password)
		if err != nil {
			return true, err
		}
		intf := client.InterfaceLanplus
		if d.b.Interface == bmcconf.InterfaceLan {
			intf = client.InterfaceLan
		}
		// One datagram per message: the retries are do's, with their backoff.
		c.WithInterface(intf).WithTimeout(d.opts.Timeout).WithRetry(0)
		d.c = c
		if err := c.Connect(ctx); err != nil {
			// go-ipmi lists what each cipher suite got, a line each.
			return true, fmt.Errorf("open session: %w", flatError{err})
		}
	}
	return false, op(ctx, d.c)
}

// drop forgets a session that failed, closing it without waiting for the BMC.
func (d *ipmiDriver) drop() {
	if d.c == nil {
		return
	}
	done, cancel := context.WithCancel(context.Background())
	cancel()
	_ = d.c.Close(done)
	d.c = nil
}

// isTimeout reports whether err says that an answer did not come in time.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// flatError is an error whose message is on one line.
type flatError struct{ err error }

func (e flatError) Error() string { return strings.Join(strings.Fields(e.err.Error()), " ") }
func (e flatError) Unwrap() error { return e.err }
