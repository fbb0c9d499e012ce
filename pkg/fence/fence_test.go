package fence

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/kvmctl/kvmctl/pkg/clock"
)

// fakeBMC is a chassis with a power state: off and on take effect after lag status reads (a
// real power supply takes a moment), and it can fail as BMCs do.
type fakeBMC struct {
	mu        sync.Mutex
	power     Power
	pending   Power
	lag       int
	down      bool // does not answer at all
	errOnOff  bool // powers off, but says it failed
	refuseOff bool // says it failed and does nothing
	stuck     bool // accepts off, the power never changes
	log       []string
}

func (b *fakeBMC) record(s string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.down {
		return errors.New("no answer from 127.0.0.1:623")
	}
	b.log = append(b.log, s)
	return nil
}

func (b *fakeBMC) Status(context.Context) (Power, error) {
	if err := b.record("status"); err != nil {
		return PowerUnknown, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.pending != "" {
		if b.lag--; b.lag <= 0 {
			b.power, b.pending = b.pending, ""
		}
	}
	return b.power, nil
}

func (b *fakeBMC) set(p Power, lag int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stuck {
		return
	}
	b.pending, b.lag = p, lag
}

func (b *fakeBMC) Off(context.Context) error {
	if err := b.record("off"); err != nil {
		return err
	}
	if b.refuseOff {
		return errors.New("completion code 0xc0: node busy")
	}
	b.set(PowerOff, 2)
	if b.errOnOff {
		return errors.New("completion code 0xff: unspecified error")
	}
	return nil
}

func (b *fakeBMC) On(context.Context) error {
	if err := b.record("on"); err != nil {
		return err
	}
	b.set(PowerOn, 2)
	return nil
}

func (b *fakeBMC) Reset(context.Context) error    { return b.record("reset") }
func (b *fakeBMC) Soft(context.Context) error     { return b.record("soft") }
func (b *fakeBMC) Identify(context.Context) error { return b.record("identify") }
func (b *fakeBMC) Close() error                   { return nil }

func (b *fakeBMC) sent(cmd string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, s := range b.log {
		if s == cmd {
			n++
		}
	}
	return n
}

func TestExecuteSemantics(t *testing.T) {
	for _, c := range []struct {
		name    string
		bmc     *fakeBMC
		action  Action
		fenced  bool
		errHas  string
		offSent int
		onSent  int
		after   Power
		noteHas string
	}{
		{name: "off", bmc: &fakeBMC{power: PowerOn}, action: ActionOff, fenced: true, offSent: 1, after: PowerOff},
		{name: "already off: nothing sent", bmc: &fakeBMC{power: PowerOff}, action: ActionOff, fenced: true, offSent: 0, after: PowerOff, noteHas: "already off"},
		{name: "error from off, power off", bmc: &fakeBMC{power: PowerOn, errOnOff: true}, action: ActionOff, fenced: true, offSent: 1, after: PowerOff, noteHas: "but the power is confirmed off"},
		{name: "error from off, power on", bmc: &fakeBMC{power: PowerOn, refuseOff: true}, action: ActionOff, errHas: "not fenced: BMC: completion code 0xc0", offSent: 1},
		{name: "BMC down", bmc: &fakeBMC{power: PowerOn, down: true}, action: ActionOff, errHas: "BMC: no answer"},
		{name: "power never confirmed", bmc: &fakeBMC{power: PowerOn, stuck: true}, action: ActionOff, errHas: "not fenced: power not confirmed off within 30s: it still reads on", offSent: 1},
		{name: "reboot: off, confirmed, on", bmc: &fakeBMC{power: PowerOn}, action: ActionReboot, fenced: true, offSent: 1, onSent: 1, after: PowerOn},
		{name: "reboot of an off host: on only", bmc: &fakeBMC{power: PowerOff}, action: ActionReboot, fenced: true, onSent: 1, after: PowerOn},
		{name: "on", bmc: &fakeBMC{power: PowerOff}, action: ActionOn, onSent: 1, after: PowerOn},
		{name: "already on", bmc: &fakeBMC{power: PowerOn}, action: ActionOn, after: PowerOn, noteHas: "already on"},
		{name: "blink", bmc: &fakeBMC{power: PowerOn}, action: ActionBlink},
		{name: "status", bmc: &fakeBMC{power: PowerOn}, action: ActionStatus, after: PowerOn},
		{name: "test against a dead BMC", bmc: &fakeBMC{down: true}, action: ActionTest, errHas: "BMC: no answer"},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := c.bmc
				out, err := Execute(context.Background(), clock.Real(), b, c.action, Timing{Confirm: 30 * time.Second, Poll: time.Second})
				if c.errHas == "" && err != nil || c.errHas != "" && (err == nil || !strings.Contains(err.Error(), c.errHas)) {
					t.Fatalf("Execute = %+v, %v; want error %q", out, err, c.errHas)
				}
				if out.Fenced != c.fenced {
					t.Errorf("fenced = %v, want %v (%+v)", out.Fenced, c.fenced, out)
				}
				if b.sent("off") != c.offSent || b.sent("on") != c.onSent {
					t.Errorf("sent %v; want off %d times, on %d times", b.log, c.offSent, c.onSent)
				}
				if c.after != "" && out.After != c.after {
					t.Errorf("after = %s, want %s", out.After, c.after)
				}
				if !strings.Contains(out.Note, c.noteHas) {
					t.Errorf("note %q, want %q", out.Note, c.noteHas)
				}
				if c.action == ActionBlink && b.sent("identify") != 1 {
					t.Errorf("blink sent %v", b.log)
				}
				for _, s := range b.log {
					if s == "cycle" {
						t.Errorf("a blind power cycle was sent: %v", b.log)
					}
				}
			})
		})
	}
}

// A BMC that stops answering in the middle of the confirmation is no fence either, and the
// wait is bounded by the confirm time, not the BMC.
func TestExecuteBMCLostWhileConfirming(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := &fakeBMC{power: PowerOn, stuck: true}
		go func() {
			<-time.After(3 * time.Second)
			b.mu.Lock()
			b.down = true
			b.mu.Unlock()
		}()
		start := time.Now()
		out, err := Execute(context.Background(), clock.Real(), b, ActionOff, Timing{Confirm: 10 * time.Second, Poll: time.Second})
		if err == nil || out.Fenced || !strings.Contains(err.Error(), "the BMC stopped answering") {
			t.Fatalf("Execute = %+v, %v", out, err)
		}
		if d := time.Since(start); d < 10*time.Second || d > 12*time.Second {
			t.Errorf("gave up after %s, want the confirm time (10 s)", d)
		}
	})
}

func TestParseAction(t *testing.T) {
	if a, err := ParseAction("reboot"); a != ActionReboot || err != nil {
		t.Errorf("ParseAction(reboot) = %v, %v", a, err)
	}
	if _, err := ParseAction("cycle"); err == nil || !strings.Contains(err.Error(), "off, on, reboot") {
		t.Errorf("ParseAction(cycle) = %v", err)
	}
	if !ActionReboot.PowersDown() || ActionOn.PowersDown() || ActionStatus.ChangesPower() || !ActionOn.ChangesPower() {
		t.Error("power classes are off")
	}
}
