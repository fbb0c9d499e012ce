package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/hooks"
	"github.com/kvmctl/kvmctl/pkg/virt"
)

// rawClient sends requests the typed client would refuse to build, over the agent's real mutual
// TLS, and returns the status and the error body.
type rawClient struct {
	t    *testing.T
	addr string
	hc   *http.Client
}

func newRawClient(t *testing.T, f *fleet, host, addr string) *rawClient {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: f.operatorTLS(host)}
	t.Cleanup(tr.CloseIdleConnections)
	return &rawClient{t: t, addr: addr, hc: &http.Client{Transport: tr}}
}

// do sends body (none when empty) to the escaped path and returns the status and error body.
func (c *rawClient) do(method, escapedPath, body string) (int, api.ErrorBody) {
	c.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "https://"+c.addr+escapedPath, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	var eb api.ErrorBody
	raw, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(raw, &eb)
	return resp.StatusCode, eb
}

// hooksConfig is the config of agent kvm1 with the agent executor (no stage-exec binary needed)
// and a hooks dir holding the given scripts (name → body after #!/bin/sh).
func hooksConfig(t *testing.T, f *fleet, scripts map[string]string) Config {
	t.Helper()
	cfg := f.testConfig("kvm1", "boot-1")
	cfg.ServiceExecutorDisabled = true
	if err := os.MkdirAll(cfg.HooksDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range scripts {
		p := filepath.Join(cfg.HooksDir, name)
		writeFile(t, p, []byte("#!/bin/sh\n"+body+"\n"))
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return cfg
}

// serveWeb1 serves agent kvm1 on libvirt's test driver, with VM web1 running; it returns the
// agent's address.
func serveWeb1(t *testing.T, f *fleet) string {
	t.Helper()
	uri := newTestNode(t, virt.NodeSpec{HostName: "kvm1", CPUs: 2, MemoryMiB: 2048, VMs: []virt.VMSpec{
		{Name: "web1", VCPUs: 1, MemoryMiB: 512, Running: true},
	}})
	cfg := f.testConfig("kvm1", "b")
	cfg.LibvirtURI = uri
	return serve(t, cfg, openNode(t, uri))
}

// libvirt reads a VM name up to its first NUL: "web1\x00" in a path acted on web1. Every VM
// endpoint refuses a name with a NUL or another control character before libvirt sees it.
func TestVMNameWithControlCharactersRefused(t *testing.T) {
	f := newFleet(t)
	addr := serveWeb1(t, f)
	raw := newRawClient(t, f, "kvm1", addr)
	migrate := `{"dest_uri":"qemu+tls://kvm2/system"}`
	for _, name := range []string{"web1\x00", "web1\x00x", "web1\n", "web1\u0085", "web1\x7f", "web1\xff"} {
		for _, tc := range []struct{ method, suffix, body string }{
			{http.MethodGet, "/xml", ""},
			{http.MethodPost, "/start", ""},
			{http.MethodPost, "/migrate", migrate},
			{http.MethodDelete, "", ""},
		} {
			status, eb := raw.do(tc.method, api.PathVM(name)+tc.suffix, tc.body)
			if status != http.StatusBadRequest || eb.Code != api.CodeBadRequest || !strings.Contains(eb.Error, fmt.Sprintf("invalid vm name %q", name)) {
				t.Errorf("%s %q%s = %d %+v, want 400 naming the vm name", tc.method, name, tc.suffix, status, eb)
			}
		}
	}
	c := f.client("kvm1", addr)
	if got := vmStates(t, c); got["web1"] != "running" || len(got) != 1 {
		t.Errorf("after the refusals the host has %v, want web1 running", got)
	}
	// The typed client refuses such names before sending.
	if err := c.RemoveVM(context.Background(), "web1\x00"); err == nil || !strings.Contains(err.Error(), `invalid vm name "web1\x00": NUL at byte 4`) {
		t.Errorf("client RemoveVM(NUL-suffixed) = %v", err)
	}
}

// A definition whose <name> has a control character is refused too (XML admits C1 and DEL).
func TestDefineVMNameWithControlCharactersRefused(t *testing.T) {
	f := newFleet(t)
	hv := virt.NewFake(virt.Capacity{CPUs: 4, MemoryMiB: 4096})
	c := f.client("kvm1", serve(t, f.testConfig("kvm1", "b"), hv))
	for _, name := range []string{"web1\u0085", "web1\x7f", "web1\u009b"} {
		x, err := virt.RenderDomainXML(virt.VMSpec{Name: name, VCPUs: 1, MemoryMiB: 256})
		if err != nil {
			t.Fatal(err)
		}
		ae := wantCode(t, "define "+name, c.DefineAndStartVM(context.Background(), x), http.StatusBadRequest, api.CodeBadRequest)
		mustContain(t, ae.Message, "invalid vm name")
	}
	if vms, _ := hv.ListVMs(); len(vms) != 0 {
		t.Errorf("a refused define changed the host: %+v", vms)
	}
}

// Stage requests: the payload (argv of the script) and the exec id of GET /v1/stages/{id} are
// checked before anything runs or any file is read.
func TestStageInputsWithControlCharactersRefused(t *testing.T) {
	f := newFleet(t)
	cfg := hooksConfig(t, f, map[string]string{"PreFlight.sh": "exit 0"})
	addr := serve(t, cfg, virt.NewFake(virt.Capacity{CPUs: 1, MemoryMiB: 1024}))
	raw := newRawClient(t, f, "kvm1", addr)
	for _, tc := range []struct{ name, body, msg string }{
		{"NUL in payload", `{"run_id":"r1","stage":"PreFlight","payload":"a\u0000b"}`, `invalid payload "a\x00b": NUL at byte 1`},
		{"newline in payload", `{"run_id":"r1","stage":"PreFlight","payload":"a\nb"}`, "control character U+000A"},
		{"C1 in payload", `{"run_id":"r1","stage":"PreFlight","payload":"a\u0085"}`, "C1 control character U+0085"},
		{"NUL in run id", `{"run_id":"r1\u0000","stage":"PreFlight"}`, "run_id"},
		{"NUL in stage", `{"run_id":"r1","stage":"PreFlight\u0000"}`, "unknown stage"},
	} {
		status, eb := raw.do(http.MethodPost, api.PathStages, tc.body)
		if status != http.StatusBadRequest || eb.Code != api.CodeBadRequest || !strings.Contains(eb.Error, tc.msg) {
			t.Errorf("%s: %d %+v, want 400 mentioning %q", tc.name, status, eb, tc.msg)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(cfg.StateDir, "stages")); len(ents) != 0 {
		t.Errorf("stages dir holds %d entries after refusals", len(ents))
	}

	good := hooks.ExecID("r1", events.PreFlight)
	for _, id := range []string{"x", good + "\x00", good[:15] + "\x00", strings.ToUpper(good), "../" + good, good + "0", "%2e%2e"} {
		status, eb := raw.do(http.MethodGet, api.PathStages+"/"+url.PathEscape(id), "")
		if status != http.StatusBadRequest || eb.Code != api.CodeBadRequest || !strings.Contains(eb.Error, "16 lowercase hex digits") {
			t.Errorf("GET stage %q = %d %+v, want 400", id, status, eb)
		}
	}
	// A well-formed id that names no execution is still a 404.
	if status, eb := raw.do(http.MethodGet, api.PathStages+"/"+good, ""); status != http.StatusNotFound || eb.Code != api.CodeNotFound {
		t.Errorf("GET unknown stage = %d %+v, want 404", status, eb)
	}
}

// The exec id rule of the API is the one of pkg/hooks: every id the agent derives passes it.
func TestValidExecIDMatchesHooks(t *testing.T) {
	for _, run := range []string{"r1", "run-2026-01-01", strings.Repeat("x", 64)} {
		for _, st := range events.Stages() {
			if id := hooks.ExecID(run, st); !api.ValidExecID(id) {
				t.Errorf("hooks.ExecID(%q, %s) = %q, refused by api.ValidExecID", run, st, id)
			}
		}
	}
}

// The duplicate and case-variant keys encoding/json would take, through the real API: the
// first is the one that ran Maintenance instead of PreFlight.
func TestStrictBodiesThroughTheAPI(t *testing.T) {
	f := newFleet(t)
	cfg := hooksConfig(t, f, map[string]string{"PreFlight.sh": "exit 0", "Maintenance.sh": "exit 0"})
	src := virt.NewFake(virt.Capacity{CPUs: 4, MemoryMiB: 4096}, virt.VM{Name: "web1", State: virt.StateRunning, VCPUs: 1, MemoryMiB: 512})
	addr := serve(t, cfg, src)
	raw := newRawClient(t, f, "kvm1", addr)
	for _, tc := range []struct{ name, path, body, msg string }{
		{"duplicate stage", api.PathStages, `{"run_id":"r1","stage":"PreFlight","stage":"Maintenance"}`, `duplicate key "stage": send each key once`},
		{"duplicate run id", api.PathStages, `{"run_id":"r1","stage":"PreFlight","run_id":"r2"}`, `duplicate key "run_id"`},
		{"capitalised", api.PathStages, `{"run_id":"r1","Stage":"Maintenance"}`, `key "Stage" is not "stage": keys are case-sensitive, send "stage"`},
		{"upper case", api.PathStages, `{"run_id":"r1","STAGE":"Maintenance"}`, `key "STAGE" is not "stage"`},
		{"variant beside the key", api.PathStages, `{"run_id":"r1","stage":"PreFlight","Stage":"Maintenance"}`, `key "Stage" is not "stage"`},
		{"unknown field", api.PathStages, `{"run_id":"r1","stage":"PreFlight","forced":true}`, `unknown field "forced": the fields are payload, run_id, stage, timeout_s`},
		{"trailing data", api.PathStages, `{"run_id":"r1","stage":"PreFlight"} {"stage":"Maintenance"}`, "more than one JSON value"},
		{"not utf-8", api.PathStages, "{\"run_id\":\"r1\",\"stage\":\"PreFlight\",\"payload\":\"\xff\"}", "not UTF-8"},
		{"migrate duplicate", api.PathVM("web1") + "/migrate", `{"dest_uri":"qemu+tls://kvm2/system","dest_uri":"qemu+tls://kvm3/system"}`, `duplicate key "dest_uri"`},
		{"migrate case", api.PathVM("web1") + "/migrate", `{"DEST_URI":"qemu+tls://kvm2/system"}`, `key "DEST_URI" is not "dest_uri"`},
		{"define duplicate", api.PathVMs, `{"xml":"<domain/>","xml":"<domain/>"}`, `duplicate key "xml"`},
	} {
		status, eb := raw.do(http.MethodPost, tc.path, tc.body)
		if status != http.StatusBadRequest || eb.Code != api.CodeBadRequest || !strings.Contains(eb.Error, tc.msg) {
			t.Errorf("%s: %d %+v, want 400 mentioning %q", tc.name, status, eb, tc.msg)
		}
	}
	if status, eb := raw.do(http.MethodPost, api.PathStages, `{"payload":"`+strings.Repeat("a", MaxRequestBytes)+`"}`); status != http.StatusRequestEntityTooLarge || eb.Code != api.CodeTooLarge {
		t.Errorf("oversized body: %d %+v, want 413", status, eb)
	}
	// Nothing ran, nothing moved.
	if ents, _ := os.ReadDir(filepath.Join(cfg.StateDir, "stages")); len(ents) != 0 {
		t.Errorf("stages dir holds %d entries after refusals", len(ents))
	}
	if vms, _ := src.ListVMs(); len(vms) != 1 || vms[0].State != virt.StateRunning {
		t.Errorf("web1 after refused migrations: %+v", vms)
	}
	// The exact spelling still works.
	if status, eb := raw.do(http.MethodPost, api.PathStages, `{"run_id":"r1","stage":"PreFlight"}`); status != http.StatusAccepted {
		t.Errorf("exact body: %d %+v, want 202", status, eb)
	}
	// Let that stage end before the test's directories go: its executor still writes there.
	dir := filepath.Join(cfg.StateDir, "stages")
	id := hooks.ExecID("r1", events.PreFlight)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		rec, _ := os.ReadFile(filepath.Join(dir, id+".json"))
		ents, _ := os.ReadDir(dir)
		if bytes.Contains(rec, []byte(`"completed"`)) && len(ents) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the accepted stage did not end: %s", rec)
		}
	}
}
