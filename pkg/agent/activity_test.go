package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/virt"
)

// shared is a stand-in for the cluster's NFS storage: a heartbeat dir and an image dir, and two
// real agents using them, kvm1 (the suspect, writing its heartbeat) and kvm2 (its neighbour).
type shared struct {
	hbDir, imgDir string
	// stall is kvm2's lab storage stall flag.
	stall    string
	f        *fleet
	neighbor *api.Client
	addr2    string
}

func newShared(t *testing.T) *shared {
	t.Helper()
	root := t.TempDir()
	s := &shared{hbDir: filepath.Join(root, "hb"), imgDir: filepath.Join(root, "images"), stall: filepath.Join(t.TempDir(), "storage.stall"), f: newFleet(t)}
	for _, d := range []string{s.hbDir, s.imgDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	hv := func() virt.Hypervisor { return virt.NewFake(virt.Capacity{CPUs: 4, MemoryMiB: 4096}) }
	for _, host := range []string{"kvm1", "kvm2"} {
		cfg := s.f.testConfig(host, "boot-of-"+host)
		cfg.HeartbeatDir, cfg.VMDiskDirs, cfg.HeartbeatInterval = s.hbDir, []string{s.imgDir}, 50*time.Millisecond
		if host == "kvm2" {
			cfg.LabStorageStallFile = s.stall
		}
		addr := serve(t, cfg, hv())
		if host == "kvm2" {
			s.addr2 = addr
			s.neighbor = s.f.client("kvm2", addr)
		}
	}
	waitFor(t, "kvm1's first heartbeat", func() bool { _, err := os.Stat(s.hb("kvm1")); return err == nil })
	return s
}

func (s *shared) hb(host string) string { return filepath.Join(s.hbDir, "hb-"+host) }

// disk writes a disk image of size bytes in the image dir with the given mtime.
func (s *shared) disk(t *testing.T, name string, size int, mtime time.Time) string {
	t.Helper()
	p := filepath.Join(s.imgDir, name)
	writeFile(t, p, bytes.Repeat([]byte{'x'}, size))
	if err := os.Chtimes(p, mtime, mtime); err != nil {
		t.Fatal(err)
	}
	return p
}

// fifo makes a FIFO at p: opening it for reading blocks in the kernel until a writer appears,
// as a read from a hung NFS server does.
func fifo(t *testing.T, p string) string {
	t.Helper()
	if err := syscall.Mkfifo(p, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// fifoHasReader reports whether something holds (or waits in opening) the FIFO for reading:
// a non-blocking open for writing fails with ENXIO when nothing does. It releases a reader
// blocked in its open.
func fifoHasReader(t *testing.T, p string) bool {
	t.Helper()
	f, err := os.OpenFile(p, os.O_WRONLY|syscall.O_NONBLOCK, 0)
	if errors.Is(err, syscall.ENXIO) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	return true
}

// The neighbour reads the suspect's heartbeat record and its disks' mtimes and sizes on the
// shared storage; a second check sees what changed in between, and only that.
func TestActivityCheckReadsHeartbeatAndDisks(t *testing.T) {
	s := newShared(t)
	ctx := context.Background()
	t0 := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	d1, d2 := s.disk(t, "vm1.qcow2", 100, t0), s.disk(t, "vm2.qcow2", 200, t0.Add(time.Second))
	missing := filepath.Join(s.imgDir, "gone.qcow2")
	req := api.ActivityCheckRequest{Host: "kvm1", HeartbeatFile: s.hb("kvm1"), Disks: []string{d1, d2, missing}}

	before := time.Now().Add(-time.Second)
	r1, err := s.neighbor.ActivityCheck(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if r1.Checker != "kvm2" || r1.ReadAt.Before(before) || len(r1.Disks) != 3 {
		t.Fatalf("result = %+v", r1)
	}
	hb := r1.Heartbeat
	if hb.Path != s.hb("kvm1") || hb.Error != "" || hb.Read.Host != "kvm1" || hb.Read.BootID != "boot-of-kvm1" || hb.Read.Seq < 1 || hb.Read.WrittenAt.IsZero() {
		t.Errorf("heartbeat sample = %+v", hb)
	}
	want := []api.FileSample{{Path: d1, MTime: t0, Size: 100}, {Path: d2, MTime: t0.Add(time.Second), Size: 200}}
	for i, w := range want {
		if g := r1.Disks[i]; g.Path != w.Path || !g.MTime.Equal(w.MTime) || g.Size != w.Size || g.Error != "" {
			t.Errorf("disk %d = %+v, want %+v", i, g, w)
		}
	}
	if g := r1.Disks[2]; g.Path != missing || g.Error == "" || !strings.Contains(g.Error, "no such file") {
		t.Errorf("missing disk = %+v, want an error", g)
	}

	// vm1 is written (a guest's I/O); vm2 is not. The heartbeat goes on meanwhile.
	t1 := t0.Add(time.Minute)
	f, err := os.OpenFile(d1, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("guest write"))
	f.Close()
	if err := os.Chtimes(d1, t1, t1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "kvm1's heartbeat to advance", func() bool { return readRecord(t, s.hb("kvm1")).Seq > hb.Read.Seq })
	r2, err := s.neighbor.ActivityCheck(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if r2.Heartbeat.Read.Seq <= hb.Read.Seq {
		t.Errorf("heartbeat seq %d -> %d, want it advanced", hb.Read.Seq, r2.Heartbeat.Read.Seq)
	}
	if g := r2.Disks[0]; !g.MTime.Equal(t1) || g.Size != 111 {
		t.Errorf("vm1 after a write = %+v, want mtime %v size 111", g, t1)
	}
	if g := r2.Disks[1]; !g.MTime.Equal(r1.Disks[1].MTime) || g.Size != 200 {
		t.Errorf("vm2 changed without a write: %+v -> %+v", r1.Disks[1], g)
	}

	// A host without VMs: only its heartbeat.
	r3, err := s.neighbor.ActivityCheck(ctx, api.ActivityCheckRequest{Host: "kvm1", HeartbeatFile: s.hb("kvm1")})
	if err != nil || r3.Heartbeat.Error != "" || len(r3.Disks) != 0 {
		t.Errorf("check without disks = %+v, %v", r3, err)
	}
}

// A heartbeat file that does not hold a record of the suspect is an error for that file, not a
// sample: garbage, another host's record, a directory, a file too large to be a record.
func TestActivityCheckBadHeartbeatContent(t *testing.T) {
	s := newShared(t)
	ctx := context.Background()
	writeFile(t, s.hb("kvm3"), []byte("not json\n"))
	copyOf, err := os.ReadFile(s.hb("kvm1"))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, s.hb("kvm4"), copyOf) // kvm1's record under kvm4's name
	writeFile(t, s.hb("kvm5"), []byte(`{"host":"kvm5","seq":1,"pad":"`+strings.Repeat("x", 5000)+`"}`))
	if err := os.Mkdir(s.hb("kvm6"), 0o755); err != nil {
		t.Fatal(err)
	}
	for host, want := range map[string]string{
		"kvm3": "is not a heartbeat record",
		"kvm4": `the record names host "kvm1", not "kvm4"`,
		"kvm5": "larger than 4096 bytes",
		"kvm6": "is not a regular file",
		"kvm7": "no such file",
	} {
		r, err := s.neighbor.ActivityCheck(ctx, api.ActivityCheckRequest{Host: host, HeartbeatFile: s.hb(host)})
		if err != nil {
			t.Errorf("%s: %v", host, err)
			continue
		}
		if !strings.Contains(r.Heartbeat.Error, want) || r.Heartbeat.Read != (api.HeartbeatRecord{}) {
			t.Errorf("%s: heartbeat sample = %+v, want an error with %q and no record", host, r.Heartbeat, want)
		}
	}
}

// Requests for anything but the suspect's heartbeat in heartbeat.dir and files in vm.disk.dirs
// are refused with a 400 naming the problem, and nothing is read: a FIFO among the disks, which
// a read would hold open, has no reader after the refusal.
func TestActivityCheckRefusals(t *testing.T) {
	s := newShared(t)
	ctx := context.Background()
	good := s.disk(t, "vm1.qcow2", 10, time.Now())
	trap := fifo(t, filepath.Join(s.imgDir, "trap.qcow2"))
	outside := filepath.Join(t.TempDir(), "secret")
	writeFile(t, outside, []byte("secret\n"))
	if err := os.Symlink(outside, filepath.Join(s.imgDir, "escape.qcow2")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Dir(outside), filepath.Join(s.imgDir, "dirlink")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, s.hb("kvm9")); err != nil {
		t.Fatal(err)
	}
	tooMany := make([]string, MaxActivityDisks+1)
	for i := range tooMany {
		tooMany[i] = good
	}
	hb := s.hb("kvm1")
	for _, tc := range []struct {
		name string
		req  api.ActivityCheckRequest
		want string
	}{
		{"disk outside vm.disk.dirs", api.ActivityCheckRequest{Host: "kvm1", HeartbeatFile: hb, Disks: []string{good, trap, outside}},
			"disks[2] " + outside + " is outside vm.disk.dirs (" + s.imgDir + ")"},
		{"symlink escaping", api.ActivityCheckRequest{Host: "kvm1", HeartbeatFile: hb, Disks: []string{trap, filepath.Join(s.imgDir, "escape.qcow2")}},
			"disks[1] " + filepath.Join(s.imgDir, "escape.qcow2") + " resolves to " + outside + ", outside vm.disk.dirs"},
		{"symlinked dir escaping", api.ActivityCheckRequest{Host: "kvm1", HeartbeatFile: hb, Disks: []string{trap, filepath.Join(s.imgDir, "dirlink", "secret")}},
			"resolves to " + outside + ", outside vm.disk.dirs"},
		{"heartbeat symlink escaping", api.ActivityCheckRequest{Host: "kvm9", HeartbeatFile: s.hb("kvm9"), Disks: []string{trap}},
			"heartbeat_file " + s.hb("kvm9") + " resolves to " + outside + ", outside heartbeat.dir"},
		{"dot-dot", api.ActivityCheckRequest{Host: "kvm1", HeartbeatFile: hb, Disks: []string{trap, s.imgDir + "/../images/vm1.qcow2"}},
			"has a .. element"},
		{"dot-dot in the heartbeat", api.ActivityCheckRequest{Host: "kvm1", HeartbeatFile: s.hbDir + "/../hb/hb-kvm1", Disks: []string{trap}},
			"has a .. element"},
		{"relative", api.ActivityCheckRequest{Host: "kvm1", HeartbeatFile: hb, Disks: []string{trap, "images/vm1.qcow2"}},
			`disks[1] "images/vm1.qcow2" is not an absolute path`},
		{"not clean", api.ActivityCheckRequest{Host: "kvm1", HeartbeatFile: hb, Disks: []string{trap, s.imgDir + "//vm1.qcow2"}},
			"is not a clean path"},
		{"control character", api.ActivityCheckRequest{Host: "kvm1", HeartbeatFile: hb, Disks: []string{trap, good + "\x00"}},
			"NUL"},
		{"the image dir itself", api.ActivityCheckRequest{Host: "kvm1", HeartbeatFile: hb, Disks: []string{trap, s.imgDir}},
			"is outside vm.disk.dirs"},
		{"another host's heartbeat", api.ActivityCheckRequest{Host: "kvm1", HeartbeatFile: s.hb("kvm2"), Disks: []string{trap}},
			"heartbeat_file " + s.hb("kvm2") + ` is not the heartbeat of host "kvm1": that is ` + hb},
		{"heartbeat outside heartbeat.dir", api.ActivityCheckRequest{Host: "kvm1", HeartbeatFile: filepath.Join(s.imgDir, "hb-kvm1"), Disks: []string{trap}},
			"is outside this agent's heartbeat directory " + s.hbDir + " (heartbeat.dir)"},
		{"nothing to read", api.ActivityCheckRequest{Host: "kvm1"}, "nothing to read: send heartbeat_file, disks or both"},
		{"no host", api.ActivityCheckRequest{HeartbeatFile: hb, Disks: []string{trap}}, "host: empty"},
		{"host with a slash", api.ActivityCheckRequest{Host: "../kvm1", HeartbeatFile: hb, Disks: []string{trap}}, `host: "../kvm1" is not a host name`},
		{"too many disks", api.ActivityCheckRequest{Host: "kvm1", HeartbeatFile: hb, Disks: append([]string{trap}, tooMany...)},
			fmt.Sprintf("%d disks: one activity check reads at most %d", MaxActivityDisks+2, MaxActivityDisks)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The raw request: the client refuses some of these itself.
			err := postRaw(t, s, tc.req)
			ae := wantCode(t, tc.name, err, http.StatusBadRequest, api.CodeBadRequest)
			mustContain(t, ae.Message, tc.want)
			if fifoHasReader(t, trap) {
				t.Errorf("the refused request was read: the FIFO among its disks has a reader")
			}
		})
	}

	// An unknown field, strict decoding as everywhere.
	err := postBody(t, s, `{"host":"kvm1","heartbeat_file":"`+hb+`","disks":["`+trap+`"],"force":true}`)
	ae := wantCode(t, "unknown field", err, http.StatusBadRequest, api.CodeBadRequest)
	mustContain(t, ae.Message, `unknown field "force"`, "disks, heartbeat_file, host")
	if fifoHasReader(t, trap) {
		t.Errorf("the request with an unknown field was read")
	}

	// The client refuses a control character before sending.
	if _, err := s.neighbor.ActivityCheck(ctx, api.ActivityCheckRequest{Host: "kvm1\n", HeartbeatFile: hb}); err == nil || api.IsCode(err, api.CodeBadRequest) {
		t.Errorf("client sent a host name with a newline: %v", err)
	}
}

// An agent without heartbeat.dir reads no heartbeats: it refuses a check that asks for one and
// says what to set. A check of disks alone (a suspect whose agent never said where its heartbeat
// is) it answers, the heartbeat sample saying it was not asked for.
func TestActivityCheckWithoutHeartbeatDir(t *testing.T) {
	f := newFleet(t)
	cfg := f.testConfig("kvm2", "b")
	cfg.VMDiskDirs = []string{t.TempDir()}
	c := f.client("kvm2", serve(t, cfg, virt.NewFake(virt.Capacity{CPUs: 1, MemoryMiB: 1024})))
	ctx := context.Background()
	disk := filepath.Join(cfg.VMDiskDirs[0], "vm1.qcow2")
	writeFile(t, disk, []byte("disk"))
	_, err := c.ActivityCheck(ctx, api.ActivityCheckRequest{Host: "kvm1", HeartbeatFile: "/nfs/hb-kvm1", Disks: []string{disk}})
	ae := wantCode(t, "no heartbeat.dir", err, http.StatusBadRequest, api.CodeBadRequest)
	mustContain(t, ae.Message, "has no heartbeat.dir", "set heartbeat.dir")

	r, err := c.ActivityCheck(ctx, api.ActivityCheckRequest{Host: "kvm1", Disks: []string{disk}})
	if err != nil {
		t.Fatal(err)
	}
	if r.Heartbeat.Path != "" || r.Heartbeat.Read.Seq != 0 || !strings.Contains(r.Heartbeat.Error, "not asked for") ||
		len(r.Disks) != 1 || r.Disks[0].Error != "" || r.Disks[0].Size != 4 {
		t.Errorf("disks-only check = %+v", r)
	}
}

// A read that hangs in the kernel (opening a FIFO blocks until a writer comes) gives its file an
// Error within the deadline; the other files are read, the handler answers, and health answers
// meanwhile.
func TestActivityCheckHungRead(t *testing.T) {
	s := newShared(t)
	ctx := context.Background()
	good := s.disk(t, "vm1.qcow2", 10, time.Now())
	hung := fifo(t, filepath.Join(s.imgDir, "hung.qcow2"))
	t.Cleanup(func() { fifoHasReader(t, hung) }) // a leftover reader is let go

	healthDone := make(chan time.Duration, 1)
	go func() {
		time.Sleep(ActivityIOTimeout / 2) // while the read hangs
		start := time.Now()
		if _, err := s.neighbor.Health(ctx); err != nil {
			t.Errorf("health during a hung read: %v", err)
		}
		healthDone <- time.Since(start)
	}()
	start := time.Now()
	r, err := s.neighbor.ActivityCheck(ctx, api.ActivityCheckRequest{Host: "kvm1", HeartbeatFile: s.hb("kvm1"), Disks: []string{hung, good}})
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if took < ActivityIOTimeout || took > 2*ActivityIOTimeout+time.Second {
		t.Errorf("the check took %v, want about %v (one read's deadline)", took, ActivityIOTimeout)
	}
	if g := r.Disks[0]; !strings.Contains(g.Error, "no answer within 1.5s") || !g.MTime.IsZero() {
		t.Errorf("hung disk = %+v, want no answer within 1.5s", g)
	}
	if g := r.Disks[1]; g.Error != "" || g.Size != 10 || r.Heartbeat.Error != "" || r.Heartbeat.Read.Seq == 0 {
		t.Errorf("the other files were not read: %+v, heartbeat %+v", g, r.Heartbeat)
	}
	if d := <-healthDone; d > 500*time.Millisecond {
		t.Errorf("health took %v during a hung read", d)
	}
	// The read is still blocked in its open; a writer lets it go, and the FIFO, not a regular
	// file, is then refused by its fstat.
	if !fifoHasReader(t, hung) {
		t.Errorf("the hung read is not blocked on the FIFO any more")
	}
}

// In the lab, a stalled storage blocks the neighbour's reads too (an NFS outage): every file
// has an Error after its deadline, never a sample that would look idle.
func TestActivityCheckLabStall(t *testing.T) {
	s := newShared(t)
	good := s.disk(t, "vm1.qcow2", 10, time.Now())
	writeFile(t, s.stall, nil)
	start := time.Now()
	r, err := s.neighbor.ActivityCheck(context.Background(), api.ActivityCheckRequest{Host: "kvm1", HeartbeatFile: s.hb("kvm1"), Disks: []string{good}})
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 2*ActivityIOTimeout+time.Second {
		t.Errorf("the check took %v", took)
	}
	if !strings.Contains(r.Heartbeat.Error, "no answer within") || r.Heartbeat.Read.Seq != 0 || !strings.Contains(r.Disks[0].Error, "no answer within") {
		t.Errorf("stalled check = %+v", r)
	}
	if err := os.Remove(s.stall); err != nil {
		t.Fatal(err)
	}
	r, err = s.neighbor.ActivityCheck(context.Background(), api.ActivityCheckRequest{Host: "kvm1", HeartbeatFile: s.hb("kvm1"), Disks: []string{good}})
	if err != nil || r.Heartbeat.Error != "" || r.Disks[0].Error != "" {
		t.Errorf("check after the stall = %+v, %v", r, err)
	}
}

// postRaw posts req as JSON without the client's own checks.
func postRaw(t *testing.T, s *shared, req api.ActivityCheckRequest) error {
	t.Helper()
	b, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return postBody(t, s, string(b))
}

// postBody posts body to kvm2's activity check over mutual TLS and returns its error answer as
// an *api.Error, nil for a 200.
func postBody(t *testing.T, s *shared, body string) error {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: s.f.operatorTLS("kvm2")}, Timeout: 30 * time.Second}
	defer hc.CloseIdleConnections()
	resp, err := hc.Post("https://"+s.addr2+api.PathActivityCheck, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		return nil
	}
	var eb api.ErrorBody
	if err := json.NewDecoder(resp.Body).Decode(&eb); err != nil {
		t.Fatalf("HTTP %d without an error body: %v", resp.StatusCode, err)
	}
	return &api.Error{Host: "kvm2", Status: resp.StatusCode, Code: eb.Code, Message: eb.Error}
}
