package ha

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/fence"
	"github.com/kvmctl/kvmctl/pkg/holds"
	"github.com/kvmctl/kvmctl/pkg/inventory"
	"github.com/kvmctl/kvmctl/pkg/journal"
	"github.com/kvmctl/kvmctl/pkg/notify"
	"github.com/kvmctl/kvmctl/pkg/settings"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// The unit tests of the monitor's rules run in synctest bubbles (time is the bubble's fake
// time) against a simulated fleet: machines with power, agents, network links, shared storage
// and BMCs, whose heartbeat and VM disks advance with time exactly as the lab's do. The fence
// path is the real fence.Service over the simulated BMCs; the store is the in-memory one.

// world is the simulated fleet.
type world struct {
	mu    sync.Mutex
	hosts map[string]*machine
	// notices every notifier call received
	notices []notify.Notice
	// starts counts every DefineAndStartVM that started a VM, by uuid
	starts map[string]int
}

type machine struct {
	name     string
	power    bool
	agent    bool // the agent process runs
	link     bool // kvmctl and neighbours reach the agent
	stall    bool // writes to the shared storage block
	readFail bool // this host's reads of the shared storage fail (as a neighbour)
	bmcDown  bool
	bmcLog   []string
	bootID   string
	boots    int
	// heartbeat: seq advances once a second while the agent runs and the storage writes
	seq    uint64
	seqAt  time.Time
	cpus   int
	memMiB uint64
	vms    []*fakeVM
}

type fakeVM struct {
	name, uuid string
	running    bool
	disk       string
	mtime      time.Time // advances while running on a powered host whose storage writes
	memMiB     uint64
}

func newWorld() *world { return &world{hosts: map[string]*machine{}, starts: map[string]int{}} }

func hbFile(host string) string { return "/shared/" + api.HeartbeatFileName(host) }

// advance brings every machine's files to now.
func (w *world) advance() {
	now := time.Now().Truncate(time.Second)
	for _, m := range w.hosts {
		writes := m.power && !m.stall
		if writes && m.agent {
			if n := uint64(now.Sub(m.seqAt) / time.Second); n > 0 {
				m.seq += n
			}
		}
		if !m.seqAt.Equal(now) {
			m.seqAt = now
		}
		for _, vm := range m.vms {
			if writes && vm.running {
				vm.mtime = now
			}
		}
	}
}

func (w *world) machine(name string) *machine {
	m := w.hosts[name]
	if m == nil {
		panic("no machine " + name)
	}
	return m
}

// do changes the world under its lock, its files brought to now first.
func (w *world) do(f func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.advance()
	f()
}

func (w *world) crash(name string) {
	w.do(func() {
		m := w.machine(name)
		m.power, m.agent = false, false
		for _, vm := range m.vms {
			vm.running = false
		}
	})
}

func (w *world) reachable(h state.Host) (*machine, error) {
	m := w.machine(h.Name)
	if !m.power || !m.agent || !m.link {
		return nil, &net{h.Name}
	}
	return m, nil
}

// net is an unreachable agent's error.
type net struct{ host string }

func (e *net) Error() string { return "agent " + e.host + " is unreachable: connection refused" }

// The Agents side.

func (w *world) Health(ctx context.Context, h state.Host) (api.HealthReport, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.advance()
	m, err := w.reachable(h)
	if err != nil {
		return api.HealthReport{}, err
	}
	ok := m.seqAt
	return api.HealthReport{OK: true, Host: m.name, BootID: m.bootID, AgentState: api.AgentStateUp,
		Heartbeat: &api.HeartbeatHealth{File: hbFile(m.name), Seq: m.seq, LastOK: &ok}}, nil
}

