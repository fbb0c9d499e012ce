package agent

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/virt"
)

// timed runs call and fails the test when it errs or takes longer than limit.
func timed(t *testing.T, what string, limit time.Duration, call func() error) {
	t.Helper()
	start := time.Now()
	err := call()
	if took := time.Since(start); took > limit {
		t.Errorf("%s took %v, want under %v", what, took, limit)
	}
	if err != nil {
		t.Errorf("%s: %v", what, err)
	}
}

// GET /v1/health over mutual TLS: the heartbeat's seq grows with every write and last_ok with
// it; with the lab's storage stall in place the write hangs, the health says stuck (ok false) and
// last_ok stands still, while /v1/health and /v1/status still answer at once (ok: the agent
// serves; the storage's trouble is the heartbeat's); when the storage is back the heartbeat goes
// on.
func TestHealthEndToEnd(t *testing.T) {
	f := newFleet(t)
	cfg := f.testConfig("kvm1", "boot-1")
	cfg.HeartbeatDir = t.TempDir()
	cfg.HeartbeatInterval = 50 * time.Millisecond
	cfg.LabStorageStallFile = filepath.Join(t.TempDir(), "storage.stall")
	hv := virt.NewFake(virt.Capacity{CPUs: 4, MemoryMiB: 4096}, virt.VM{Name: "a", State: virt.StateRunning, VCPUs: 1, MemoryMiB: 512})
	c := f.client("kvm1", serve(t, cfg, hv))
	ctx := context.Background()
	health := func() api.HealthReport {
		t.Helper()
		h, err := c.Health(ctx)
		if err != nil {
			t.Fatalf("Health: %v", err)
		}
		return h
	}

	var first api.HealthReport
	waitFor(t, "the first heartbeat", func() bool { first = health(); return first.Heartbeat != nil && first.Heartbeat.Seq >= 1 })
	file := filepath.Join(cfg.HeartbeatDir, "hb-kvm1")
	if !first.OK || first.Host != "kvm1" || first.BootID != "boot-1" || first.AgentState != api.AgentStateUp ||
		first.Heartbeat.File != file || first.Heartbeat.LastOK == nil || first.Heartbeat.Stuck || first.Heartbeat.LastError != "" {
		t.Errorf("health = %+v, heartbeat %+v", first, first.Heartbeat)
	}
	if rec := readRecord(t, file); rec.Host != "kvm1" || rec.BootID != "boot-1" || rec.Seq < first.Heartbeat.Seq {
		t.Errorf("heartbeat file = %+v, health said seq %d", rec, first.Heartbeat.Seq)
	}
	var later api.HealthReport
	waitFor(t, "3 more heartbeats", func() bool { later = health(); return later.Heartbeat.Seq >= first.Heartbeat.Seq+3 })
	if !later.Heartbeat.LastOK.After(*first.Heartbeat.LastOK) {
		t.Errorf("last_ok did not advance: %v -> %v", first.Heartbeat.LastOK, later.Heartbeat.LastOK)
	}

	// The storage hangs: within the write deadline (1 s) the heartbeat is stuck.
	writeFile(t, cfg.LabStorageStallFile, nil)
	var stuck api.HealthReport
	waitFor(t, "stuck", func() bool { stuck = health(); return stuck.Heartbeat.Stuck })
	if !stuck.OK || !strings.Contains(stuck.Heartbeat.LastError, "shared storage may be hung") {
		t.Errorf("stuck health = %+v, heartbeat %+v", stuck, stuck.Heartbeat)
	}
	for range 5 {
		timed(t, "GET /v1/health while the storage hangs", 500*time.Millisecond, func() error { _, err := c.Health(ctx); return err })
		timed(t, "GET /v1/status while the storage hangs", 500*time.Millisecond, func() error { _, err := c.Status(ctx); return err })
		time.Sleep(50 * time.Millisecond)
	}
	if h := health(); !h.Heartbeat.LastOK.Equal(*stuck.Heartbeat.LastOK) || h.Heartbeat.Seq != stuck.Heartbeat.Seq || !h.Heartbeat.Stuck {
		t.Errorf("the heartbeat moved while the storage hung: %+v -> %+v", stuck.Heartbeat, h.Heartbeat)
	}

	// The storage is back: the hung write completes and the next ones follow.
	if err := os.Remove(cfg.LabStorageStallFile); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the heartbeat to go on", func() bool {
		h := health()
		return !h.Heartbeat.Stuck && h.Heartbeat.LastError == "" && h.Heartbeat.Seq >= stuck.Heartbeat.Seq+2
	})

	// The boot id is the one read when the agent started (a reboot restarts the agent), and
	// the agent state is the live one.
	writeFile(t, cfg.BootIDFile, []byte("boot-2\n"))
	if _, err := c.EnterMaintenance(ctx); err != nil {
		t.Fatal(err)
	}
	if h := health(); h.BootID != "boot-1" || h.AgentState != api.AgentStateInMaintenance {
		t.Errorf("boot id %q, agent state %q; want boot-1, %s", h.BootID, h.AgentState, api.AgentStateInMaintenance)
	}
}

// Without heartbeat.dir the health has no heartbeat and is ok; the answer has the documented
// keys, and the health checks do not fill the agent's log at info level.
func TestHealthWithoutHeartbeat(t *testing.T) {
	f := newFleet(t)
	var logs logBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	addr := serve(t, f.testConfig("kvm1", "b"), virt.NewFake(virt.Capacity{CPUs: 1, MemoryMiB: 1024}), WithLogger(log))
	h, err := f.client("kvm1", addr).Health(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !h.OK || h.Heartbeat != nil || h.Host != "kvm1" || h.BootID != "b" {
		t.Errorf("health = %+v", h)
	}

	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: f.operatorTLS("kvm1")}}
	resp, err := hc.Get("https://" + addr + api.PathHealth)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"ok", "host", "boot_id", "agent_state"} {
		if _, ok := m[k]; !ok {
			t.Errorf("health lacks %q: %v", k, m)
		}
	}
	if _, ok := m["heartbeat"]; ok || resp.Header.Get("Cache-Control") != "no-store" {
		t.Errorf("health = %v, cache-control %q", m, resp.Header.Get("Cache-Control"))
	}
	if strings.Contains(logs.String(), api.PathHealth) {
		t.Errorf("health checks are logged at info level:\n%s", logs.String())
	}
}
