package cli

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/lab"
	"github.com/kvmctl/kvmctl/pkg/virt"
)

// The tests in this file are issue 12's end-to-end tests of the lab's machines, BMCs and fault
// commands: one lab of real processes (machines, which are this test binary run as `kvmctl lab
// machine`, with their agents and BMCs), one host per fault, each fault observed as an outsider
// would: the agent's port, the files in DIR/shared, Debian's ipmitool, and `kvmctl host status`.
// No assertion rests on timing: "keeps advancing" waits for every file to be written again, "stops
// advancing" waits for a window of labQuietWindow in which nothing was, each with a deadline far
// beyond what a loaded machine needs.

const (
	// labQuietWindow is how long files written every second must stay untouched to count as
	// no longer written.
	labQuietWindow = 3 * time.Second
	labDeadline    = 30 * time.Second
)

func TestLabFaultsE2E(t *testing.T) {
	t.Parallel()
	labNeedIPMITool(t)
	goraceOnce.Do(func() {
		// Under -race every program that exits sleeps 1s by default: machines, agents.
		os.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	})
	m := e2eLab(t, 6, 1, 2)
	t.Cleanup(func() {
		// Before lab down (cleanups run last first): the agents go at once; one may wait 5 s
		// for a connection this process's kvmctl opened and never used, and the lab is thrown
		// away anyway.
		var wg sync.WaitGroup
		for i := range m.Hosts {
			wg.Go(func() { _ = lab.StopAgent(&m.Hosts[i], 200*time.Millisecond) })
		}
		wg.Wait()
	})
	// One host per fault, all at once: each case mostly waits for files to be written or not,
	// so they run side by side whatever -parallel says (t.Run from goroutines; each case may
	// still t.Fatal).
	cases := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"crash then power-on", func(t *testing.T) {
			h := e2eLabHost(t, m, "h1")
			bootBefore := labBootID(t, h)
			out := labRun(t, m, 0, "crash", "h1")
			labOneLine(t, out, "crashed h1: power lost, its agent (pid ")
			labRefused(t, m, "crash h1 again", "already off", "crash", "h1")

			// Power loss: the agent's port refuses, nothing more is written, the BMC says off.
			labPortRefuses(t, h.AgentAddress)
			labQuiet(t, "h1's heartbeat and VM disks after its crash", labHostFiles(m, h)...)
			labPower(t, h, "off", "after the crash")
			if st := lab.Status(m)[0]; st.Power != lab.PowerOff || st.AgentPID != 0 {
				t.Errorf("lab status of h1 after its crash: %+v", st)
			}
			// The inventory holds h1's BMC from lab up on: kvmctl fences it, and finds it off
			// with nothing sent (its BMC log holds no control).
			out, _ = e2eKvmctl(t, m, 0, "fence", "h1", "--action", "off", "--yes", "--reason", "lab crash test")
			if !strings.Contains(out, "h1: power confirmed off (status)") || !strings.Contains(out, "already off: nothing sent") {
				t.Errorf("kvmctl fence h1 --action off after its crash printed %q", out)
			}
			if log, err := lab.ReadBMCLog(h); err != nil || len(log) != 0 {
				t.Errorf("h1's BMC log after fencing an already-off h1: %+v, %v; want no control", log, err)
			}

			// Power on: a new boot id, the agent answers, the VMs are shut off until started.
			out = labRun(t, m, 0, "power-on", "h1")
			labOneLine(t, out, "powered on h1: boot id ")
			labRefused(t, m, "power-on h1 again", "already on", "power-on", "h1")
			if boot := labBootID(t, h); boot == bootBefore {
				t.Errorf("h1 kept its boot id %s over a power cycle", boot)
			}
			st := labAgentStatus(t, m, h)
			if st.BootID == bootBefore || st.BootID != labBootID(t, h) {
				t.Errorf("h1's agent reports boot id %s; before the crash %s, the file says %s", st.BootID, bootBefore, labBootID(t, h))
			}
			if len(st.VMs) != 2 {
				t.Errorf("h1's agent reports VMs %+v, want its 2", st.VMs)
			}
			for _, vm := range st.VMs {
				if vm.State != string(virt.StateShutoff) {
					t.Errorf("after power-on h1's VM %s is %s, want shutoff", vm.Name, vm.State)
				}
			}
			node, err := os.ReadFile(h.NodeFile())
			if err != nil {
				t.Fatal(err)
			}
			doms, err := virt.NodeDomains(node)
			if err != nil || len(doms) != 2 {
				t.Fatalf("h1's node file: %+v, %v", doms, err)
			}
			for _, d := range doms {
				if d.State != virt.StateShutoff {
					t.Errorf("h1's node file shows %s %s, want shutoff", d.Name, d.State)
				}
			}
			// Its agent writes its heartbeat again; shut-off VMs write nothing.
			labAdvancing(t, "h1's heartbeat after power-on", labHeartbeat(m, h))
			labQuiet(t, "h1's VM disks while its VMs are shut off", labDisks(m, h)...)
		}},
		{"kill-agent", func(t *testing.T) {
			h := e2eLabHost(t, m, "h2")
			out := labRun(t, m, 0, "kill-agent", "h2")
			labOneLine(t, out, "killed the agent of h2 (pid ")
			labRefused(t, m, "kill-agent h2 again", "the agent of h2 is not running", "kill-agent", "h2")
			labPortRefuses(t, h.AgentAddress)
			// The host and its VMs live on: their disks are written; the dead agent's heartbeat is not.
			labAdvancing(t, "h2's VM disks with its agent dead", labDisks(m, h)...)
			labQuiet(t, "h2's heartbeat with its agent dead", labHeartbeat(m, h))
			labPower(t, h, "on", "with the agent dead")
		}},
		{"partition then heal", func(t *testing.T) {
			h := e2eLabHost(t, m, "h3")
			labOneLine(t, labRun(t, m, 0, "partition", "h3"), "partitioned h3: ")
			labRefused(t, m, "partition h3 again", "already partitioned", "partition", "h3")
			if conn := labConnection(t, m, "h3", 1); conn != "Disconnected" {
				t.Errorf("host status of a partitioned h3: connection %s, want Disconnected", conn)
			}
			// The host runs on and writes: VM disks and heartbeat.
			labAdvancing(t, "h3's heartbeat and VM disks while partitioned", labHostFiles(m, h)...)
			labOneLine(t, labRun(t, m, 0, "heal", "h3"), "healed h3: ")
			labRefused(t, m, "heal h3 again", "not partitioned", "heal", "h3")
			if conn := labConnection(t, m, "h3", 0); conn != "Up" {
				t.Errorf("host status of a healed h3: connection %s, want Up", conn)
			}
		}},
		{"storage-stall then storage-resume", func(t *testing.T) {
			h := e2eLabHost(t, m, "h4")
			labOneLine(t, labRun(t, m, 0, "storage-stall", "h4"), "stalled the shared storage of h4: ")
			labRefused(t, m, "storage-stall h4 again", "already stalled", "storage-stall", "h4")
			// The agent answers, its heartbeat and the VMs' guest I/O do not reach the storage.
			if conn := labConnection(t, m, "h4", 0); conn != "Up" {
				t.Errorf("host status of h4 with its storage stalled: connection %s, want Up", conn)
			}
			labQuiet(t, "h4's heartbeat and VM disks while its storage stalls", labHostFiles(m, h)...)
			if log, _ := os.ReadFile(h.Log()); !strings.Contains(string(log), "heartbeat write blocked") {
				t.Errorf("h4's agent log does not say its heartbeat write blocked:\n%s", log)
			}
			labOneLine(t, labRun(t, m, 0, "storage-resume", "h4"), "resumed the shared storage of h4: ")
			labAdvancing(t, "h4's heartbeat and VM disks after storage-resume", labHostFiles(m, h)...)
		}},
		{"bmc-down, bmc-off-fails and bmc-up", func(t *testing.T) {
			h := e2eLabHost(t, m, "h5")
			labOneLine(t, labRun(t, m, 0, "bmc-down", "h5"), "the BMC of h5 stopped answering")
			for _, iface := range []string{"lanplus", "lan"} {
				start := time.Now()
				out, err := labIPMI(t, h, iface, []string{"-N", "1", "-R", "1"}, "chassis", "power", "status")
				if err == nil || !strings.Contains(out, "Unable to establish") || time.Since(start) < time.Second {
					t.Errorf("ipmitool -I %s against a BMC that is down: %v after %s\n%s; want it to time out", iface, err, time.Since(start), out)
				}
			}
			labAdvancing(t, "h5's heartbeat and VM disks with its BMC down", labHostFiles(m, h)...)
			labOneLine(t, labRun(t, m, 0, "bmc-up", "h5"), "the BMC of h5 answers again")
			labPower(t, h, "on", "after bmc-up")

			// "Errors on off but reports off": the power goes, the answer is an error.
			labOneLine(t, labRun(t, m, 0, "bmc-off-fails", "h5"), "the BMC of h5 now answers every power off with an error")
			if out, err := labIPMI(t, h, "lanplus", nil, "chassis", "power", "off"); err == nil || !strings.Contains(out, "Unspecified error") {
				t.Errorf("ipmitool power off with bmc-off-fails: %v\n%s; want it to fail", err, out)
			}
			labPower(t, h, "off", "after a failed off")
			labPortRefuses(t, h.AgentAddress)
			log := labBMCLog(t, h)
			if last := log[len(log)-1]; last.Control != lab.ControlOff || last.PowerBefore != lab.PowerOn || last.PowerAfter != lab.PowerOff ||
				!strings.HasPrefix(last.Result, "error") {
				t.Errorf("h5's BMC log ends with %+v, want an off from on to off that answered an error", last)
			}
			// kvmctl's fence, with the BMC settings lab up stored: the error, and the power off.
			labRun(t, m, 0, "power-on", "h5")
			out, _ := e2eKvmctl(t, m, 0, "fence", "h5", "--action", "off", "--yes", "--reason", "lab bmc-off-fails test")
			if !strings.Contains(out, "h5: power confirmed off (status, off, status)") || !strings.Contains(out, "off returned an error") {
				t.Errorf("kvmctl fence h5 --action off with bmc-off-fails printed %q", out)
			}
			labOneLine(t, labRun(t, m, 0, "bmc-up", "h5"), "the BMC of h5 answers again")
			labRefused(t, m, "bmc-up h5 again", "has no fault", "bmc-up", "h5")
		}},
		{"ipmitool drives the chassis", func(t *testing.T) {
			h := e2eLabHost(t, m, "h6")
			// lanplus with cipher suites 17 (ipmitool's default) and 3, and lan: the password works,
			// a wrong one (or none, as the anonymous user) does not.
			for _, c := range []struct {
				iface string
				extra []string
			}{{"lanplus", nil}, {"lanplus", []string{"-C", "3"}}, {"lanplus", []string{"-C", "17"}}, {"lan", nil}} {
				if out, err := labIPMI(t, h, c.iface, c.extra, "chassis", "power", "status"); err != nil || !strings.Contains(out, "Chassis Power is on") {
					t.Errorf("ipmitool -I %s %v power status: %v\n%s", c.iface, c.extra, err, out)
				}
				for _, cred := range [][]string{{"-U", h.BMCUser, "-P", "wrong-password"}, {"-U", "", "-P", ""}} {
					if out, err := labIPMIAs(t, h, c.iface, append(append([]string{}, c.extra...), cred...), "chassis", "power", "status"); err == nil || strings.Contains(out, "Chassis Power") {
						t.Errorf("ipmitool -I %s %v %v was let in:\n%s", c.iface, c.extra, cred, out)
					}
				}
			}
			ipmi := func(want string, args ...string) {
				t.Helper()
				if out, err := labIPMI(t, h, "lanplus", nil, args...); err != nil || !strings.Contains(out, want) {
					t.Fatalf("ipmitool %s: %v\n%s; want %q", strings.Join(args, " "), err, out, want)
				}
			}
			ipmi("Chassis identify interval: default (15 seconds)", "chassis", "identify")
			ipmi("Chassis Power Control: Down/Off", "chassis", "power", "off")
			ipmi("Chassis Power is off", "chassis", "power", "status")
			labPortRefuses(t, h.AgentAddress)
			ipmi("Chassis Power Control: Down/Off", "chassis", "power", "off") // already off: nothing to do
			if out, err := labIPMI(t, h, "lanplus", nil, "chassis", "power", "cycle"); err == nil || !strings.Contains(out, "not supported in present state") {
				t.Errorf("ipmitool power cycle of a host that is off: %v\n%s; want it refused", err, out)
			}
			boot := labBootID(t, h)
			ipmi("Chassis Power Control: Up/On", "chassis", "power", "on")
			ipmi("Chassis Power is on", "chassis", "power", "status")
			labAgentStatus(t, m, h)
			for _, control := range []string{"cycle", "reset"} {
				ipmi("Chassis Power Control: "+strings.ToUpper(control[:1])+control[1:], "chassis", "power", control)
				if b := labBootID(t, h); b == boot {
					t.Errorf("power %s kept h6's boot id", control)
				} else {
					boot = b
				}
				labAgentStatus(t, m, h)
			}
			// Soft: the agent is asked to stop, then the power goes.
			ipmi("Chassis Power Control: Soft", "chassis", "power", "soft")
			deadline := time.Now().Add(labDeadline)
			for {
				out, err := labIPMI(t, h, "lanplus", nil, "chassis", "power", "status")
				if err == nil && strings.Contains(out, "Chassis Power is off") {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("h6 still on %s after a soft power off: %v\n%s", labDeadline, err, out)
				}
				time.Sleep(200 * time.Millisecond)
			}
			if log, _ := os.ReadFile(h.Log()); !strings.Contains(string(log), "kvmagent shutting down") {
				t.Errorf("h6's agent was not asked to stop by the soft power off; its log:\n%s", log)
			}

			var got []string
			for _, e := range labBMCLog(t, h) {
				got = append(got, e.Control+":"+e.PowerBefore+">"+e.PowerAfter)
			}
			want := []string{"identify:on>on", "off:on>off", "off:off>off", "cycle:off>off", "on:off>on", "cycle:on>on", "reset:on>on", "soft:on>on"}
			if strings.Join(got, " ") != strings.Join(want, " ") {
				t.Errorf("h6's BMC log: %v, want %v", got, want)
			}
		}},
	}
	var wg sync.WaitGroup
	for _, c := range cases {
		wg.Go(func() { t.Run(c.name, c.run) })
	}
	wg.Wait()
}