func (w *world) ActivityCheck(ctx context.Context, checker state.Host, req api.ActivityCheckRequest) (api.ActivityCheckResult, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.advance()
	c, err := w.reachable(checker)
	if err != nil {
		return api.ActivityCheckResult{}, err
	}
	res := api.ActivityCheckResult{Checker: c.name, ReadAt: time.Now()}
	if req.HeartbeatFile != "" {
		res.Heartbeat.Path = req.HeartbeatFile
		t := w.hosts[req.Host]
		switch {
		case c.readFail:
			res.Heartbeat.Error = "no answer within 2s"
		case t == nil || req.HeartbeatFile != hbFile(req.Host):
			res.Heartbeat.Error = "no such file"
		default:
			res.Heartbeat.Read = api.HeartbeatRecord{Host: t.name, BootID: t.bootID, Seq: t.seq}
		}
	}
	for _, d := range req.Disks {
		s := api.FileSample{Path: d}
		vm := w.disk(d)
		switch {
		case c.readFail:
			s.Error = "no answer within 2s"
		case vm == nil:
			s.Error = "no such file"
		default:
			s.MTime, s.Size = vm.mtime, 1<<20
		}
		res.Disks = append(res.Disks, s)
	}
	return res, nil
}

func (w *world) disk(path string) *fakeVM {
	for _, m := range w.hosts {
		for _, vm := range m.vms {
			if vm.disk == path {
				return vm
			}
		}
	}
	return nil
}

func (w *world) Status(ctx context.Context, h state.Host) (api.Status, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.advance()
	m, err := w.reachable(h)
	if err != nil {
		return api.Status{}, err
	}
	return m.status(), nil
}

func (m *machine) status() api.Status {
	st := api.Status{HostName: m.name, Hypervisor: "test", BootID: m.bootID, AgentState: api.AgentStateUp,
		Capacity: api.Resources{CPUs: m.cpus, MemoryMiB: m.memMiB}, VMs: []api.VM{}}
	for _, vm := range m.vms {
		state := "shutoff"
		if vm.running {
			state = "running"
			st.Allocation.CPUs++
			st.Allocation.MemoryMiB += vm.memMiB
		}
		st.VMs = append(st.VMs, api.VM{Name: vm.name, UUID: vm.uuid, State: state, VCPUs: 1, MemoryMiB: vm.memMiB,
			Disks: []string{vm.disk}, DefinitionHash: "hash-" + vm.uuid})
	}
	return st
}

func vmXML(vm *fakeVM) string {
	return fmt.Sprintf("<domain type='test'><name>%s</name><uuid>%s</uuid><memory unit='MiB'>%d</memory><vcpu>1</vcpu>"+
		"<devices><disk type='file' device='disk'><source file='%s'/><target dev='vda'/></disk></devices></domain>", vm.name, vm.uuid, vm.memMiB, vm.disk)
}

func (w *world) VMXML(ctx context.Context, h state.Host, name string) (string, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	m, err := w.reachable(h)
	if err != nil {
		return "", err
	}
	for _, vm := range m.vms {
		if vm.name == name {
			return vmXML(vm), nil
		}
	}
	return "", &api.Error{Host: h.Name, Status: 404, Code: api.CodeNotFound, Message: "no VM " + name}
}

var xmlField = regexp.MustCompile(`<(name|uuid|memory unit='MiB')>([^<]*)<`)

func (w *world) DefineAndStartVM(ctx context.Context, h state.Host, xml string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.advance()
	m, err := w.reachable(h)
	if err != nil {
		return err
	}
	vm := &fakeVM{}
	for _, f := range xmlField.FindAllStringSubmatch(xml, -1) {
		switch f[1] {
		case "name":
			vm.name = f[2]
		case "uuid":
			vm.uuid = f[2]
		default:
			_, _ = fmt.Sscan(f[2], &vm.memMiB)
		}
	}
	if i := strings.Index(xml, "<source file='"); i >= 0 {
		rest := xml[i+len("<source file='"):]
		vm.disk = rest[:strings.IndexByte(rest, '\'')]
	}
	for _, o := range m.vms {
		if o.uuid == vm.uuid {
			if o.running {
				return &api.Error{Host: h.Name, Status: 409, Code: "conflict", Message: "already running"}
			}
			o.running, o.mtime = true, time.Now()
			w.starts[vm.uuid]++
			return nil
		}
	}
	vm.running, vm.mtime = true, time.Now()
	m.vms = append(m.vms, vm)
	w.starts[vm.uuid]++
	return nil
}

