package lab

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/bougou/go-ipmi/pkg/bmc"
	"github.com/bougou/go-ipmi/pkg/hal"
	"github.com/bougou/go-ipmi/pkg/server"
	"github.com/bougou/go-ipmi/pkg/types"
)

// Each lab machine has a BMC: go-ipmi's BMC server (IPMI v2.0 RMCP+ with cipher suites 3 and
// 17, and IPMI v1.5 LAN with MD5) on 127.0.0.1:BMCPort, one administrator (the host's BMCUser
// and its password), and a chassis of ours whose power controls act on the machine. It answers
// while the host is off: it lives on the machine's standby power.

// The chassis controls a lab BMC logs, by their ipmitool names.
const (
	ControlOff      = "off"
	ControlOn       = "on"
	ControlCycle    = "cycle"
	ControlReset    = "reset"
	ControlSoft     = "soft"
	ControlIdentify = "identify"
)

// BMCLogEntry is one line of a BMC's log (BMCLog): a chassis control it received, the power
// before and after it, and what it answered ("ok" or the error).
type BMCLogEntry struct {
	Time        time.Time `json:"time"`
	Control     string    `json:"control"`
	PowerBefore string    `json:"power_before"`
	PowerAfter  string    `json:"power_after"`
	// Seconds is how long an identify blinks (0: stop; 255: until told otherwise).
	Seconds *int   `json:"seconds,omitempty"`
	Result  string `json:"result"`
}

// ReadBMCLog returns every chassis control h's BMC received, oldest first.
func ReadBMCLog(h *HostManifest) ([]BMCLogEntry, error) {
	f, err := os.Open(h.BMCLog())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []BMCLogEntry
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e BMCLogEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return nil, fmt.Errorf("%s: %w", h.BMCLog(), err)
		}
		out = append(out, e)
	}
	return out, sc.Err()
}

// errNotInPresentState is IPMI's answer to a cycle, reset or soft power off of a chassis that is
// off (its specification: no action in S4/S5).
var errNotInPresentState = types.CodeNotSupported

// errOffFault is the error of a BMC told to fail its power offs (`lab bmc-off-fails`).
var errOffFault = types.CodeUnspecifiedError

// bmcControl carries out a chassis control received by the BMC, logs it, and returns what the
// BMC answers (nil, or an IPMI completion code).
func (mc *machine) bmcControl(control string) error {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	before := mc.st.Power
	var err error
	switch control {
	case ControlOff:
		if before == PowerOn {
			_, _, err = mc.powerOffLocked("bmc power off")
		}
		if mc.st.Faults.BMCOffFails {
			err = errOffFault // and off it is all the same
		}
	case ControlOn:
		if before == PowerOff {
			err = mc.powerOnLocked()
		}
	case ControlCycle, ControlReset:
		if before == PowerOff {
			err = errNotInPresentState
			break
		}
		if _, _, err = mc.powerOffLocked("bmc power " + control); err == nil {
			err = mc.powerOnLocked()
		}
	case ControlSoft:
		if before == PowerOff {
			err = errNotInPresentState
			break
		}
		mc.softOffLocked()
	}
	result := "ok"
	if err != nil {
		result = "error: " + err.Error()
		if errors.Is(err, errOffFault) && mc.st.Faults.BMCOffFails {
			result = "error (bmc-off-fails): " + err.Error()
		}
	}
	mc.logBMC(BMCLogEntry{Control: control, PowerBefore: before, PowerAfter: mc.st.Power, Result: result})
	// A failure of the machine itself (its node file, its agent's start) is no answer of the
	// BMC's: the power did change.
	var cc types.CompletionCode
	if err != nil && !errors.As(err, &cc) {
		mc.log.Error("bmc "+control, "err", err)
		return nil
	}
	return err
}

// softOffLocked asks the agent to stop, as ACPI asks the OS, and powers off once it has (or
// after agentStopGrace): the BMC answers at once, the power goes a little later.
func (mc *machine) softOffLocked() {
	gen, ap := mc.gen, mc.agent
	go func() {
		if ap != nil {
			_ = ap.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-ap.done:
			case <-time.After(agentStopGrace):
			}
		}
		mc.mu.Lock()
		defer mc.mu.Unlock()
		if mc.gen == gen && mc.st.Power == PowerOn {
			_, _, _ = mc.powerOffLocked("bmc soft shutdown")
		}
	}()
}

