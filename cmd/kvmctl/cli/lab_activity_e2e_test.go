package cli

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/lab"
)

// The agent side of host HA on a lab of real machine and agent processes: every agent's
// /v1/health shows its heartbeat advancing in DIR/shared; a neighbour reads another host's
// heartbeat and VM disks there and sees them advance while the host lives and stand still once
// it crashed; a host whose storage stalls says so in its health while it answers; a neighbour
// whose own storage stalls answers with an error per file, never with a sample that looks idle.
func TestLabActivityCheckE2E(t *testing.T) {
	t.Parallel()
	goraceOnce.Do(func() {
		// Under -race every program that exits sleeps 1s by default: machines, agents.
		os.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	})
	m := e2eLab(t, 3, 1, 2)
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for i := range m.Hosts {
			wg.Go(func() { _ = lab.StopAgent(&m.Hosts[i], 200*time.Millisecond) })
		}
		wg.Wait()
	})
	h1, h2, h3 := e2eLabHost(t, m, "h1"), e2eLabHost(t, m, "h2"), e2eLabHost(t, m, "h3")
	c1, c2, c3 := labClient(t, m, h1), labClient(t, m, h2), labClient(t, m, h3)

	// Every agent writes hb-hN in DIR/shared and says so in its health.
	for _, x := range []struct {
		h *lab.HostManifest
		c *api.Client
	}{{h1, c1}, {h2, c2}, {h3, c3}} {
		hr := labHealthUntil(t, x.c, "its heartbeat to advance", func(hr api.HealthReport) bool { return hr.OK && hr.Heartbeat != nil && hr.Heartbeat.Seq >= 2 })
		if hr.Host != x.h.Name || hr.BootID != labBootID(t, x.h) || hr.Heartbeat.File != labHeartbeat(m, x.h) {
			t.Errorf("health of %s = %+v, heartbeat %+v", x.h.Name, hr, hr.Heartbeat)
		}
	}

	// h2 reads h1's heartbeat and the disks of h1's VMs, as h1's status names them.
	req := labActivityRequest(t, m, h1)
	if len(req.Disks) != 2 {
		t.Fatalf("h1's VMs have disks %v, want 2", req.Disks)
	}
	first := labCheck(t, c2, req)
	deadline := time.Now().Add(labDeadline)
	for {
		now := labCheck(t, c2, req)
		if now.Heartbeat.Read.Seq > first.Heartbeat.Read.Seq && !slices.ContainsFunc(now.Disks, func(d api.FileSample) bool {
			return !d.MTime.After(first.Disks[slices.IndexFunc(first.Disks, func(f api.FileSample) bool { return f.Path == d.Path })].MTime)
		}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("h2 did not see h1's heartbeat and every disk advance within %s: %+v -> %+v", labDeadline, first, now)
		}
		time.Sleep(200 * time.Millisecond)
	}

	// h1 crashes: once nothing of it is written any more, h2 reads the same seq and mtimes.
	labRun(t, m, 0, "crash", "h1")
	labQuiet(t, "h1's heartbeat and VM disks after its crash", labHostFiles(m, h1)...)
	a := labCheck(t, c2, req)
	time.Sleep(2 * time.Second)
	b := labCheck(t, c2, req)
	if a.Heartbeat.Error != "" || b.Heartbeat.Error != "" || a.Disks[0].Error != "" || b.Disks[1].Error != "" {
		t.Errorf("h2 could not read h1's files after its crash: %+v, %+v", a, b)
	}
	if b.Heartbeat.Read.Seq != a.Heartbeat.Read.Seq || b.Heartbeat.Read.BootID != a.Heartbeat.Read.BootID {
		t.Errorf("h1's heartbeat moved after its crash: %+v -> %+v", a.Heartbeat.Read, b.Heartbeat.Read)
	}
	for i := range b.Disks {
		if !b.Disks[i].MTime.Equal(a.Disks[i].MTime) || b.Disks[i].Size != a.Disks[i].Size {
			t.Errorf("h1's disk moved after its crash: %+v -> %+v", a.Disks[i], b.Disks[i])
		}
	}

	// h3's storage stalls: it answers, and says its heartbeat is stuck.
	labRun(t, m, 0, "storage-stall", "h3")
	stuck := labHealthUntil(t, c3, "h3's heartbeat to be stuck", func(hr api.HealthReport) bool { return hr.Heartbeat.Stuck })
	if !stuck.OK || !strings.Contains(stuck.Heartbeat.LastError, "shared storage may be hung") {
		t.Errorf("h3's health with its storage stalled = %+v, heartbeat %+v", stuck, stuck.Heartbeat)
	}

	// h2's own storage stalls (an NFS outage as h2 sees it): its check of h3 has an error for
	// every file, after the read deadline.
	labRun(t, m, 0, "storage-stall", "h2")
	r := labCheck(t, c2, labActivityRequest(t, m, h3))
	if !strings.Contains(r.Heartbeat.Error, "no answer within") || r.Heartbeat.Read.Seq != 0 {
		t.Errorf("h2 read h3's heartbeat with its own storage stalled: %+v", r.Heartbeat)
	}
	for _, d := range r.Disks {
		if !strings.Contains(d.Error, "no answer within") || !d.MTime.IsZero() {
			t.Errorf("h2 read a disk with its own storage stalled: %+v", d)
		}
	}
	labRun(t, m, 0, "storage-resume", "h2")
	labRun(t, m, 0, "storage-resume", "h3")
	labHealthUntil(t, c3, "h3's heartbeat to go on", func(hr api.HealthReport) bool {
		return !hr.Heartbeat.Stuck && hr.Heartbeat.LastError == "" && hr.Heartbeat.Seq > stuck.Heartbeat.Seq
	})
}

// labClient is an operator's client of h's agent through the inventory's address.
func labClient(t *testing.T, m *lab.Manifest, h *lab.HostManifest) *api.Client {
	t.Helper()
	c, err := api.ClientForHost(m.PKIDir(), h.Name, h.Address)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// labHealthUntil polls c's health until cond holds and returns it.
func labHealthUntil(t *testing.T, c *api.Client, what string, cond func(api.HealthReport) bool) api.HealthReport {
	t.Helper()
	deadline := time.Now().Add(labDeadline)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		hr, err := c.Health(ctx)
		cancel()
		if err == nil && cond(hr) {
			return hr
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: waiting for %s: last health %+v (heartbeat %+v), %v", c.Host(), what, hr, hr.Heartbeat, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// labActivityRequest asks for h's heartbeat and the disks of h's VMs.
func labActivityRequest(t *testing.T, m *lab.Manifest, h *lab.HostManifest) api.ActivityCheckRequest {
	t.Helper()
	req := api.ActivityCheckRequest{Host: h.Name, HeartbeatFile: labHeartbeat(m, h)}
	for _, vm := range labAgentStatus(t, m, h).VMs {
		req.Disks = append(req.Disks, vm.Disks...)
	}
	for _, d := range req.Disks {
		if filepath.Dir(d) != m.SharedDir() {
			t.Fatalf("%s's disk %s is not in the lab's shared dir %s", h.Name, d, m.SharedDir())
		}
	}
	return req
}

// labCheck runs an activity check through c.
func labCheck(t *testing.T, c *api.Client, req api.ActivityCheckRequest) api.ActivityCheckResult {
	t.Helper()
	r, err := c.ActivityCheck(context.Background(), req)
	if err != nil {
		t.Fatalf("activity check of %s by %s: %v", req.Host, c.Host(), err)
	}
	return r
}
