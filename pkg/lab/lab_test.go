package lab

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/orchestrate"
	"github.com/kvmctl/kvmctl/pkg/state"
	"github.com/kvmctl/kvmctl/pkg/virt"
	"github.com/kvmctl/kvmctl/pkg/virt/libvirtdrv"
)

func TestClusterBlocks(t *testing.T) {
	cases := []struct {
		n, m int
		want string
	}{
		{6, 2, "000111"},
		{3, 2, "001"},
		{7, 3, "0001122"},
		{1, 1, "0"},
	}
	for _, c := range cases {
		var got strings.Builder
		for i := 0; i < c.n; i++ {
			got.WriteByte(byte('0' + clusterOf(i, c.n, c.m)))
		}
		if got.String() != c.want {
			t.Errorf("clusterOf(%d hosts, %d clusters) = %s, want %s", c.n, c.m, got.String(), c.want)
		}
	}
}

// Any one host's VMs must fit on the others of its cluster; the planner is the judge.
func TestHostSizingLetsAnyHostBeEmptied(t *testing.T) {
	for _, c := range []struct{ size, vms int }{{3, 3}, {2, 3}, {3, 2}, {5, 10}, {2, 0}} {
		var hosts []orchestrate.CapacityHost
		for i := 0; i < c.size; i++ {
			cpus, mem := sizeHost(c.vms, c.size)
			h := orchestrate.CapacityHost{Name: string(rune('a' + i)), Cluster: "c1", ResourceState: state.Enabled,
				Connection: state.ConnUp, AgentState: "Up", CPUs: cpus, MemoryMiB: mem}
			for k := 0; k < c.vms; k++ {
				h.VMs = append(h.VMs, orchestrate.CapacityVM{Name: h.Name + string(rune('0'+k)), State: "running", VCPUs: 1, MemoryMiB: 1024})
			}
			hosts = append(hosts, h)
		}
		plan, err := orchestrate.PlanCapacity(orchestrate.CapacityInput{Hosts: hosts, Empty: []string{"a"}, CPUFactor: 1, MemFactor: 1})
		if err != nil || !plan.OK() {
			t.Errorf("cluster of %d hosts with %d VMs each: host a cannot be emptied: %+v, %v", c.size, c.vms, plan.Unplaced, err)
		}
	}
}

func TestBuildWritesAFleet(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "lab")
	m, err := Build(Options{Dir: dir, Hosts: 3, Clusters: 2, VMs: 2, Agent: "/bin/false"})
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Hosts) != 3 || m.Hosts[2].Cluster != "c2" {
		t.Fatalf("hosts = %+v", m.Hosts)
	}
	h := m.Hosts[0]
	props, err := os.ReadFile(h.Config())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"host.name=h1", "listen=" + h.AgentAddress, "libvirt.uri=test://" + h.Dir + "/node.xml", "boot.id.file=",
		"rolling.maintenance.service.executor.disabled=false", "heartbeat.dir=" + m.SharedDir() + "\n", "heartbeat.interval=1",
		"vm.disk.dirs=" + m.SharedDir() + "\n", "lab.storage.stall.file=" + h.StallFile()} {
		if !strings.Contains(string(props), want) {
			t.Errorf("agent.properties lacks %q:\n%s", want, props)
		}
	}
	// AgentExecutor: every agent runs its stage scripts itself.
	m2, err := Build(Options{Dir: filepath.Join(t.TempDir(), "lab"), Hosts: 2, Clusters: 1, Agent: "/bin/false", AgentExecutor: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range m2.Hosts {
		if props, err := os.ReadFile(h.Config()); err != nil || !strings.Contains(string(props), "rolling.maintenance.service.executor.disabled=true") {
			t.Errorf("%s with AgentExecutor: %v\n%s", h.Name, err, props)
		}
	}
	hv, err := libvirtdrv.Open("test://" + filepath.Join(h.Dir, "node.xml"))
	if err != nil {
		t.Fatal(err)
	}
	defer hv.Close()
	vms, err := hv.ListVMs()
	if err != nil || len(vms) != 2 || vms[0].State != virt.StateRunning || !strings.HasPrefix(vms[0].Disks[0], filepath.Join(m.Dir, "shared")) {
		t.Errorf("h1's VMs = %+v, %v; want 2 running VMs with disks in shared/", vms, err)
	}
	for _, s := range hookScripts {
		fi, err := os.Stat(filepath.Join(h.Dir, "hooks", s.name))
		if err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("hook %s: %v %v", s.name, fi, err)
		}
	}
	if _, err := Build(Options{Dir: dir, Hosts: 3, Clusters: 2, VMs: 2}); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("second Build = %v, want a refusal", err)
	}
	// Every host has its own ports (a proxy and an agent on TCP, a BMC on UDP), its own BMC
	// user and password, and the inventory points at the proxy and holds the BMC.
	tcp, udp := map[string]bool{}, map[int]bool{}
	for _, h := range m.Hosts {
		for _, a := range []string{h.Address, h.AgentAddress} {
			if tcp[a] {
				t.Errorf("%s: address %s used twice", h.Name, a)
			}
			tcp[a] = true
		}
		if udp[h.BMCPort] || h.BMCPort < portFloor {
			t.Errorf("%s: BMC port %d used twice or below %d", h.Name, h.BMCPort, portFloor)
		}
		udp[h.BMCPort] = true
		fi, err := os.Stat(h.BMCPasswordFile())
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: bmc.password %v, %v; want mode 0600", h.Name, fi, err)
		}
		if fi, err := os.Stat(filepath.Dir(h.ControlSocket())); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: control socket directory %v, %v; want mode 0700", h.Name, fi, err)
		}
	}
	pw1, err1 := m.Hosts[0].BMCPassword()
	pw2, err2 := m.Hosts[1].BMCPassword()
	if err1 != nil || err2 != nil || len(pw1) != 16 || pw1 == pw2 {
		t.Errorf("BMC passwords %q, %q (%v, %v): want 16 characters, one per host", pw1, pw2, err1, err2)
	}
	st := state.New(m.StatePath())
	_ = st.View(func(tx state.Tx) error {
		hs, _ := state.Hosts(tx)
		if len(hs) != 3 || hs[1].Cluster != "c1" || hs[1].Address != m.Hosts[1].Address {
			t.Errorf("inventory hosts = %+v", hs)
		}
		for _, h := range hs {
			if !h.Lab {
				t.Errorf("host %s is not marked as a lab host", h.Name)
			}
		}
		b, err := state.GetBMC(tx, "host", "h1")
		want := state.BMC{Driver: "ipmi", Address: "127.0.0.1", Port: m.Hosts[0].BMCPort, Username: "lab-h1", Password: pw1, Interface: "lanplus", Action: "off"}
		if err != nil || !reflect.DeepEqual(b, want) {
			t.Errorf("inventory BMC of h1 = %+v, %v; want %+v", b, err, want)
		}
		return nil
	})
}

