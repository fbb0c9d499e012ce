package lab

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bougou/go-ipmi/pkg/client"
	"github.com/bougou/go-ipmi/pkg/command/chassis"
	"github.com/bougou/go-ipmi/pkg/types"

	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/virt"
)

// fakeAgent is a stand-in for kvmagent that runs until killed, with the config path in its
// command line as the real one has it.
const fakeAgent = "#!/bin/sh\nwhile :; do sleep 1; done\n"

// runTestMachine builds a lab of one host with a fake agent and runs its machine in this
// process until the test ends; its log goes to the host's machine.log.
func runTestMachine(t *testing.T) (*Manifest, *HostManifest) {
	t.Helper()
	dir := t.TempDir()
	agent := filepath.Join(dir, "fake-kvmagent")
	if err := os.WriteFile(agent, []byte(fakeAgent), 0o755); err != nil {
		t.Fatal(err)
	}
	m, err := Build(Options{Dir: filepath.Join(dir, "lab"), Hosts: 1, Clusters: 1, VMs: 2, Agent: agent})
	if err != nil {
		t.Fatal(err)
	}
	h := &m.Hosts[0]
	log, err := os.Create(h.MachineLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { log.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- RunMachine(ctx, m.Dir, h.Name, log) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("RunMachine: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("the machine did not stop")
		}
		if Alive(h) {
			t.Errorf("the agent of a stopped machine runs on")
		}
		if st, err := readMachineState(h); err != nil || st.Running {
			t.Errorf("machine.json of a stopped machine: %+v, %v", st, err)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := MachineStatus(context.Background(), h)
		if err == nil && st.AgentPID > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the machine did not come up: %+v, %v\n%s", st, err, tail(h.MachineLog(), 20))
		}
		time.Sleep(20 * time.Millisecond)
	}
	return m, h
}

func mtime(t *testing.T, path string) time.Time {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.ModTime()
}

// waitWritten waits until path is modified after since.
func waitWritten(t *testing.T, path string, since time.Time) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !mtime(t, path).After(since) {
		if time.Now().After(deadline) {
			t.Fatalf("%s not written since %v", path, since)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func ipmiClient(t *testing.T, h *HostManifest, intf client.Interface, suite types.CipherSuiteID, password string) (*client.Client, error) {
	t.Helper()
	c, err := client.NewClient("127.0.0.1", h.BMCPort, h.BMCUser, password)
	if err != nil {
		t.Fatal(err)
	}
	// No retry: a control sent again would be carried out again, and the BMC log checked.
	c = c.WithInterface(intf).WithTimeout(15 * time.Second).WithRetry(0)
	if intf == client.InterfaceLanplus {
		c = c.WithCipherSuiteID(suite)
	}
	if err := c.Connect(context.Background()); err != nil {
		return nil, err
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c, nil
}

func powerIsOn(t *testing.T, c *client.Client) bool {
	t.Helper()
	st, err := c.GetChassisStatus(context.Background())
	if err != nil {
		t.Fatalf("get chassis status: %v", err)
	}
	return st.PowerIsOn
}

// The machine's BMC answers go-ipmi's own client (what kvmctl's ipmi driver uses) over lanplus
// and lan; its power controls act on the machine: off kills the agent and shuts the VMs off in
// the node file, on boots with a new boot id; its log holds every control.
func TestMachineBMCWithGoIPMIClient(t *testing.T) {
	t.Parallel()
	m, h := runTestMachine(t)
	password, err := h.BMCPassword()
	if err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(m.SharedDir(), "h1-vm1.img")
	waitWritten(t, disk, time.Time{}.Add(1)) // the VMs run: their guest I/O lands

	for _, c := range []struct {
		intf  client.Interface
		suite types.CipherSuiteID
	}{{client.InterfaceLanplus, types.CipherSuiteID3}, {client.InterfaceLanplus, types.CipherSuiteID17}, {client.InterfaceLan, 0}} {
		cl, err := ipmiClient(t, h, c.intf, c.suite, password)
		if err != nil {
			t.Fatalf("%s (suite %d): connect: %v", c.intf, c.suite, err)
		}
		if !powerIsOn(t, cl) {
			t.Errorf("%s (suite %d): power off, want on", c.intf, c.suite)
		}
		if _, err := ipmiClient(t, h, c.intf, c.suite, "not-"+password); err == nil {
			t.Errorf("%s (suite %d): a wrong password connects", c.intf, c.suite)
		}
	}

	cl, err := ipmiClient(t, h, client.InterfaceLanplus, types.CipherSuiteID17, password)
	if err != nil {
		t.Fatal(err)
	}
	boot := mustBootID(t, h)
	agent := AgentPID(h)
	if _, err := cl.ChassisControl(context.Background(), chassis.ChassisControlPowerDown); err != nil {
		t.Fatalf("power down: %v", err)
	}
	if powerIsOn(t, cl) || Alive(h) || procAlive(agent, func([]string) bool { return true }) {
		t.Errorf("after power down: power on %v, agent alive %v", powerIsOn(t, cl), Alive(h))
	}
	node, err := os.ReadFile(h.NodeFile())
	if err != nil {
		t.Fatal(err)
	}
	doms, err := virt.NodeDomains(node)
	if err != nil || len(doms) != 2 || doms[0].State != virt.StateShutoff || doms[1].State != virt.StateShutoff {
		t.Errorf("node file after power down: %+v, %v; want both VMs shut off", doms, err)
	}
	// Refusals of what does not apply to a host that is off.
	for _, op := range []string{"crash", "kill-agent", "start-agent"} {
		if _, _, err := MachineOp(context.Background(), h, op, nil); !errs.IsRefused(err) {
			t.Errorf("%s of a host that is off = %v, want a refusal", op, err)
		}
	}

	if _, err := cl.ChassisControl(context.Background(), chassis.ChassisControlPowerUp); err != nil {
		t.Fatalf("power up: %v", err)
	}
	if !powerIsOn(t, cl) || !Alive(h) || mustBootID(t, h) == boot {
		t.Errorf("after power up: power on %v, agent alive %v, boot id %s (was %s)", powerIsOn(t, cl), Alive(h), mustBootID(t, h), boot)
	}

	// A BMC that fails its offs still powers off.
	if _, _, err := MachineOp(context.Background(), h, "bmc-off-fails", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.ChassisControl(context.Background(), chassis.ChassisControlPowerDown); err == nil {
		t.Errorf("power down with bmc-off-fails answered no error")
	}
	if powerIsOn(t, cl) {
		t.Errorf("power down with bmc-off-fails left the power on")
	}

	entries, err := ReadBMCLog(h)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Control+":"+e.PowerBefore+">"+e.PowerAfter+":"+strings.SplitN(e.Result, " ", 2)[0])
	}
	if want := "off:on>off:ok on:off>on:ok off:on>off:error"; strings.Join(got, " ") != want {
		t.Errorf("BMC log: %v, want %s\nmachine log: %s", got, want, tail(h.MachineLog(), 20))
	}
}

func mustBootID(t *testing.T, h *HostManifest) string {
	t.Helper()
	b, err := os.ReadFile(h.BootIDFile())
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// The machine's operations and what each refuses; the storage stall stops its guest I/O and
// puts the agent's stall flag in place.
func TestMachineOperations(t *testing.T) {
	t.Parallel()
	m, h := runTestMachine(t)
	ctx := context.Background()
	disk := filepath.Join(m.SharedDir(), "h1-vm2.img")
	waitWritten(t, disk, time.Time{}.Add(1))

	do := func(op string, want string) {
		t.Helper()
		msg, _, err := MachineOp(ctx, h, op, nil)
		got := msg
		if err != nil {
			got = err.Error()
			if errs.IsRefused(err) {
				got = "refused: " + got
			}
		}
		if !strings.Contains(got, want) {
			t.Fatalf("%s: %q, want %q", op, got, want)
		}
	}
	// A storage stall: the flag the agent's heartbeat waits on, and no guest I/O until resumed.
	do("storage-stall", "stalled the shared storage of h1")
	do("storage-stall", "refused: the shared storage of h1 is already stalled")
	if _, err := os.Stat(h.StallFile()); err != nil {
		t.Errorf("no stall flag for the agent: %v", err)
	}
	stalled := mtime(t, disk)
	time.Sleep(2500 * time.Millisecond) // two and a half write intervals
	if !mtime(t, disk).Equal(stalled) {
		t.Errorf("a VM disk was written while the storage stalled")
	}
	do("storage-resume", "resumed the shared storage of h1")
	do("storage-resume", "refused: the shared storage of h1 is not stalled")
	if _, err := os.Stat(h.StallFile()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the stall flag is still there after resume: %v", err)
	}
	waitWritten(t, disk, stalled)

	do("crash", "crashed h1: power lost, its agent (pid ")
	do("crash", "refused: h1 is already off")
	do("kill-agent", "refused: the agent of h1 is not running: the host is powered off")
	do("start-agent", "refused: h1 is powered off")
	do("power-on", "powered on h1: boot id ")
	do("power-on", "refused: h1 is already on")
	do("kill-agent", "killed the agent of h1 (pid ")
	do("kill-agent", "refused: the agent of h1 is not running")
	do("start-agent", "started the agent of h1 (pid ")
	do("start-agent", "refused: the agent of h1 is already running")
	do("partition", "partitioned h1")
	do("partition", "refused: h1 is already partitioned")
	do("heal", "healed h1")
	do("heal", "refused: h1 is not partitioned")
	do("bmc-down", "the BMC of h1 stopped answering")
	do("bmc-down", "refused: the BMC of h1 is already down")
	do("bmc-off-fails", "answers every power off with an error")
	do("bmc-off-fails", "refused: the BMC of h1 already fails its power offs")
	if st := Status(m)[0]; !st.Faults.BMCDown || !st.Faults.BMCOffFails || strings.Join(st.Faults.List(), ",") != "bmc-down,bmc-off-fails" {
		t.Errorf("status with both BMC faults: %+v", st)
	}
	do("bmc-up", "the BMC of h1 answers again")
	do("bmc-up", "refused: the BMC of h1 has no fault")
	do("nonsense", `no operation "nonsense"`) // an error, no refusal

	if msg, _, err := MachineOp(ctx, h, "stop-agent", map[string][]string{"grace": {"1s"}}); err != nil || !strings.Contains(msg, "stopped the agent of h1") || Alive(h) {
		t.Errorf("stop-agent = %q, %v; agent alive %v", msg, err, Alive(h))
	}
}

// The proxy forwards while the link works, hangs what comes while it is cut, closes the hung
// connections when it is mended, and resets a connection the agent does not take.
func TestProxy(t *testing.T) {
	t.Parallel()
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); c.Close() }()
		}
	}()
	p, err := listenProxy("127.0.0.1:0", echo.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	go p.serve()
	addr := p.ln.Addr().String()

	roundTrip := func(c net.Conn) error {
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
		_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		buf := make([]byte, 4)
		_, err := io.ReadFull(c, buf)
		return err
	}
	dial := func() net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	isTimeout := func(err error) bool {
		var ne net.Error
		return errors.As(err, &ne) && ne.Timeout()
	}

	// A proxy starts cut (the machine opens it at power-on): connections hang.
	hung := dial()
	if err := roundTrip(hung); !isTimeout(err) {
		t.Errorf("through a cut link: %v, want a timeout", err)
	}
	p.setCut(false)
	_ = hung.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := hung.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("a connection hung while cut is not closed at mending: %v", err)
	}
	live := dial()
	if err := roundTrip(live); err != nil {
		t.Fatalf("through the mended link: %v", err)
	}
	p.setCut(true)
	if err := roundTrip(live); !isTimeout(err) {
		t.Errorf("a live connection once the link is cut: %v, want it to hang", err)
	}
	p.setCut(false)
	if err := roundTrip(dial()); err != nil {
		t.Errorf("through the mended link again: %v", err)
	}

	// No agent listening: the connection is reset, as by a host without the port open.
	echo.Close()
	c, err := net.Dial("tcp", addr) // the reset may come before the dial returns
	if err == nil {
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("with no agent: %v, want a connection reset", err)
	}
}
