package fence

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/kvmctl/kvmctl/pkg/clock"
)

// Action is what an operator, or HA, asks of a host's BMC.
type Action string

// Actions (seed 002's do nothing, power off, reboot and blink, and the rest of what a BMC does).
const (
	ActionStatus Action = "status"
	ActionTest   Action = "test"
	ActionOff    Action = "off"
	ActionOn     Action = "on"
	ActionReboot Action = "reboot"
	ActionReset  Action = "reset"
	ActionSoft   Action = "soft"
	ActionBlink  Action = "blink"
)

// Actions lists every action, in the order help shows them.
func Actions() []Action {
	return []Action{ActionOff, ActionOn, ActionReboot, ActionReset, ActionSoft, ActionBlink, ActionStatus, ActionTest}
}

// ParseAction returns the action named s, or an error listing the valid ones.
func ParseAction(s string) (Action, error) {
	names := make([]string, 0, 8)
	for _, a := range Actions() {
		if string(a) == s {
			return a, nil
		}
		names = append(names, string(a))
	}
	return "", fmt.Errorf("unknown action %q: one of %s", s, strings.Join(names, ", "))
}

// ChangesPower reports whether a changes the host's power (asks for confirmation, is audited).
func (a Action) ChangesPower() bool {
	switch a {
	case ActionOff, ActionOn, ActionReboot, ActionReset, ActionSoft:
		return true
	}
	return false
}

// PowersDown reports whether a takes the host down: these count against the rate cap (seed 002:
// "no more than 3 power downs within 1 hour").
func (a Action) PowersDown() bool {
	switch a {
	case ActionOff, ActionReboot, ActionReset, ActionSoft:
		return true
	}
	return false
}

// Outcome is what an action did, as the BMC reported it.
type Outcome struct {
	Action Action `json:"action"`
	// Before is the power state before anything was sent; After the last one read.
	Before Power `json:"power_before"`
	After  Power `json:"power_after"`
	// Sent lists the BMC requests in order (status, off, status, ...): what was done, for the
	// audit record.
	Sent []string `json:"sent"`
	// Fenced: the host's power was confirmed off (off, reboot) — the only thing HA may act on.
	Fenced bool   `json:"fenced"`
	Note   string `json:"note,omitempty"`
}

// Timing bounds an action: Confirm is how long the power state may take to show the change
// (kvm.ha.fence.timeout), Poll the pause between two status reads.
type Timing struct {
	Confirm time.Duration
	Poll    time.Duration
}

func (t Timing) withDefaults() Timing {
	if t.Confirm <= 0 {
		t.Confirm = 30 * time.Second
	}
	if t.Poll <= 0 {
		t.Poll = time.Second
	}
	return t
}