func TestValidate(t *testing.T) {
	for _, o := range []Options{{Dir: "x", Hosts: 0, Clusters: 1}, {Dir: "x", Hosts: 2, Clusters: 3}, {Dir: "x", Hosts: 2, Clusters: 1, VMs: -1}, {Hosts: 1, Clusters: 1},
		// Written into agent.properties, where a newline would start a key of its own.
		{Dir: "lab\nlibvirt.uri=qemu:///system", Hosts: 1, Clusters: 1}, {Dir: "lab\x00", Hosts: 1, Clusters: 1}} {
		if err := o.Validate(); !errs.IsRefused(err) {
			t.Errorf("Validate(%+v) = %v, want a refusal", o, err)
		}
	}
	o := Options{Dir: "lab\n", Hosts: 1, Clusters: 1}
	if err := o.Validate(); err == nil || !strings.Contains(err.Error(), `invalid --dir "lab\n": control character U+000A at byte 3`) {
		t.Errorf("Validate(newline) = %v", err)
	}
}

func TestHostRefusesControlCharacters(t *testing.T) {
	m := &Manifest{Dir: "/lab", Hosts: []HostManifest{{Name: "h1"}}}
	if _, err := m.Host("h1\x00"); !errs.IsRefused(err) || !strings.Contains(err.Error(), `invalid host name "h1\x00": NUL at byte 2`) {
		t.Errorf("Host(NUL-suffixed) = %v", err)
	}
	if h, err := m.Host("h1"); err != nil || h.Name != "h1" {
		t.Errorf("Host(h1) = %v, %v", h, err)
	}
}

// The sample scripts log their payload, which may carry a secret: the log is the owner's alone,
// whatever the umask the agent runs them with.
func TestSampleHookLogIsPrivate(t *testing.T) {
	dir := t.TempDir()
	hooks := filepath.Join(dir, "hooks")
	if err := os.Mkdir(hooks, 0o755); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(hooks, "PreFlight.sh")
	if err := os.WriteFile(script, []byte(sampleHook("check", 0)), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sh", "-c", "umask 022; exec "+script+" token=s3cret")
	cmd.Dir = hooks
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sample hook: %v\n%s", err, out)
	}
	fi, err := os.Stat(filepath.Join(dir, "hooks.log"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("hooks.log: %v, %v; want mode 0600", fi, err)
	}
}
