package fence

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kvmctl/kvmctl/pkg/bmcconf"
	"github.com/kvmctl/kvmctl/pkg/clock"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// fast are options for a BMC on 127.0.0.1: it answers in microseconds, or never.
var fast = Options{Timeout: 300 * time.Millisecond, Attempts: 2, Backoff: 10 * time.Millisecond}

func open(t *testing.T, b state.BMC, opts Options) Driver {
	t.Helper()
	d, err := Open(b, "h1", opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

// Every Driver method of the native driver reaches a real BMC, over RMCP+ and over IPMI v1.5,
// as the chassis request the Driver documents.
func TestIPMIDriverDrivesTheChassis(t *testing.T) {
	for _, intf := range []string{bmcconf.InterfaceLanplus, bmcconf.InterfaceLan} {
		t.Run(intf, func(t *testing.T) {
			bmc := startBMC(t)
			d := open(t, bmc.settings(bmcconf.DriverIPMI, intf), fast)
			ctx := context.Background()
			if p, err := d.Status(ctx); err != nil || p != PowerOn {
				t.Fatalf("Status = %v, %v; want on", p, err)
			}
			for _, step := range []func(context.Context) error{d.Off, d.On, d.Reset, d.Soft, d.Identify} {
				if err := step(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if err := d.Off(ctx); err != nil {
				t.Fatal(err)
			}
			if p, err := d.Status(ctx); err != nil || p != PowerOff {
				t.Fatalf("Status after Off = %v, %v; want off", p, err)
			}
			if err := d.(Tester).Test(ctx); err != nil {
				t.Fatal(err)
			}
			want := []string{"power down", "power up", "hard reset", "soft shutdown", "identify 15", "power down"}
			if diff := cmp.Diff(want, bmc.chassis.Calls()); diff != "" {
				t.Errorf("the chassis was told (-want +got):\n%s", diff)
			}
			if err := d.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			// A closed driver opens a new session when used again.
			if _, err := d.Status(ctx); err != nil {
				t.Errorf("Status after Close: %v", err)
			}
		})
	}
}

// A wrong password is refused by the BMC, at once: it is not retried (a BMC may lock the user
// out), the chassis is told nothing, and the error never shows either password.
func TestIPMIDriverWrongPassword(t *testing.T) {
	for _, intf := range []string{bmcconf.InterfaceLanplus, bmcconf.InterfaceLan} {
		t.Run(intf, func(t *testing.T) {
			bmc := startBMC(t)
			b := bmc.settings(bmcconf.DriverIPMI, intf)
			b.Password = "not-the-Pw"
			opts := fast
			opts.Timeout = 2 * time.Second
			d := open(t, b, opts)
			start := time.Now()
			err := d.Off(context.Background())
			if err == nil {
				t.Fatal("Off with a wrong password succeeded")
			}
			t.Logf("error: %v (after %s)", err, time.Since(start))
			if strings.Contains(err.Error(), b.Password) || strings.Contains(err.Error(), testPassword) {
				t.Errorf("the error shows a password: %v", err)
			}
			if calls := bmc.chassis.Calls(); len(calls) != 0 {
				t.Errorf("the chassis was told %q", calls)
			}
			if intf == bmcconf.InterfaceLanplus && time.Since(start) >= opts.Timeout {
				t.Errorf("a refused login took %s: it was waited on or retried", time.Since(start))
			}
		})
	}
}

// A BMC that does not answer fails a call within the configured bound: every attempt within
// Timeout, and the waits between them.
func TestIPMIDriverTimeoutIsBounded(t *testing.T) {
	for _, intf := range []string{bmcconf.InterfaceLanplus, bmcconf.InterfaceLan} {
		t.Run(intf, func(t *testing.T) {
			b := state.BMC{Address: "127.0.0.1", Port: silentPort(t), Username: testUser, Password: testPassword, Interface: intf}
			opts := Options{Timeout: 200 * time.Millisecond, Attempts: 3, Backoff: 20 * time.Millisecond}
			d := open(t, b, opts)
			start := time.Now()
			p, err := d.Status(context.Background())
			took := time.Since(start)
			if err == nil || p != PowerUnknown {
				t.Fatalf("Status of a silent BMC = %v, %v", p, err)
			}
			if !strings.Contains(err.Error(), "no answer within 200ms") {
				t.Errorf("error = %v; want it to say no answer came in time", err)
			}
			if took < 3*opts.Timeout || took > opts.Budget()+time.Second {
				t.Errorf("Status took %s; want 3 attempts of %s, at most %s in all", took, opts.Timeout, opts.Budget())
			}
		})
	}
}

// The caller's context bounds a call too, retries and waits included.
func TestIPMIDriverHonoursContext(t *testing.T) {
	b := state.BMC{Address: "127.0.0.1", Port: silentPort(t), Username: testUser, Password: testPassword}
	d := open(t, b, Options{Timeout: 5 * time.Second, Attempts: 3})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := d.Off(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 2*time.Second {
		t.Errorf("Off under a 300ms context = %v after %s", err, time.Since(start))
	}
}

// The waits between attempts are the clock's: on a fake clock, the second attempt starts only
// once the test advances it past the backoff.
func TestIPMIDriverWaitsOnTheClock(t *testing.T) {
	fake := clock.NewFake(time.Time{})
	b := state.BMC{Address: "127.0.0.1", Port: silentPort(t), Username: testUser, Password: testPassword}
	d := open(t, b, Options{Timeout: 100 * time.Millisecond, Attempts: 2, Backoff: time.Hour, Clock: fake})
	done := make(chan error, 1)
	go func() { done <- d.Off(context.Background()) }()
	fake.BlockUntil(1) // the first attempt timed out; the driver waits for the backoff
	select {
	case err := <-done:
		t.Fatalf("Off returned while the clock stood still: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	fake.Advance(time.Hour)
	if err := <-done; err == nil || !strings.Contains(err.Error(), "no answer") {
		t.Errorf("Off = %v", err)
	}
}
