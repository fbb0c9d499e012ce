package agent

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvmctl/kvmctl/pkg/api"
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
}
