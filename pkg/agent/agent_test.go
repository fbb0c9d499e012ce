package agent

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/virt"
	"github.com/kvmctl/kvmctl/pkg/virt/libvirtdrv"
)

func TestStatusEndToEnd(t *testing.T) {
	f := newFleet(t)
	spec := virt.NodeSpec{HostName: "kvm1", CPUs: 16, MemoryMiB: 65536, VMs: []virt.VMSpec{
		{Name: "web1", VCPUs: 2, MemoryMiB: 2048, Disks: []string{"/nfs/web1.qcow2"}, Tags: []string{"ssd"},
			Groups: []virt.AffinityGroup{{Name: "web", Type: virt.GroupHostAntiAffinity}}, Running: true},
		{Name: "db1", VCPUs: 4, MemoryMiB: 8192, Running: true},
		{Name: "old", VCPUs: 8, MemoryMiB: 16384},
	}}
	xml, err := virt.NodeXML(spec)
	if err != nil {
		t.Fatal(err)
	}
	node := filepath.Join(t.TempDir(), "node.xml")
	writeFile(t, node, xml)
	hv, err := libvirtdrv.Open("test://" + node)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hv.Close() })

	cfg := f.testConfig("kvm1", "11111111-2222-3333-4444-555555555555")
	cfg.LibvirtURI = "test://" + node
	before := time.Now().Add(-time.Second)
	addr := serve(t, cfg, hv)
	c := f.client("kvm1", addr)
	ctx := context.Background()

	if err := c.Healthz(ctx); err != nil {
		t.Fatalf("Healthz: %v", err)
	}
	s, err := c.Status(ctx)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	if s.HostName != "kvm1" || s.BootID != "11111111-2222-3333-4444-555555555555" || s.AgentState != api.AgentStateUp || s.AgentVersion == "" {
		t.Errorf("identity = %q %q %q %q", s.HostName, s.BootID, s.AgentState, s.AgentVersion)
	}
	if s.StartedAt.Before(before.Truncate(time.Second)) || s.StartedAt.After(time.Now()) {
		t.Errorf("started_at = %v, want about now", s.StartedAt)
	}
	if want := (api.Resources{CPUs: 16, MemoryMiB: 65536}); s.Capacity != want {
		t.Errorf("capacity = %+v, want %+v", s.Capacity, want)
	}
	if want := (api.Resources{CPUs: 6, MemoryMiB: 10240}); s.Allocation != want {
		t.Errorf("allocation = %+v, want %+v (running VMs only)", s.Allocation, want)
	}
	got := map[string]api.VM{}
	for _, vm := range s.VMs {
		got[vm.Name] = vm
	}
	web := got["web1"]
	// Each VM carries the hash of exactly the definition GET /v1/vms/{name}/xml answers.
	for name, vm := range got {
		x, err := c.VMXML(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256([]byte(x)); vm.DefinitionHash != hex.EncodeToString(sum[:]) {
			t.Errorf("%s: definition hash %q is not the SHA-256 of its definition", name, vm.DefinitionHash)
		}
	}
	if web.DefinitionHash == got["db1"].DefinitionHash {
		t.Errorf("web1 and db1 have the same definition hash %s", web.DefinitionHash)
	}
	web.DefinitionHash = ""
	want := api.VM{Name: "web1", UUID: virt.NameUUID("web1"), State: "running", VCPUs: 2, MemoryMiB: 2048,
		Disks: []string{"/nfs/web1.qcow2"}, Tags: []string{"ssd"}, Groups: []api.AffinityGroup{{Name: "web", Type: "host-anti-affinity"}}}
	if diff := cmp.Diff(want, web); diff != "" {
		t.Errorf("web1 (-want +got):\n%s", diff)
	}
	if got["old"].State != "shutoff" || got["db1"].State != "running" || len(s.VMs) != 3 {
		t.Errorf("vms = %+v", s.VMs)
	}

	// The lab simulates a reboot by rewriting the boot id file: status reads it afresh.
	writeFile(t, cfg.BootIDFile, []byte("  rebooted-id \n"))
	if s, err = c.Status(ctx); err != nil || s.BootID != "rebooted-id" {
		t.Errorf("after reboot: boot id %q, err %v", s.BootID, err)
	}
}