// labPower checks that ipmitool (lanplus) says h's chassis power is want, when.
func labPower(t *testing.T, h *lab.HostManifest, want, when string) {
	t.Helper()
	if out, err := labIPMI(t, h, "lanplus", nil, "chassis", "power", "status"); err != nil || !strings.Contains(out, "Chassis Power is "+want) {
		t.Errorf("ipmitool chassis power status %s: %v\n%s; want %q", when, err, out, "Chassis Power is "+want)
	}
}

// labNeedIPMITool fails the test when Debian's ipmitool is missing: `make deps` installs it.
func labNeedIPMITool(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("ipmitool"); err != nil {
		t.Fatalf("ipmitool is not installed (these tests drive the lab's BMCs with it): run `make deps`, or `apt-get install ipmitool`")
	}
}

// labRun runs `kvmctl lab ARGS --dir DIR` and returns its stdout.
func labRun(t *testing.T, m *lab.Manifest, want int, args ...string) string {
	t.Helper()
	out, _ := e2eKvmctl(t, m, want, append(append([]string{"lab"}, args...), "--dir", m.Dir)...)
	return out
}

// labRefused runs a lab command that must be refused (exit 2) saying why.
func labRefused(t *testing.T, m *lab.Manifest, what, why string, args ...string) {
	t.Helper()
	code, out, errOut := runKvmctl(t, m.StatePath(), append(append([]string{"lab"}, args...), "--dir", m.Dir)...)
	if code != 2 || !strings.Contains(errOut, why) || out != "" {
		t.Errorf("%s: exit %d, stdout %q, stderr %q; want exit 2 saying %q", what, code, out, errOut, why)
	}
}