func (w *world) RemoveVM(ctx context.Context, h state.Host, name string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	m, err := w.reachable(h)
	if err != nil {
		return err
	}
	for i, vm := range m.vms {
		if vm.name == name {
			m.vms = slices.Delete(m.vms, i, i+1)
			return nil
		}
	}
	return &api.Error{Host: h.Name, Status: 404, Code: api.CodeNotFound, Message: "no VM " + name}
}

// running returns where the VM of uuid runs: one host, or several (a VM run twice).
func (w *world) running(uuid string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var where []string
	for name, m := range w.hosts {
		for _, vm := range m.vms {
			if vm.uuid == uuid && vm.running && m.power {
				where = append(where, name)
			}
		}
	}
	slices.Sort(where)
	return where
}

// The BMC side: fence.Driver over a machine.

type fakeBMC struct {
	w    *world
	name string
}

func (w *world) open(b state.BMC, host string) (fence.Driver, error) {
	return &fakeBMC{w: w, name: host}, nil
}

func (b *fakeBMC) call(what string, f func(m *machine)) error {
	b.w.mu.Lock()
	defer b.w.mu.Unlock()
	b.w.advance()
	m := b.w.machine(b.name)
	if m.bmcDown {
		return errors.New("no answer from the BMC within 5s")
	}
	m.bmcLog = append(m.bmcLog, what)
	if f != nil {
		f(m)
	}
	return nil
}

func (b *fakeBMC) Status(ctx context.Context) (fence.Power, error) {
	p := fence.PowerOff
	err := b.call("status", func(m *machine) {
		if m.power {
			p = fence.PowerOn
		}
	})
	return p, err
}

func (b *fakeBMC) Off(ctx context.Context) error {
	return b.call("off", func(m *machine) {
		m.power, m.agent = false, false
		for _, vm := range m.vms {
			vm.running = false
		}
	})
}

func (b *fakeBMC) On(ctx context.Context) error {
	return b.call("on", func(m *machine) {
		if !m.power {
			m.power, m.agent = true, true
			m.boots++
			m.bootID = fmt.Sprintf("%s-boot%d", m.name, m.boots)
		}
	})
}
func (b *fakeBMC) Reset(ctx context.Context) error    { return fence.ErrUnsupported }
func (b *fakeBMC) Soft(ctx context.Context) error     { return fence.ErrUnsupported }
func (b *fakeBMC) Identify(ctx context.Context) error { return b.call("identify", nil) }
func (b *fakeBMC) Close() error                       { return nil }

func (w *world) bmcLog(host string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.machine(host).bmcLog)
}

// Notify records a notice.
func (w *world) Notify(ctx context.Context, n notify.Notice) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.notices = append(w.notices, n)
	return nil
}

// kinds returns the kinds of the notices about host ("" for all), sorted: notices are sent
// without waiting, so their order is not the order of what happened.
func (w *world) kinds(host string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, n := range w.notices {
		if host == "" || n.Host == host {
			out = append(out, string(n.Kind))
		}
	}
	slices.Sort(out)
	return out
}

// fenceNotices are the fence path's notices, as the CLI's adapter says them to the channels.
type fenceNotices struct{ w *world }

func (n fenceNotices) Notify(ctx context.Context, fn fence.Notice) error {
	kind := notify.KindFenceAction
	switch {
	case fn.Failed:
		kind = notify.KindFenceFailed
	case fn.CapReached:
		kind = notify.KindFenceCapReached
	}
	return n.w.Notify(ctx, notify.Notice{Kind: kind, Host: fn.Host, Cluster: fn.Cluster, Action: string(fn.Action), Result: fn.Result})
}

// fixture is a world, its state file and a monitor over both.
type fixture struct {
	t   *testing.T
	w   *world
	st  *state.Memory
	mon *Monitor
	// stop ends the monitor's Run; done is closed when it returned
	stop context.CancelFunc
	done chan error
	ev   *eventLog
}

