// Package lab builds a whole KVM fleet on one machine: a state file and fleet PKI of its own,
// one simulated machine per host with a kvmagent on a 127.0.0.1 port, libvirt's test driver
// standing in for each host's hypervisor, a shared directory standing in for NFS, and a BMC per
// machine that speaks IPMI on a 127.0.0.1 UDP port. Everything kvmctl can do to a real fleet can
// be tried on it, faults included (crash, partition, storage stall, a silent BMC), and the
// end-to-end tests run against it.
//
// Each host is one long-lived machine process (`kvmctl lab machine DIR HOST`, see machine.go):
// it owns the host's power, starts its agent at power-on and kills it at power-off, writes to
// the disks of the VMs that run on it every second (their guest I/O), serves its BMC, and
// forwards kvmctl's connections to the agent through a proxy that a partition cuts.
//
// The directory:
//
//	DIR/lab.json                 the manifest: hosts, clusters, ports, machine pids
//	DIR/state.db, DIR/pki/       kvmctl's state and the fleet CA, as `kvmctl init` makes them
//	DIR/shared/                  VM disk files and heartbeat files hb-hN (the stand-in for NFS)
//	DIR/hosts/hN/agent.properties
//	DIR/hosts/hN/tls/            agent.crt, agent.key, ca.crt
//	DIR/hosts/hN/hooks/          sample stage scripts that log what they would do
//	DIR/hosts/hN/node.xml        libvirt test-driver node: the host's CPUs, memory and VMs
//	DIR/hosts/hN/boot_id         the host's boot id; every power-on (and SimulateReboot) rewrites it
//	DIR/hosts/hN/state/          the agent's own state
//	DIR/hosts/hN/agent.log       the agent's output
//	DIR/hosts/hN/machine.log     the machine's output; machine.json its state (power, agent, faults)
//	DIR/hosts/hN/run/machine.sock  the machine's control socket (directory mode 0700)
//	DIR/hosts/hN/bmc.password    the BMC user's password (mode 0600); bmc.log every chassis control
//	DIR/hosts/hN/storage.stall   present while the host's shared storage is stalled
package lab

import (
	crand "crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/fsutil"
	"github.com/kvmctl/kvmctl/pkg/inventory"
	"github.com/kvmctl/kvmctl/pkg/pki"
	"github.com/kvmctl/kvmctl/pkg/safetext"
	"github.com/kvmctl/kvmctl/pkg/state"
	"github.com/kvmctl/kvmctl/pkg/virt"
)

// ManifestFile is the lab's own record inside its directory.
const ManifestFile = "lab.json"

// Zone and Pod of every lab host.
const (
	Zone = "z1"
	Pod  = "p1"
)

// Options say what fleet to build.
type Options struct {
	Dir      string
	Hosts    int
	Clusters int
	VMs      int    // per host
	Agent    string // path of the kvmagent binary
	// Machine is the kvmctl binary that runs each host's machine (`kvmctl lab machine`); empty
	// for the one FindMachine finds.
	Machine string
	// AgentExecutor runs every host's stage scripts inside its agent
	// (rolling.maintenance.service.executor.disabled=true) instead of through kvmagent-stage.
	AgentExecutor bool
}

// Manifest is what the lab knows about itself, kept in DIR/lab.json.
type Manifest struct {
	Dir       string         `json:"dir"`
	CreatedAt time.Time      `json:"created_at"`
	Agent     string         `json:"agent"`
	Machine   string         `json:"machine"`
	Hosts     []HostManifest `json:"hosts"`
}

// HostManifest is one simulated host: its machine, the agent on it and its BMC.
type HostManifest struct {
	Name    string `json:"name"`
	Cluster string `json:"cluster"`
	// Address is what kvmctl dials (the inventory's address): the machine's proxy in front of
	// the agent, which `lab partition` cuts. The agent itself listens on AgentAddress.
	Address      string `json:"address"`
	AgentAddress string `json:"agent_address"`
	// BMCPort is the UDP port of the host's BMC on 127.0.0.1; BMCUser its user, whose password
	// is in BMCPasswordFile.
	BMCPort int    `json:"bmc_port"`
	BMCUser string `json:"bmc_user"`
	Dir     string `json:"dir"`
	CPUs    int    `json:"cpus"`
	MemMiB  uint64 `json:"memory_mib"`
	// MachinePID is the host's machine process, 0 when the lab did not start it.
	MachinePID int `json:"machine_pid,omitempty"`
}