// labOneLine checks that a command printed exactly one line, starting with prefix.
func labOneLine(t *testing.T, out, prefix string) {
	t.Helper()
	if strings.Count(out, "\n") != 1 || !strings.HasPrefix(out, prefix) {
		t.Errorf("printed %q, want one line starting with %q", out, prefix)
	}
}

func labHeartbeat(m *lab.Manifest, h *lab.HostManifest) string {
	return filepath.Join(m.SharedDir(), api.HeartbeatFileName(h.Name))
}

func labDisks(m *lab.Manifest, h *lab.HostManifest) []string {
	disks, _ := filepath.Glob(filepath.Join(m.SharedDir(), h.Name+"-vm*.img"))
	return disks
}

// labHostFiles are what a host writes to the shared storage: its heartbeat and its VMs' disks.
func labHostFiles(m *lab.Manifest, h *lab.HostManifest) []string {
	return append([]string{labHeartbeat(m, h)}, labDisks(m, h)...)
}

func labMtimes(t *testing.T, paths []string) []time.Time {
	t.Helper()
	if len(paths) == 0 {
		t.Fatal("no files to watch")
	}
	out := make([]time.Time, len(paths))
	for i, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = fi.ModTime()
	}
	return out
}

// labAdvancing waits until every file of paths was written after this call.
func labAdvancing(t *testing.T, what string, paths ...string) {
	t.Helper()
	base := labMtimes(t, paths)
	deadline := time.Now().Add(labDeadline)
	for {
		now, all := labMtimes(t, paths), true
		for i := range paths {
			all = all && now[i].After(base[i])
		}
		if all {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not every file was written within %s: %v", what, labDeadline, paths)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// labQuiet waits for a window of labQuietWindow in which no file of paths was written: a write
// in flight when the fault came may land, then nothing may.
func labQuiet(t *testing.T, what string, paths ...string) {
	t.Helper()
	deadline := time.Now().Add(labDeadline)
	base, since := labMtimes(t, paths), time.Now()
	for time.Since(since) < labQuietWindow {
		if time.Now().After(deadline) {
			t.Fatalf("%s: still written %s on: %v", what, labDeadline, paths)
		}
		time.Sleep(200 * time.Millisecond)
		if now := labMtimes(t, paths); !equalTimes(now, base) {
			base, since = now, time.Now()
		}
	}
}

func equalTimes(a, b []time.Time) bool {
	for i := range a {
		if !a[i].Equal(b[i]) {
			return false
		}
	}
	return true
}

// labPortRefuses checks that nothing listens on addr any more.
func labPortRefuses(t *testing.T, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err == nil {
		c.Close()
		t.Errorf("%s accepts connections; want it refused", addr)
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial %s: %v; want connection refused", addr, err)
	}
}

func labBootID(t *testing.T, h *lab.HostManifest) string {
	t.Helper()
	b, err := os.ReadFile(h.BootIDFile())
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// labAgentStatus waits until h's agent answers through the inventory's address and returns its status.
func labAgentStatus(t *testing.T, m *lab.Manifest, h *lab.HostManifest) api.Status {
	t.Helper()
	c, err := api.ClientForHost(m.PKIDir(), h.Name, h.Address)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	deadline := time.Now().Add(labDeadline)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := c.Status(ctx)
		cancel()
		if err == nil {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent of %s did not answer on %s within %s: %v", h.Name, h.Address, labDeadline, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// labConnection runs `kvmctl host status HOST`, which must exit with code, and returns the host's
// connection. A host that must answer gets a long timeout, one that must not a short one.
func labConnection(t *testing.T, m *lab.Manifest, host string, code int) string {
	t.Helper()
	timeout := "20s"
	if code != 0 {
		timeout = "2s"
	}
	out, _ := e2eKvmctl(t, m, code, "--json", "host", "status", host, "--timeout", timeout)
	var hosts []e2eHost
	if err := json.Unmarshal([]byte(out), &hosts); err != nil || len(hosts) != 1 {
		t.Fatalf("host status %s --json: %v\n%s", host, err, out)
	}
	return hosts[0].Connection
}

func labBMCLog(t *testing.T, h *lab.HostManifest) []lab.BMCLogEntry {
	t.Helper()
	log, err := lab.ReadBMCLog(h)
	if err != nil || len(log) == 0 {
		t.Fatalf("BMC log of %s: %v, %v", h.Name, log, err)
	}
	return log
}

// labIPMI runs ipmitool as h's BMC user (the password from its file) and returns its output.
func labIPMI(t *testing.T, h *lab.HostManifest, iface string, extra []string, args ...string) (string, error) {
	t.Helper()
	return labIPMIAs(t, h, iface, append([]string{"-U", h.BMCUser, "-f", h.BMCPasswordFile()}, extra...), args...)
}

func labIPMIAs(t *testing.T, h *lab.HostManifest, iface string, opts []string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), labDeadline)
	defer cancel()
	// ipmitool sends a request again after a second without an answer, and a BMC would carry
	// out a control sent twice twice: on a loaded machine, wait longer first (opts may override).
	argv := append([]string{"-I", iface, "-H", "127.0.0.1", "-p", strconv.Itoa(h.BMCPort), "-N", "10"}, opts...)
	out, err := exec.CommandContext(ctx, "ipmitool", append(argv, args...)...).CombinedOutput()
	return string(out), err
}
