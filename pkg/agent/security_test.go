package agent

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/virt"
	"github.com/kvmctl/kvmctl/pkg/virt/virttest"
)

// A missing state dir is created 0700. An existing one open to others is refused and left as it
// is (it may be shared: the agent never changes the mode of a directory it did not create); one
// below a directory others can write to, or owned by another user, is refused.
func TestStateDirChecks(t *testing.T) {
	f := newFleet(t)
	hv := virt.NewFake(virt.Capacity{CPUs: 1, MemoryMiB: 1})

	cfg := f.testConfig("kvm1", "b")
	if _, err := New(cfg, hv); err != nil {
		t.Fatalf("New with no state dir: %v", err)
	}
	if fi, err := os.Stat(cfg.StateDir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("state dir created as %v %v, want mode 0700", fi, err)
	}

	cfg = f.testConfig("kvm1", "b")
	if err := os.MkdirAll(cfg.StateDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(cfg.StateDir, 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := New(cfg, hv)
	mustContain(t, errString(err), "state dir "+cfg.StateDir+" has mode 0755: others may read or change it; chmod 700 "+cfg.StateDir,
		"set state.dir to a directory of its own")
	if fi, err := os.Stat(cfg.StateDir); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("a refused state dir was changed: %v %v, want mode 0755 as it was", fi, err)
	}

	cfg = f.testConfig("kvm1", "b")
	open := filepath.Join(t.TempDir(), "open")
	if err := os.Mkdir(open, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	cfg.StateDir = filepath.Join(open, "state")
	_, err = New(cfg, hv)
	mustContain(t, errString(err), "state dir", open+" is writable by others (mode 0777): chmod go-w "+open)

	if os.Getuid() == 4242 {
		return
	}
	cfg = f.testConfig("kvm1", "b")
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(cfg.StateDir, 4242, 4242); err != nil {
		t.Skip("chown needs root:", err)
	}
	_, err = New(cfg, hv)
	mustContain(t, errString(err), "state dir "+cfg.StateDir+" is owned by uid 4242")
}

// A symlink planted at the heartbeat path on shared storage is replaced, never written through.
func TestHeartbeatDoesNotFollowSymlink(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(t.TempDir(), "passwd")
	if err := os.WriteFile(victim, []byte("root:x:0:0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	before, _ := os.Stat(victim)
	path := filepath.Join(dir, "hb-kvm1")
	if err := os.Symlink(victim, path); err != nil {
		t.Fatal(err)
	}
	if err := WriteHeartbeat(path, api.HeartbeatRecord{Host: "kvm1", Seq: 1, WrittenAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "root:x:0:0\n" {
		t.Errorf("symlink target overwritten: %q", b)
	}
	if after, _ := os.Stat(victim); !after.ModTime().Equal(before.ModTime()) {
		t.Error("symlink target touched")
	}
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("heartbeat path after write: %v %v, want a regular file", fi, err)
	}
	first := fi.ModTime()
	time.Sleep(20 * time.Millisecond)
	if err := WriteHeartbeat(path, api.HeartbeatRecord{Host: "kvm1", Seq: 2, WrittenAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Lstat(path); !fi.ModTime().After(first) {
		t.Errorf("mtime did not advance: %v -> %v", first, fi.ModTime())
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("temp files left: %v", ents)
	}
}

// POST /v1/vms defines only what a VM moving between hosts needs.
func TestDefineVMRefusesHostAccess(t *testing.T) {
	f := newFleet(t)
	hv := virt.NewFake(virt.Capacity{CPUs: 4, MemoryMiB: 4096},
		virt.VM{Name: "db1", UUID: virt.NameUUID("db1"), State: virt.StateShutoff, VCPUs: 1, MemoryMiB: 256})
	c := f.client("kvm1", serve(t, f.testConfig("kvm1", "b"), hv))
	ctx := context.Background()
	base, err := virt.RenderDomainXML(virt.VMSpec{Name: "web1", VCPUs: 1, MemoryMiB: 256, Disks: []string{filepath.Join(t.TempDir(), "web1.img")}})
	if err != nil {
		t.Fatal(err)
	}
	devices := func(extra string) string { return strings.Replace(base, "  </devices>", extra+"\n  </devices>", 1) }
	for _, tc := range []struct{ name, xml, msg string }{
		{"qemu commandline", strings.Replace(base, `<domain type="test">`, `<domain type="test" xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0">`, 1) +
			"", "xmlns:qemu"},
		{"qemu commandline element", strings.Replace(base, "</domain>", `<qemu:commandline xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0"><qemu:arg value="-x"/></qemu:commandline></domain>`, 1), "qemu"},
		{"other prefix", strings.Replace(base, "</domain>", `<q:override xmlns:q="http://libvirt.org/schemas/domain/qemu/1.0"/></domain>`, 1), "in namespace http://libvirt.org/schemas/domain/qemu/1.0"},
		{"undeclared prefix", strings.Replace(base, "</domain>", `<commandline><arg value="-x"/></commandline></domain>`, 1), "<commandline>"},
		{"hostdev", devices(`<hostdev mode="subsystem" type="pci"><source><address domain="0" bus="1" slot="0" function="0"/></source></hostdev>`), "<hostdev>"},
		{"filesystem", devices(`<filesystem type="mount"><source dir="/"/><target dir="root"/></filesystem>`), "<filesystem>"},
		{"block disk", devices(`<disk type="block" device="disk"><source dev="/dev/sda"/><target dev="vdz"/></disk>`), "disk 2: type='block' is not allowed"},
		{"source dev", devices(`<disk device="disk"><source dev="/dev/sda"/><target dev="vdz"/></disk>`), "disk 2 <source>: the attribute dev='/dev/sda' is not allowed"},
		{"device as a file", devices(`<disk type="file" device="disk"><source file="/dev/null"/><target dev="vdz"/></disk>`), "source /dev/null is outside vm.disk.dirs"},
		{"directory as a file", devices(`<disk type="file" device="disk"><source file="` + t.TempDir() + `"/><target dev="vdz"/></disk>`), "is not a regular file"},
		{"other uuid", strings.Replace(strings.Replace(base, "<name>web1</name>", "<name>db1</name>", 1), virt.NameUUID("web1"), "00000000-0000-0000-0000-000000000001", 1),
			"already exists here with uuid " + virt.NameUUID("db1")},
	} {
		err := c.DefineAndStartVM(ctx, tc.xml)
		ae := wantCode(t, tc.name, err, http.StatusBadRequest, api.CodeBadRequest)
		if ae != nil && !strings.Contains(ae.Message, tc.msg) {
			t.Errorf("%s: %q does not contain %q", tc.name, ae.Message, tc.msg)
		}
	}
	if vms, _ := hv.ListVMs(); len(vms) != 1 || vms[0].State != virt.StateShutoff {
		t.Fatalf("a refused define changed the host: %+v", vms)
	}
	// What the lab sends is accepted; so is a redefine of the same VM.
	if err := c.DefineAndStartVM(ctx, base); err != nil {
		t.Fatalf("lab domain: %v", err)
	}
	same, _ := virt.RenderDomainXML(virt.VMSpec{Name: "db1", VCPUs: 1, MemoryMiB: 256})
	if err := c.DefineAndStartVM(ctx, same); err != nil {
		t.Fatalf("redefine with the same uuid: %v", err)
	}
}

// Through the real API on libvirt's test driver: every attack definition is refused with a 400
// naming what was refused, and nothing is defined, also after the agent restarts; normal VMs are
// defined. Before the allowlist, the agent defined 29 of these 35.
func TestDefineVMRefusesAttacksThroughAPI(t *testing.T) {
	f := newFleet(t)
	dir := t.TempDir()
	attacks, err := virttest.Attacks(dir)
	if err != nil {
		t.Fatal(err)
	}
	uri := newTestNode(t, virt.NodeSpec{HostName: "kvm1", CPUs: 4, MemoryMiB: 8192})
	cfg := f.testConfig("kvm1", "b")
	cfg.LibvirtURI, cfg.VMDiskDirs = uri, []string{dir}
	addr, stop := serveStoppable(t, cfg, openNode(t, uri))
	c := f.client("kvm1", addr)
	ctx := context.Background()
	for _, a := range attacks {
		ae := wantCode(t, a.Name, c.DefineAndStartVM(ctx, a.XML), http.StatusBadRequest, api.CodeBadRequest)
		mustContain(t, ae.Message, `vm "evil"`, "domain xml refused", a.Want)
		if vms := vmStates(t, c); len(vms) != 0 {
			t.Fatalf("%s: refused, but the host has %v", a.Name, vms)
		}
	}
	stop()
	c = f.client("kvm1", serve(t, cfg, openNode(t, uri)))
	if vms := vmStates(t, c); len(vms) != 0 {
		t.Fatalf("after a restart the host has %v", vms)
	}
	for _, d := range virttest.Normal(dir) {
		if d.Name == "full vm" {
			continue // a qemu domain: the test driver defines type 'test' only
		}
		if err := c.DefineAndStartVM(ctx, d.XML); err != nil {
			t.Errorf("%s: %v", d.Name, err)
		}
		if err := c.RemoveVM(ctx, "normal"); err != nil {
			t.Fatal(err)
		}
	}
}

// misreading is a hypervisor that reads a definition otherwise than it was sent, as libvirt
// read a namespaced x:type='block' as a block disk.
type misreading struct {
	*virt.Fake
	read func(string) string
}

func (m misreading) DefineAndStart(xml string, check virt.DomainCheck) error {
	return m.Fake.DefineAndStart(xml, func(string) error { return check(m.read(xml)) })
}

// The agent checks the hypervisor's own reading of a definition too: what passed its check as
// sent, but reads back as a block disk, is refused with a 400 and not defined.
func TestDefineVMChecksHypervisorsReading(t *testing.T) {
	f := newFleet(t)
	hv := misreading{Fake: virt.NewFake(virt.Capacity{CPUs: 4, MemoryMiB: 4096}), read: func(x string) string {
		return strings.Replace(x, "  </devices>", `<disk type="block" device="disk"><source dev="/dev/sda"/><target dev="vdz"/></disk></devices>`, 1)
	}}
	c := f.client("kvm1", serve(t, f.testConfig("kvm1", "b"), hv))
	x, err := virt.RenderDomainXML(virt.VMSpec{Name: "web1", VCPUs: 1, MemoryMiB: 256})
	if err != nil {
		t.Fatal(err)
	}
	ae := wantCode(t, "define", c.DefineAndStartVM(context.Background(), x), http.StatusBadRequest, api.CodeBadRequest)
	mustContain(t, ae.Message, "the hypervisor's reading of the definition", "disk 1: type='block' is not allowed")
	if vms, _ := hv.ListVMs(); len(vms) != 0 {
		t.Errorf("defined %+v", vms)
	}
}

// Timeouts are range-checked as integers: a huge one must not overflow into a short one.
func TestTimeoutOverflowRefused(t *testing.T) {
	for _, n := range []int{18446744074, 1 << 62, -1, int(maxStageTimeout/time.Second) + 1} {
		if _, e := stageRequest(api.StageRequest{RunID: "r1", Stage: "PreFlight", TimeoutS: n}); e == nil || e.Status != http.StatusBadRequest {
			t.Errorf("stage timeout_s %d: %v, want 400", n, e)
		}
	}
	if hr, e := stageRequest(api.StageRequest{RunID: "r1", Stage: "PreFlight", TimeoutS: 86400}); e != nil || hr.Timeout != 24*time.Hour {
		t.Errorf("stage timeout_s 86400: %v %v", hr.Timeout, e)
	}

	f := newFleet(t)
	dst := virt.NewFake(virt.Capacity{CPUs: 4, MemoryMiB: 4096})
	src := virt.NewFake(virt.Capacity{CPUs: 4, MemoryMiB: 4096}, virt.VM{Name: "web1", State: virt.StateRunning, VCPUs: 1, MemoryMiB: 512})
	src.Peers = map[string]*virt.Fake{"qemu+tls://kvm2/system": dst}
	c := f.client("kvm1", serve(t, f.testConfig("kvm1", "b"), src))
	for _, n := range []int{18446744074, 1 << 62, 9223372037} {
		err := c.MigrateVM(context.Background(), "web1", api.MigrateRequest{DestURI: "qemu+tls://kvm2/system", TimeoutS: n})
		wantCode(t, "migrate timeout", err, http.StatusBadRequest, api.CodeBadRequest)
	}
	if vms, _ := dst.ListVMs(); len(vms) != 0 {
		t.Errorf("migrated with an out-of-range timeout: %+v", vms)
	}
}

// A private key others can read is a config problem.
func TestConfigRefusesReadableKey(t *testing.T) {
	f := newFleet(t)
	cfg := f.testConfig("kvm1", "b")
	if err := cfg.Check(); err != nil {
		t.Fatalf("0600 key: %v", err)
	}
	if err := os.Chmod(cfg.TLSKey, 0o644); err != nil {
		t.Fatal(err)
	}
	mustContain(t, errString(cfg.Check()), "tls.key "+cfg.TLSKey+" is readable by others (mode 0644): chmod 600 "+cfg.TLSKey)
	if err := os.Chmod(cfg.TLSKey, 0o640); err != nil {
		t.Fatal(err)
	}
	mustContain(t, errString(cfg.Check()), "is readable by group (mode 0640)")
}
