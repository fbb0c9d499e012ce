package fence

import (
	"context"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"

	"github.com/bougou/go-ipmi/pkg/bmc"
	"github.com/bougou/go-ipmi/pkg/hal"
	"github.com/bougou/go-ipmi/pkg/server"
	"github.com/bougou/go-ipmi/pkg/transport/udp"
	ipmitypes "github.com/bougou/go-ipmi/pkg/types"

	"github.com/kvmctl/kvmctl/pkg/state"
)

// testChassis is the chassis of an in-process BMC: it records what it was told, in order.
type testChassis struct {
	mu    sync.Mutex
	on    bool
	calls []string
}

func (c *testChassis) record(call string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, call)
}

// Calls returns what the chassis was told so far.
func (c *testChassis) Calls() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.calls)
}

func (c *testChassis) PowerState(context.Context) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.on, nil
}

func (c *testChassis) SetPower(_ context.Context, on bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.on = on
	c.calls = append(c.calls, map[bool]string{true: "power up", false: "power down"}[on])
	return nil
}

func (c *testChassis) PowerCycle(context.Context) error { c.record("power cycle"); return nil }
func (c *testChassis) ColdReset(context.Context) error  { c.record("hard reset"); return nil }
func (c *testChassis) WarmReset(context.Context) error  { c.record("soft shutdown"); return nil }
func (c *testChassis) Identify(_ context.Context, seconds uint8) error {
	c.record("identify " + strconv.Itoa(int(seconds)))
	return nil
}
func (c *testChassis) IntrusionState(context.Context) (bool, error) {
	return false, hal.ErrNotSupported
}
func (c *testChassis) SetBootFlags(context.Context, *ipmitypes.BootOptionParam_BootFlags) error {
	return hal.ErrNotSupported
}
func (c *testChassis) GetBootFlags(context.Context) (*ipmitypes.BootOptionParam_BootFlags, error) {
	return nil, hal.ErrNotSupported
}
func (c *testChassis) SetBootInfoAcknowledge(context.Context, *ipmitypes.BootOptionParam_BootInfoAcknowledge) error {
	return hal.ErrNotSupported
}
func (c *testChassis) GetBootInfoAcknowledge(context.Context) (*ipmitypes.BootOptionParam_BootInfoAcknowledge, error) {
	return nil, hal.ErrNotSupported
}

// testHAL is a machine that has a chassis and nothing else.
type testHAL struct{ chassis *testChassis }

func (h testHAL) Chassis() hal.ChassisHAL { return h.chassis }
func (h testHAL) Sensors() hal.SensorHAL  { return nil }
func (h testHAL) Storage() hal.StorageHAL { return nil }
func (h testHAL) Network() hal.NetworkHAL { return nil }
func (h testHAL) GPIO() hal.GPIOHAL       { return nil }
func (h testHAL) I2C() hal.I2CHAL         { return nil }
func (h testHAL) Console() hal.ConsoleHAL { return nil }
func (h testHAL) Close() error            { return nil }

// testBMC is a BMC served by go-ipmi's server on 127.0.0.1 (UDP, lanplus and lan on one port)
// for as long as the test runs, with one administrator.
type testBMC struct {
	chassis *testChassis
	port    int
}

const (
	testUser     = "admin"
	testPassword = "s3cret-Pw"
)

func startBMC(t *testing.T) *testBMC {
	t.Helper()
	ch := &testChassis{on: true}
	b := bmc.New(bmc.DeviceInfo{DeviceID: 32, DeviceRevision: 1, FirmwareMajor: 1, IPMIVersion: 0x20, ManufacturerID: 0x000157},
		[16]byte{'k', 'v', 'm', 'c', 't', 'l'}, testHAL{ch})
	u, err := b.Users.Add(2, testUser)
	if err != nil {
		t.Fatal(err)
	}
	u.SetPassword([]byte(testPassword))
	u.Enabled = true
	u.ChannelAccess[1] = bmc.UserChannelAccess{MaxPrivilege: bmc.PrivilegeLevelAdministrator, Enabled: true}
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	srv := server.NewServer(b, udp.Wrap(conn))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		_ = srv.Close()
		<-done
	})
	return &testBMC{chassis: ch, port: conn.LocalAddr().(*net.UDPAddr).Port}
}

// settings are BMC settings that reach this BMC with driver and intf.
func (b *testBMC) settings(driver, intf string) state.BMC {
	return state.BMC{Driver: driver, Address: "127.0.0.1", Port: b.port, Username: testUser, Password: testPassword, Interface: intf}
}

// silentPort is a UDP port on 127.0.0.1 that reads everything and answers nothing: a BMC
// that is down, without the ICMP "port unreachable" that would end a wait early.
func silentPort(t *testing.T) int {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := conn.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { conn.Close() })
	return conn.LocalAddr().(*net.UDPAddr).Port
}