type eventLog struct {
	mu  sync.Mutex
	evs []events.Event
}

func (l *eventLog) Emit(e events.Event) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.evs = append(l.evs, e)
	return nil
}

// newFixture builds clusters of hosts (name → hosts), each host with vmsPer running VMs, HA
// enabled on every cluster with action off, and the given settings.
func newFixture(t *testing.T, clusters map[string][]string, vmsPer int, set map[string]string) *fixture {
	t.Helper()
	w := newWorld()
	st := state.NewMemory()
	start := time.Now()
	err := st.Update(func(tx state.Tx) error {
		if _, err := inventory.AddZone(tx, "z1"); err != nil {
			return err
		}
		if _, err := inventory.AddPod(tx, "p1", "z1"); err != nil {
			return err
		}
		port := 9000
		for _, c := range mapsKeys(clusters) {
			if _, err := inventory.AddCluster(tx, c, "p1"); err != nil {
				return err
			}
			if err := state.PutBMC(tx, "cluster", c, state.BMC{Driver: "ipmi", Username: "admin", Password: "s3cret", Action: "off"}); err != nil {
				return err
			}
			if err := state.PutHAEnabled(tx, "cluster", c, state.HAEnabled{Enabled: true, Since: start}); err != nil {
				return err
			}
			for _, h := range clusters[c] {
				port++
				if _, err := inventory.AddHost(tx, state.Host{Name: h, Cluster: c, Address: fmt.Sprintf("127.0.0.1:%d", port)}); err != nil {
					return err
				}
				if err := state.PutBMC(tx, "host", h, state.BMC{Address: "10.0.0." + h[1:]}); err != nil {
					return err
				}
				m := &machine{name: h, power: true, agent: true, link: true, bootID: h + "-boot0", seqAt: start.Truncate(time.Second), cpus: 8, memMiB: 8192}
				for i := 1; i <= vmsPer; i++ {
					vm := &fakeVM{name: fmt.Sprintf("%s-vm%d", h, i), uuid: fmt.Sprintf("uuid-%s-%d", h, i), running: true,
						disk: fmt.Sprintf("/shared/%s-vm%d.img", h, i), mtime: start, memMiB: 1024}
					m.vms = append(m.vms, vm)
					if err := state.PutVMDef(tx, state.VMDef{UUID: vm.uuid, Name: vm.name, Hash: "hash-" + vm.uuid, XML: vmXML(vm), Host: h, Cluster: c}); err != nil {
						return err
					}
				}
				w.hosts[h] = m
			}
		}
		for k, v := range set {
			if _, err := settings.Set(tx, k, v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, w: w, st: st, ev: &eventLog{}}
	f.refreshStatus()
	return f
}

func mapsKeys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// refreshStatus stores every answering host's status, as `host status` would.
func (f *fixture) refreshStatus() {
	f.t.Helper()
	err := f.st.Update(func(tx state.Tx) error {
		hosts, err := state.Hosts(tx)
		if err != nil {
			return err
		}
		for _, h := range hosts {
			s, err := f.w.Status(context.Background(), h)
			if err != nil {
				continue
			}
			rec := state.HostStatus{Connection: state.ConnUp, CheckedAt: time.Now(), LastSeen: time.Now(), BootID: s.BootID,
				Capacity: state.Resources{CPUs: s.Capacity.CPUs, MemoryMiB: s.Capacity.MemoryMiB}, AgentState: string(s.AgentState)}
			for _, vm := range s.VMs {
				rec.VMs = append(rec.VMs, state.VMRecord{Name: vm.Name, UUID: vm.UUID, State: vm.State, VCPUs: vm.VCPUs, MemoryMiB: vm.MemoryMiB,
					Disks: vm.Disks, DefinitionHash: vm.DefinitionHash})
			}
			if err := state.PutHostStatus(tx, h.Name, rec); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		f.t.Fatal(err)
	}
}

// monitor returns a monitor of pid over the fixture (a new one per pid: a restarted watch).
func (f *fixture) monitor(pid int, dead map[int]bool) *Monitor {
	table := holds.Table{Self: holds.Owner{PID: pid, StartTime: "t", Machine: "test"}, Alive: func(o holds.Owner) bool { return !dead[o.PID] }}
	fs := &fence.Service{Store: f.st, Holds: table, Open: f.w.open, Who: fmt.Sprintf("ha watch pid %d", pid), NotifyWait: time.Second,
		Notify: fenceNotices{f.w}}
	return &Monitor{Store: f.st, Agents: f.w, Fence: fs, Notify: f.w, Holds: table, Events: f.ev, Who: fmt.Sprintf("ha watch pid %d", pid)}
}

// start runs a monitor until stopped.
func (f *fixture) start(m *Monitor) {
	ctx, cancel := context.WithCancel(context.Background())
	f.mon, f.stop, f.done = m, cancel, make(chan error, 1)
	go func() { f.done <- m.Run(ctx) }()
	f.t.Cleanup(func() { f.halt() })
}

// halt stops the running monitor and waits for it.
func (f *fixture) halt() {
	if f.stop == nil {
		return
	}
	f.stop()
	if err := <-f.done; err != nil {
		f.t.Errorf("Run: %v", err)
	}
	f.stop = nil
}

// record returns host's HA record.
func (f *fixture) record(host string) state.HAHost {
	f.t.Helper()
	var rec state.HAHost
	if err := f.st.View(func(tx state.Tx) (err error) { rec, _, err = state.GetHAHost(tx, host); return err }); err != nil {
		f.t.Fatal(err)
	}
	return rec
}

// history returns the types and states of host's HA stream: "ha.suspect:Suspect ...".
func (f *fixture) history(host string) []events.Event {
	f.t.Helper()
	var evs []events.Event
	if err := f.st.View(func(tx state.Tx) (err error) { evs, err = journal.Events(tx, StreamID(host)); return err }); err != nil {
		f.t.Fatal(err)
	}
	return evs
}

func states(evs []events.Event) []string {
	var out []string
	for _, e := range evs {
		if e.HAState != "" && (len(out) == 0 || out[len(out)-1] != e.HAState) {
			out = append(out, e.HAState)
		}
	}
	return out
}

func (f *fixture) audit(host string) []events.Event {
	f.t.Helper()
	var evs []events.Event
	if err := f.st.View(func(tx state.Tx) (err error) { evs, err = fence.Audit(tx, host, time.Time{}); return err }); err != nil {
		f.t.Fatal(err)
	}
	return evs
}

func (f *fixture) resourceState(host string) string {
	f.t.Helper()
	var h state.Host
	if err := f.st.View(func(tx state.Tx) (err error) { h, err = state.GetHost(tx, host); return err }); err != nil {
		f.t.Fatal(err)
	}
	return h.ResourceState
}

// waitState waits (in bubble time) until host's record is in want, at most d.
func (f *fixture) waitState(host string, want State, d time.Duration) time.Duration {
	f.t.Helper()
	start := time.Now()
	for time.Since(start) <= d {
		if State(f.record(host).State) == want {
			return time.Since(start)
		}
		time.Sleep(100 * time.Millisecond)
	}
	f.t.Fatalf("%s not %s after %s: record %+v\nhistory %v", host, want, d, f.record(host), states(f.history(host)))
	return 0
}

// writeIntent writes a fence intent to the audit, as the fence path does before the BMC is
// called.
func writeIntent(t *testing.T, st state.DB, id, host string, now time.Time) {
	t.Helper()
	err := st.Update(func(tx state.Tx) error {
		if err := journal.Open(tx, fence.AuditStream, journal.Fence, "", "", now); err != nil {
			return err
		}
		_, _, err := journal.AppendTx(tx, fence.AuditStream, events.Event{Type: events.FenceIntent, AuditID: id, Host: host, Cluster: "c1",
			Action: "off", Who: "ha watch pid 1", Reason: "ha: test"}, now)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}