func TestStatusWireFormat(t *testing.T) {
	f := newFleet(t)
	hv := virt.NewFake(virt.Capacity{CPUs: 4, MemoryMiB: 4096}, virt.VM{Name: "a", State: virt.StateRunning, VCPUs: 1, MemoryMiB: 512})
	addr := serve(t, f.testConfig("h1", "b"), hv)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: f.operatorTLS("h1")}}
	resp, err := hc.Get("https://" + addr + api.PathStatus)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"host_name", "agent_version", "boot_id", "started_at", "agent_state", "capacity", "allocation", "vms"} {
		if _, ok := m[k]; !ok {
			t.Errorf("status lacks %q: %v", k, m)
		}
	}
	if _, err := time.Parse(time.RFC3339, m["started_at"].(string)); err != nil {
		t.Errorf("started_at: %v", err)
	}
	vm := m["vms"].([]any)[0].(map[string]any)
	for _, k := range []string{"name", "uuid", "state", "vcpus", "memory_mib", "disks", "tags", "groups"} {
		if _, ok := vm[k]; !ok {
			t.Errorf("vm lacks %q: %v", k, vm)
		}
	}
	if vm["disks"] == nil || vm["groups"] == nil {
		t.Errorf("empty lists must be [], not null: %v", vm)
	}
}

func TestClientRefusesAgentOfAnotherHost(t *testing.T) {
	f := newFleet(t)
	hv := virt.NewFake(virt.Capacity{CPUs: 1, MemoryMiB: 1024})
	// The agent at this address holds kvm2's certificate; the inventory says kvm1 is there.
	addr := serve(t, f.testConfig("kvm2", "b"), hv)
	_, err := f.client("kvm1", addr).Status(context.Background())
	var te *api.TLSError
	if !errors.As(err, &te) {
		t.Fatalf("err = %v (%T), want *api.TLSError", err, err)
	}
	if api.IsUnreachable(err) {
		t.Errorf("a TLS refusal must not count as unreachable: %v", err)
	}
	mustContain(t, err.Error(), "kvm1", "kvm2")
}

func TestAgentRefusesClientWithoutOperatorRole(t *testing.T) {
	f := newFleet(t)
	hv := virt.NewFake(virt.Capacity{CPUs: 1, MemoryMiB: 1024})
	cfg := f.testConfig("kvm1", "b")
	addr := serve(t, cfg, hv)
	// Another host's agent certificate is from the fleet CA but is not an operator's.
	cert, key, _ := f.agentFiles("kvm9")
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	tc := f.operatorTLS("kvm1")
	tc.Certificates = []tls.Certificate{pair}
	err = api.NewClient("kvm1", addr, tc).Healthz(context.Background())
	var te *api.TLSError
	if !errors.As(err, &te) {
		t.Fatalf("err = %v (%T), want *api.TLSError", err, err)
	}

	// No client certificate at all.
	tc = f.operatorTLS("kvm1")
	tc.Certificates = nil
	if err := api.NewClient("kvm1", addr, tc).Healthz(context.Background()); !errors.As(err, &te) {
		t.Fatalf("without certificate: err = %v (%T), want *api.TLSError", err, err)
	}
}

func TestNoPlaintext(t *testing.T) {
	f := newFleet(t)
	addr := serve(t, f.testConfig("kvm1", "b"), virt.NewFake(virt.Capacity{CPUs: 1, MemoryMiB: 1}))
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + addr + api.PathHealthz)
	if err == nil {
		defer resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatalf("plain HTTP got %s", resp.Status)
		}
	}
}