// Config is the path of the host's agent.properties.
func (h HostManifest) Config() string { return filepath.Join(h.Dir, "agent.properties") }

// Log is the path of the host's agent log.
func (h HostManifest) Log() string { return filepath.Join(h.Dir, "agent.log") }

// MachineLog is the path of the host's machine log.
func (h HostManifest) MachineLog() string { return filepath.Join(h.Dir, "machine.log") }

// MachineStateFile is where the host's machine keeps its state (MachineState).
func (h HostManifest) MachineStateFile() string { return filepath.Join(h.Dir, "machine.json") }

// ControlSocket is the machine's control socket, in a directory only the owner may enter.
func (h HostManifest) ControlSocket() string { return filepath.Join(h.Dir, "run", "machine.sock") }

// NodeFile is the host's libvirt test-driver node file.
func (h HostManifest) NodeFile() string { return filepath.Join(h.Dir, "node.xml") }

// BootIDFile holds the host's boot id.
func (h HostManifest) BootIDFile() string { return filepath.Join(h.Dir, "boot_id") }

// StallFile exists while the host's shared storage is stalled (agent.properties
// lab.storage.stall.file names it).
func (h HostManifest) StallFile() string { return filepath.Join(h.Dir, "storage.stall") }

// BMCPasswordFile holds the password of the host's BMC user (mode 0600; `ipmitool -f` reads it).
func (h HostManifest) BMCPasswordFile() string { return filepath.Join(h.Dir, "bmc.password") }

// BMCLog is the host's BMC log: one JSON line per chassis control it received (BMCLogEntry).
func (h HostManifest) BMCLog() string { return filepath.Join(h.Dir, "bmc.log") }

// BMCAddress is the BMC's UDP address.
func (h HostManifest) BMCAddress() string { return fmt.Sprintf("127.0.0.1:%d", h.BMCPort) }

// SharedDir is the lab's stand-in for NFS: VM disks and heartbeat files.
func (m *Manifest) SharedDir() string { return filepath.Join(m.Dir, "shared") }

// StatePath is the lab's kvmctl state file.
func (m *Manifest) StatePath() string { return filepath.Join(m.Dir, "state.db") }

// PKIDir is the lab's fleet PKI.
func (m *Manifest) PKIDir() string { return filepath.Join(m.Dir, "pki") }

// Host returns the host called name.
func (m *Manifest) Host(name string) (*HostManifest, error) {
	if err := safetext.Check("host name", name); err != nil {
		return nil, errs.Refused(err)
	}
	for i := range m.Hosts {
		if m.Hosts[i].Name == name {
			return &m.Hosts[i], nil
		}
	}
	names := make([]string, len(m.Hosts))
	for i, h := range m.Hosts {
		names[i] = h.Name
	}
	return nil, errs.Refusedf("no host %q in the lab at %s (hosts: %s)", name, m.Dir, strings.Join(names, ", "))
}

// Validate checks the options before anything is written.
func (o *Options) Validate() error {
	switch {
	case o.Hosts < 1 || o.Hosts > 500:
		return errs.Refusedf("--hosts %d: use 1 to 500", o.Hosts)
	case o.Clusters < 1 || o.Clusters > o.Hosts:
		return errs.Refusedf("--clusters %d: use 1 to the number of hosts (%d)", o.Clusters, o.Hosts)
	case o.VMs < 0 || o.VMs > 50:
		return errs.Refusedf("--vms %d: use 0 to 50 per host", o.VMs)
	case o.Dir == "":
		return errs.Refusedf("--dir is empty: name the lab's directory")
	}
	// The directory is written into every agent.properties, one key a line: a newline in it
	// would add keys.
	if err := safetext.Check("--dir", o.Dir); err != nil {
		return errs.Refused(err)
	}
	return nil
}

// Load reads the manifest of the lab in dir.
func Load(dir string) (*Manifest, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(filepath.Join(abs, ManifestFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errs.Refusedf("no lab in %s: run `kvmctl lab up --dir %s` first", abs, dir)
	}
	if err != nil {
		return nil, err
	}
	var m Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("read %s: %w", filepath.Join(abs, ManifestFile), err)
	}
	return &m, nil
}