// Execute does a on d with fence_ipmilan's semantics, which CloudStack lacked in #12921 and
// #13376: status first, and an already-off host counts as fenced with nothing sent; off, then
// status polled until the power is confirmed off; an error from off while status says off still
// counts as fenced; reboot is off, confirmed off, then on — never a blind cycle, which may report
// success before the power is off. A BMC that does not answer, or a power state that is never
// confirmed, is an error: never "fenced".
func Execute(ctx context.Context, clk clock.Clock, d Driver, a Action, t Timing) (Outcome, error) {
	t = t.withDefaults()
	out := Outcome{Action: a, Before: PowerUnknown, After: PowerUnknown}
	status := func() (Power, error) {
		out.Sent = append(out.Sent, "status")
		p, err := d.Status(ctx)
		if err == nil {
			out.After = p
		}
		return p, err
	}
	// waitFor polls status until the power is want, within the confirm time.
	waitFor := func(want Power) error {
		cctx, cancel := clock.WithTimeout(ctx, clk, t.Confirm)
		defer cancel()
		var last error
		for {
			p, err := status()
			if err == nil && p == want {
				return nil
			}
			last = err
			if clock.Sleep(cctx, clk, t.Poll) != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if last != nil {
					return fmt.Errorf("power not confirmed %s within %s: the BMC stopped answering: %w", want, t.Confirm, last)
				}
				return fmt.Errorf("power not confirmed %s within %s: it still reads %s", want, t.Confirm, out.After)
			}
		}
	}
	send := func(name string, op func(context.Context) error) error {
		out.Sent = append(out.Sent, name)
		return op(ctx)
	}

	switch a {
	case ActionTest:
		// A driver with a test of its own (the exec driver's "test" template) runs it; every
		// driver then shows it can read the power.
		if tr, ok := d.(Tester); ok {
			out.Sent = append(out.Sent, "test")
			if err := tr.Test(ctx); err != nil && !errors.Is(err, ErrUnsupported) {
				return out, bmcErr(err)
			}
		}
		p, err := status()
		out.Before = p
		if err != nil {
			return out, bmcErr(err)
		}
		return out, nil
	case ActionStatus:
		p, err := status()
		out.Before = p
		if err != nil {
			return out, bmcErr(err)
		}
		return out, nil
	case ActionBlink:
		if err := send("identify", d.Identify); err != nil {
			return out, bmcErr(err)
		}
		return out, nil
	}

	before, err := status()
	if err != nil {
		return out, bmcErr(err)
	}
	out.Before = before
	switch a {
	case ActionOff, ActionReboot:
		if err := powerOff(&out, before, send, status, waitFor, d); err != nil {
			return out, err
		}
		out.Fenced = true
		if a == ActionOff {
			return out, nil
		}
		onErr := send("on", d.On)
		if err := waitFor(PowerOn); err != nil {
			if onErr != nil {
				err = fmt.Errorf("power on failed: %w", bmcErr(onErr))
			}
			return out, fmt.Errorf("fenced (power confirmed off), but %w", err)
		}
		return out, nil
	case ActionOn:
		if before == PowerOn {
			out.Note = "already on: nothing sent"
			return out, nil
		}
		onErr := send("on", d.On)
		if err := waitFor(PowerOn); err != nil {
			if onErr != nil {
				return out, bmcErr(onErr)
			}
			return out, err
		}
		return out, nil
	case ActionReset:
		if before == PowerOff {
			return out, errors.New("the host is off: a reset does nothing; use on")
		}
		if err := send("reset", d.Reset); err != nil {
			return out, bmcErr(err)
		}
		return out, nil
	case ActionSoft:
		if before == PowerOff {
			out.Note = "already off: nothing sent"
			return out, nil
		}
		if err := send("soft", d.Soft); err != nil {
			return out, bmcErr(err)
		}
		if err := waitFor(PowerOff); err != nil {
			return out, fmt.Errorf("soft shutdown asked, but %w (the OS may ignore it: off does not)", err)
		}
		return out, nil
	}
	return out, fmt.Errorf("unknown action %q", a)
}

// powerOff takes a host whose power read before to confirmed off.
func powerOff(out *Outcome, before Power, send func(string, func(context.Context) error) error, status func() (Power, error),
	waitFor func(Power) error, d Driver) error {
	if before == PowerOff {
		out.Note = "already off: nothing sent"
		return nil
	}
	if err := send("off", d.Off); err != nil {
		// An error from off with the power off is a fence (fence_ipmilan): the BMC acted and
		// failed to say so. Whether it acted shows within the confirm time.
		if waitFor(PowerOff) == nil {
			out.Note = "off returned an error (" + firstLine(err.Error()) + ") but the power is confirmed off"
			return nil
		}
		return fmt.Errorf("not fenced: %w; the power still reads %s", bmcErr(err), out.After)
	}
	if err := waitFor(PowerOff); err != nil {
		return fmt.Errorf("not fenced: %w", err)
	}
	return nil
}

func bmcErr(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("BMC: %w", err)
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