func TestUnreachable(t *testing.T) {
	f := newFleet(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, err = f.client("kvm1", addr, api.WithDialTimeout(time.Second)).Status(context.Background())
	if !api.IsUnreachable(err) {
		t.Fatalf("err = %v (%T), want unreachable", err, err)
	}
	mustContain(t, err.Error(), "kvm1", addr, "unreachable")

	// Something that accepts and never answers: unreachable too, once the deadline passes.
	ln, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := f.client("kvm1", ln.Addr().String()).Healthz(ctx); !api.IsUnreachable(err) {
		t.Fatalf("silent peer: err = %v (%T), want unreachable", err, err)
	}
}

func TestErrorAnswers(t *testing.T) {
	f := newFleet(t)
	block := make(chan struct{})
	t.Cleanup(func() { close(block) })
	hv := virt.NewFake(virt.Capacity{CPUs: 1, MemoryMiB: 1024})
	hv.Fail = func(method, _ string) error {
		if method == "ListVMs" {
			<-block
		}
		return nil
	}
	addr := serve(t, f.testConfig("kvm1", "b"), hv, WithHandlerTimeout(100*time.Millisecond))
	c := f.client("kvm1", addr)

	_, err := c.Status(context.Background())
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeTimeout || ae.Status != http.StatusServiceUnavailable {
		t.Fatalf("stuck hypervisor: err = %v, want a timeout answer", err)
	}
	if api.IsUnreachable(err) {
		t.Errorf("an answer is not unreachable")
	}

	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: f.operatorTLS("kvm1")}}
	for _, tc := range []struct {
		method, path string
		status       int
		code         string
	}{
		{http.MethodGet, "/v1/nope", http.StatusNotFound, api.CodeNotFound},
		{http.MethodPost, api.PathHealthz, http.StatusMethodNotAllowed, api.CodeMethodNotAllowed},
		{http.MethodDelete, api.PathStatus, http.StatusMethodNotAllowed, api.CodeMethodNotAllowed},
	} {
		req, _ := http.NewRequest(tc.method, "https://"+addr+tc.path, strings.NewReader("{}"))
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var eb api.ErrorBody
		err = json.NewDecoder(resp.Body).Decode(&eb)
		resp.Body.Close()
		if err != nil || resp.StatusCode != tc.status || eb.Code != tc.code || eb.Error == "" {
			t.Errorf("%s %s: %d %+v (%v), want %d %s", tc.method, tc.path, resp.StatusCode, eb, err, tc.status, tc.code)
		}
	}
}

func TestHypervisorFailure(t *testing.T) {
	f := newFleet(t)
	hv := virt.NewFake(virt.Capacity{CPUs: 1, MemoryMiB: 1024})
	hv.Fail = func(method, _ string) error {
		if method == "NodeInfo" {
			return errors.New("libvirtd is gone")
		}
		return nil
	}
	addr := serve(t, f.testConfig("kvm1", "b"), hv)
	_, err := f.client("kvm1", addr).Status(context.Background())
	if !api.IsCode(err, api.CodeHypervisor) {
		t.Fatalf("err = %v, want code %s", err, api.CodeHypervisor)
	}
	mustContain(t, err.Error(), "libvirtd is gone")
}

func TestNewRefusesWeakTLS(t *testing.T) {
	f := newFleet(t)
	cfg := f.testConfig("kvm1", "b")
	if _, err := New(cfg, virt.NewFake(virt.Capacity{}), WithTLSConfig(&tls.Config{MinVersion: tls.VersionTLS12})); err == nil {
		t.Fatal("New accepted a TLS config without client certificates")
	}
	cfg.TLSCert = filepath.Join(t.TempDir(), "missing.crt")
	if _, err := New(cfg, virt.NewFake(virt.Capacity{})); err == nil {
		t.Fatal("New accepted a missing certificate")
	}
}

func TestServeStopsGracefully(t *testing.T) {
	f := newFleet(t)
	cfg := f.testConfig("kvm1", "b")
	a, err := New(cfg, virt.NewFake(virt.Capacity{CPUs: 1, MemoryMiB: 1}))
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(cfg.StateDir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("state dir: %v %v", fi, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx, ln) }()
	if err := f.client("kvm1", ln.Addr().String()).Healthz(context.Background()); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve = %v, want nil after cancel", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not stop")
	}
	if _, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		t.Error("listener still open after Serve returned")
	}
}