// Save writes the manifest atomically.
func (m *Manifest) Save() error {
	raw, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(filepath.Join(m.Dir, ManifestFile), append(raw, '\n'), 0o600)
}

func writeAtomic(path string, data []byte, mode fs.FileMode) error {
	return fsutil.WriteFileAtomic(path, data, mode)
}

// sizeHost gives every host room for its own VMs plus one other host's VMs spread over the
// rest of its cluster, and then some, so that maintenance of any one host (and of two hosts
// at once in clusters of four or more) fits.
func sizeHost(vms, clusterSize int) (cpus int, memMiB uint64) {
	others := clusterSize - 1
	if others < 1 {
		others = 1
	}
	extra := 2 * ((vms + others - 1) / others) // two hosts' worth, spread
	cpus = vms + extra + 2
	return cpus, uint64(cpus) * 1024
}

// clusterOf places host i (0-based) of n in one of m clusters in contiguous blocks.
func clusterOf(i, n, m int) int {
	base, rem := n/m, n%m
	// The first rem clusters get one host more.
	for c, start := 0, 0; c < m; c++ {
		size := base
		if c < rem {
			size++
		}
		if i < start+size {
			return c
		}
		start += size
	}
	return m - 1
}

// Build writes the whole lab into o.Dir: state, PKI, inventory and every host's files. It does
// not start agents (see Start). A directory that already holds a lab is refused.
func Build(o Options) (*Manifest, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(dir, ManifestFile)); err == nil {
		return nil, errs.Refusedf("a lab already exists in %s: `kvmctl lab down --purge --dir %s` first, or use another --dir", dir, o.Dir)
	}
	if err := os.MkdirAll(filepath.Join(dir, "shared"), 0o755); err != nil {
		return nil, fmt.Errorf("create lab: %w", err)
	}
	m := &Manifest{Dir: dir, CreatedAt: time.Now().UTC(), Agent: o.Agent, Machine: o.Machine}
	st := state.New(m.StatePath())
	if _, err := st.Create(); err != nil {
		return nil, err
	}
	if _, err := pki.InitCA(m.PKIDir(), time.Now()); err != nil {
		return nil, err
	}
	sizes := make([]int, o.Clusters)
	for i := 0; i < o.Hosts; i++ {
		sizes[clusterOf(i, o.Hosts, o.Clusters)]++
	}
	// Per host: the proxy kvmctl dials and the agent behind it (TCP), and the BMC (UDP).
	tcp, err := freePorts("tcp", 2*o.Hosts)
	if err != nil {
		return nil, err
	}
	udp, err := freePorts("udp", o.Hosts)
	if err != nil {
		return nil, err
	}
	passwords := map[string]string{}
	for i := 0; i < o.Hosts; i++ {
		c := clusterOf(i, o.Hosts, o.Clusters)
		cpus, mem := sizeHost(o.VMs, sizes[c])
		name := fmt.Sprintf("h%d", i+1)
		h := HostManifest{
			Name:         name,
			Cluster:      fmt.Sprintf("c%d", c+1),
			Address:      fmt.Sprintf("127.0.0.1:%d", tcp[2*i]),
			AgentAddress: fmt.Sprintf("127.0.0.1:%d", tcp[2*i+1]),
			BMCPort:      udp[i],
			BMCUser:      "lab-" + name, // at most 16 bytes, as IPMI wants: hosts go to h500
			Dir:          filepath.Join(dir, "hosts", name),
			CPUs:         cpus,
			MemMiB:       mem,
		}
		if err := writeHost(m, h, o.VMs, o.AgentExecutor); err != nil {
			return nil, fmt.Errorf("lab host %s: %w", h.Name, err)
		}
		if passwords[name], err = writeBMCPassword(h); err != nil {
			return nil, fmt.Errorf("lab host %s: %w", h.Name, err)
		}
		m.Hosts = append(m.Hosts, h)
	}
	err = st.Update(func(tx state.Tx) error {
		if _, err := inventory.AddZone(tx, Zone); err != nil {
			return err
		}
		if _, err := inventory.AddPod(tx, Pod, Zone); err != nil {
			return err
		}
		for c := 1; c <= o.Clusters; c++ {
			if _, err := inventory.AddCluster(tx, fmt.Sprintf("c%d", c), Pod); err != nil {
				return err
			}
		}
		for _, h := range m.Hosts {
			if _, err := inventory.AddHost(tx, state.Host{Name: h.Name, Cluster: h.Cluster, Address: h.Address, Tags: []string{"lab"}, Lab: true}); err != nil {
				return err
			}
			// Fencing works on a fresh lab: each host's BMC, as `kvmctl bmc set --host` would store it.
			if err := state.PutBMC(tx, "host", h.Name, h.BMCSettings(passwords[h.Name])); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("lab inventory: %w", err)
	}
	return m, m.Save()
}

func writeHost(m *Manifest, h HostManifest, vms int, agentExecutor bool) error {
	for _, d := range []string{"tls", "hooks", "run"} {
		if err := os.MkdirAll(filepath.Join(h.Dir, d), 0o755); err != nil {
			return err
		}
	}
	// The agent's own: it refuses a state dir others can read.
	if err := os.Mkdir(filepath.Join(h.Dir, "state"), 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	// The agent refuses hooks in a directory others can write to; keep it tight.
	if err := os.Chmod(filepath.Join(h.Dir, "hooks"), 0o755); err != nil {
		return err
	}
	// Whoever can reach the machine's control socket can crash the host: the owner only.
	if err := os.Chmod(filepath.Dir(h.ControlSocket()), 0o700); err != nil {
		return err
	}
	if _, err := pki.IssueAgent(m.PKIDir(), filepath.Join(h.Dir, "tls"), h.Name, []string{"127.0.0.1"}, time.Now()); err != nil {
		return err
	}
	spec := virt.NodeSpec{HostName: h.Name, CPUs: h.CPUs, MemoryMiB: h.MemMiB}
	for k := 1; k <= vms; k++ {
		name := fmt.Sprintf("%s-vm%d", h.Name, k)
		disk := filepath.Join(m.Dir, "shared", name+".img")
		if err := os.WriteFile(disk, []byte("lab disk of "+name+"\n"), 0o644); err != nil {
			return err
		}
		spec.VMs = append(spec.VMs, virt.VMSpec{Name: name, UUID: virt.NameUUID(name), VCPUs: 1, MemoryMiB: 1024, Disks: []string{disk}, Running: true})
	}
	node, err := virt.NodeXML(spec)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(h.Dir, "node.xml"), node, 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(h.Dir, "boot_id"), []byte(newBootID()+"\n"), 0o644); err != nil {
		return err
	}
	for _, s := range hookScripts {
		if err := os.WriteFile(filepath.Join(h.Dir, "hooks", s.name), []byte(s.body), 0o755); err != nil {
			return err
		}
	}
	props := fmt.Sprintf(`# kvmagent of lab host %[1]s, written by kvmctl lab up.
host.name=%[1]s
listen=%[2]s
tls.cert=%[3]s/tls/agent.crt
tls.key=%[3]s/tls/agent.key
tls.ca=%[3]s/tls/ca.crt
libvirt.uri=test://%[3]s/node.xml
state.dir=%[3]s/state
rolling.maintenance.hooks.dir=%[3]s/hooks
rolling.maintenance.service.executor.disabled=%[5]t
heartbeat.dir=%[4]s
heartbeat.interval=1
boot.id.file=%[3]s/boot_id
vm.disk.dirs=%[4]s
# Lab only: kvmctl lab storage-stall creates this file; while it exists heartbeat writes block.
lab.storage.stall.file=%[6]s
`, h.Name, h.AgentAddress, h.Dir, m.SharedDir(), agentExecutor, h.StallFile())
	return os.WriteFile(h.Config(), []byte(props), 0o644)
}

// SimulateReboot gives host h a new boot id, as a real reboot would.
func SimulateReboot(h *HostManifest) error {
	_, err := newBoot(h)
	return err
}

// newBoot writes a new boot id for h and returns it.
func newBoot(h *HostManifest) (string, error) {
	id := newBootID()
	return id, writeAtomic(h.BootIDFile(), []byte(id+"\n"), 0o644)
}

// BMCSettings are the inventory's settings of h's BMC (state.PutBMC): the IPMI driver over
// lanplus on 127.0.0.1, and HA's action off.
func (h HostManifest) BMCSettings(password string) state.BMC {
	return state.BMC{Driver: "ipmi", Address: "127.0.0.1", Port: h.BMCPort, Username: h.BMCUser, Password: password,
		Interface: "lanplus", Action: "off"}
}

// BMCPassword reads the password of h's BMC user.
func (h HostManifest) BMCPassword() (string, error) {
	b, err := os.ReadFile(h.BMCPasswordFile())
	if err != nil {
		return "", fmt.Errorf("bmc password of %s: %w", h.Name, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// writeBMCPassword gives h's BMC user a fresh password: 96 random bits in 16 characters
// (IPMI v1.5, the lan interface, takes no more).
func writeBMCPassword(h HostManifest) (string, error) {
	var b [12]byte
	if _, err := crand.Read(b[:]); err != nil {
		return "", err
	}
	pw := base64.RawURLEncoding.EncodeToString(b[:])
	return pw, writeAtomic(h.BMCPasswordFile(), []byte(pw+"\n"), 0o600)
}

func newBootID() string {
	var b [16]byte
	_, _ = crand.Read(b[:])
	s := hex.EncodeToString(b[:])
	return s[0:8] + "-" + s[8:12] + "-" + s[12:16] + "-" + s[16:20] + "-" + s[20:32]
}

// freePorts asks the kernel for n distinct free loopback ports of network (tcp or udp). They
// are held open together so no two are the same, then released for the machines and agents to
// bind.
func freePorts(network string, n int) ([]int, error) {
	var ls []io.Closer
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	// Ports below the kernel's ephemeral range: an agent restarted on its port must not find it
	// taken by the source port of some connection (kvmctl's own to the other agents) that the
	// kernel handed out meanwhile.
	low := ephemeralLow()
	if low-1 < portFloor+n {
		low = 65536 // no room below: take ephemeral ports as before
	}
	ports := make([]int, 0, n)
	for tries := 0; len(ports) < n; tries++ {
		addr := "127.0.0.1:0"
		if low <= 65535 && tries < 100*n {
			addr = fmt.Sprintf("127.0.0.1:%d", portFloor+rand.IntN(low-portFloor))
		}
		l, port, err := listenPort(network, addr)
		if err != nil {
			if addr != "127.0.0.1:0" {
				continue // taken: try another
			}
			return nil, fmt.Errorf("find a free %s port: %w", network, err)
		}
		ls = append(ls, l)
		ports = append(ports, port)
	}
	return ports, nil
}

func listenPort(network, addr string) (io.Closer, int, error) {
	if network == "udp" {
		c, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, 0, err
		}
		return c, c.LocalAddr().(*net.UDPAddr).Port, nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, 0, err
	}
	return l, l.Addr().(*net.TCPAddr).Port, nil
}

// portFloor is the lowest port the lab picks for its agents.
const portFloor = 20000

// ephemeralLow is the lowest source port the kernel hands out to outgoing connections.
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	var l, h int
	if err == nil {
		if _, err := fmt.Sscanf(string(b), "%d %d", &l, &h); err == nil && l > 0 && h >= l {
			return l
		}
	}
	return 32768 // Linux's default
}

type script struct{ name, body string }

// hookScripts are the lab's sample stage scripts: they say what a real one would do, log it
// beside the hooks directory, and succeed.
var hookScripts = []script{
	{"PreFlight.sh", sampleHook("check that the host is healthy enough to be patched", 0)},
	{"PreMaintenance.sh", sampleHook("download packages before VMs are moved away", 0)},
	{"Maintenance.sh", sampleHook("install updates and reboot into the new kernel", 2)},
	{"PostMaintenance.sh", sampleHook("check that services and the agent came back", 0)},
}

// sampleHook is a stage script that logs what a real one would do; the Maintenance sample takes
// a couple of seconds, as installing updates would, so the live view has something to show.
func sampleHook(what string, seconds int) string {
	pause := ""
	if seconds > 0 {
		pause = fmt.Sprintf("sleep %d\n", seconds)
	}
	return `#!/bin/sh
# Lab sample: a real script would ` + what + `.
# Exit 0: done; exit 70: no maintenance needed on this host; anything else: failed.
# The log holds the payload, which may carry secrets: only its owner reads it.
umask 077
echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $KVM_STAGE on $KVM_HOST (run $KVM_RUN_ID) args: $*" >> ../hooks.log
echo "working: ` + what + `"
` + pause + `echo "would ` + what + `"
exit 0
`
}
