// Package fence powers hosts off through their BMC, and proves it: drivers that speak to a BMC
// (ipmi: go-ipmi's RMCP+ and v1.5 LAN; ipmitool: Debian's; exec: the seed's command template),
// the fencing semantics of fence_ipmilan (status first, off, power confirmed off; reboot = off,
// confirmed, on), and the rate cap that stops a storm of power-downs (seed 002).
package fence

import (
	"context"
	"errors"
)

// Power is a chassis power state as the BMC reports it.
type Power string

// Power states.
const (
	PowerOn      Power = "on"
	PowerOff     Power = "off"
	PowerUnknown Power = "unknown"
)

// Driver speaks to one host's BMC. Every method is bounded by ctx and by the driver's own
// timeouts and retries; an error means the BMC did not confirm the request (it may or may not
// have acted: the fencing semantics ask Status before and after).
type Driver interface {
	// Status asks the chassis power state.
	Status(ctx context.Context) (Power, error)
	// Off powers the chassis off at once (no shutdown of the OS): the fence.
	Off(ctx context.Context) error
	// On powers the chassis on.
	On(ctx context.Context) error
	// Reset resets the chassis (a warm reboot).
	Reset(ctx context.Context) error
	// Soft asks the OS to shut down (ACPI); not a fence: the host may ignore it.
	Soft(ctx context.Context) error
	// Identify blinks the chassis identify LED (seed 002's "blink").
	Identify(ctx context.Context) error
	// Close releases the session.
	Close() error
}

// ErrUnsupported is returned by a driver that cannot do an action (an exec template without
// that action, say).
var ErrUnsupported = errors.New("the BMC driver cannot do this action")