// logBMC appends e to the BMC's log.
func (mc *machine) logBMC(e BMCLogEntry) {
	e.Time = time.Now().UTC()
	raw, _ := json.Marshal(e)
	f, err := os.OpenFile(mc.h.BMCLog(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err == nil {
		_, err = f.Write(append(raw, '\n'))
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		mc.log.Error("bmc log", "err", err)
	}
	mc.log.Info("bmc chassis control", "control", e.Control, "power_before", e.PowerBefore, "power_after", e.PowerAfter, "result", e.Result)
}

// labHAL is the hardware the BMC manages: a chassis and nothing else (no sensors, FRU, SDR or
// console; go-ipmi answers "not supported" for them).
type labHAL struct{ chassis labChassis }

func (h labHAL) Chassis() hal.ChassisHAL { return h.chassis }
func (labHAL) Sensors() hal.SensorHAL    { return nil }
func (labHAL) Storage() hal.StorageHAL   { return nil }
func (labHAL) Network() hal.NetworkHAL   { return nil }
func (labHAL) GPIO() hal.GPIOHAL         { return nil }
func (labHAL) I2C() hal.I2CHAL           { return nil }
func (labHAL) Console() hal.ConsoleHAL   { return nil }
func (labHAL) Close() error              { return nil }

// labChassis is the machine's chassis as go-ipmi's handlers see it.
type labChassis struct{ mc *machine }

func (c labChassis) PowerState(context.Context) (bool, error) { return c.mc.powerIsOn(), nil }

func (c labChassis) SetPower(_ context.Context, on bool) error {
	if on {
		return c.mc.bmcControl(ControlOn)
	}
	return c.mc.bmcControl(ControlOff)
}

func (c labChassis) PowerCycle(context.Context) error { return c.mc.bmcControl(ControlCycle) }
func (c labChassis) ColdReset(context.Context) error  { return c.mc.bmcControl(ControlReset) }

// WarmReset is go-ipmi's name for the soft shutdown control (ACPI).
func (c labChassis) WarmReset(context.Context) error { return c.mc.bmcControl(ControlSoft) }

// Identify blinks the chassis LED: in the lab, a line in the BMC's log.
func (c labChassis) Identify(_ context.Context, seconds uint8) error {
	s := int(seconds)
	power := PowerOff
	if c.mc.powerIsOn() {
		power = PowerOn
	}
	c.mc.logBMC(BMCLogEntry{Control: ControlIdentify, PowerBefore: power, PowerAfter: power, Seconds: &s, Result: "ok"})
	c.mc.log.Info("identify: the chassis LED blinks", "seconds", s)
	return nil
}

func (labChassis) IntrusionState(context.Context) (bool, error) { return false, hal.ErrNotSupported }
func (labChassis) SetBootFlags(context.Context, *types.BootOptionParam_BootFlags) error {
	return hal.ErrNotSupported
}
func (labChassis) GetBootFlags(context.Context) (*types.BootOptionParam_BootFlags, error) {
	return nil, hal.ErrNotSupported
}
func (labChassis) SetBootInfoAcknowledge(context.Context, *types.BootOptionParam_BootInfoAcknowledge) error {
	return nil
}
func (labChassis) GetBootInfoAcknowledge(context.Context) (*types.BootOptionParam_BootInfoAcknowledge, error) {
	return nil, hal.ErrNotSupported
}

// bmcConn is the BMC's UDP socket; while the BMC is down (`lab bmc-down`) every packet goes
// unanswered, and the port stays bound.
type bmcConn struct {
	c    *net.UDPConn
	down *atomic.Bool
}

func (b *bmcConn) ReadFrom(buf []byte) (int, net.Addr, error) {
	for {
		n, addr, err := b.c.ReadFromUDP(buf)
		if err != nil || !b.down.Load() {
			return n, addr, err
		}
	}
}

func (b *bmcConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	if b.down.Load() {
		return len(p), nil // an answer to a request from before it went down: lost
	}
	return b.c.WriteTo(p, addr)
}

func (b *bmcConn) Close() error { return b.c.Close() }

// LocalAddr lets go-ipmi learn the port it serves (for SOL's Activate Payload).
func (b *bmcConn) LocalAddr() net.Addr { return b.c.LocalAddr() }

// labManufacturer is the IANA enterprise number for documentation use (RFC 5612): no vendor's.
const labManufacturer = 32473

// newBMC binds the BMC of mc's host and returns its server, not yet serving.
func newBMC(mc *machine, password string) (*server.Server, error) {
	h := mc.h
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: h.BMCPort})
	if err != nil {
		return nil, fmt.Errorf("bmc of %s: %w", h.Name, err)
	}
	guid := sha256.Sum256([]byte("kvmctl lab bmc " + h.Dir))
	var g [16]byte
	copy(g[:], guid[:])
	b := bmc.New(bmc.DeviceInfo{DeviceID: 0x20, DeviceRevision: 1, FirmwareMajor: 1, IPMIVersion: 0x20,
		ManufacturerID: labManufacturer, ProductID: 1}, g, labHAL{chassis: labChassis{mc: mc}},
		bmc.WithCipherSuites([]types.CipherSuiteID{types.CipherSuiteID3, types.CipherSuiteID17}))
	// No anonymous login: slot 1, the null user, is disabled; slot 2 is the host's administrator.
	if err := b.Users.Update(1, func(u *bmc.User) error { u.Enabled = false; return nil }); err != nil {
		conn.Close()
		return nil, fmt.Errorf("bmc of %s: %w", h.Name, err)
	}
	u, err := b.Users.Add(2, h.BMCUser)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("bmc of %s: user %q: %w", h.Name, h.BMCUser, err)
	}
	u.SetPassword([]byte(password))
	u.Enabled = true
	u.ChannelAccess[1] = bmc.UserChannelAccess{MaxPrivilege: bmc.PrivilegeLevelAdministrator, Enabled: true}
	return server.NewServer(b, &bmcConn{c: conn, down: &mc.bmcDown}), nil
}
