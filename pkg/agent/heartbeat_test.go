package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/clock"
)

// runHeartbeat runs h until the test ends and returns a function that stops it and waits.
func runHeartbeat(t *testing.T, h *Heartbeat) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { h.Run(ctx) })
	stop = func() {
		cancel()
		wg.Wait()
	}
	t.Cleanup(stop)
	return stop
}

// readRecord reads the heartbeat record at path, failing the test when it does not parse.
func readRecord(t *testing.T, path string) api.HeartbeatRecord {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rec api.HeartbeatRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatalf("%s holds %q, not a record: %v", path, b, err)
	}
	return rec
}

// waitFor polls cond every 5 ms until it holds, failing the test after 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func TestHeartbeatWritesRecords(t *testing.T) {
	path := filepath.Join(t.TempDir(), api.HeartbeatFileName("kvm1"))
	h := &Heartbeat{Path: path, Host: "kvm1", BootID: "boot-1", Interval: 20 * time.Millisecond}
	if hh := h.Health(); hh.File != path || hh.Seq != 0 || hh.LastOK != nil || hh.Stuck {
		t.Errorf("health before the first write = %+v", hh)
	}
	before := time.Now().UTC()
	runHeartbeat(t, h)

	waitFor(t, "the first write", func() bool { return h.Health().Seq >= 1 })
	rec := readRecord(t, path)
	if rec.Host != "kvm1" || rec.BootID != "boot-1" || rec.Seq < 1 || rec.WrittenAt.Before(before) || rec.WrittenAt.Location() != time.UTC {
		t.Errorf("record = %+v", rec)
	}
	// Each write is one more; the file and the health agree on the last one.
	waitFor(t, "3 more writes", func() bool { return h.Health().Seq >= rec.Seq+3 })
	later := readRecord(t, path)
	if later.Seq <= rec.Seq || !later.WrittenAt.After(rec.WrittenAt) {
		t.Errorf("record did not advance: %+v -> %+v", rec, later)
	}
	hh := h.Health()
	if hh.LastOK == nil || hh.LastOK.Before(rec.WrittenAt) || hh.LastError != "" || hh.Stuck || hh.File != path {
		t.Errorf("health = %+v", hh)
	}
	// No temp file is left behind.
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("heartbeat dir holds %d entries, want only the heartbeat", len(entries))
	}
}

// logBuffer is a slog handler target that tests read while the code under test writes.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A write blocked by the lab's storage stall (a real block inside the write) passes its deadline:
// the heartbeat is Stuck, and ticks start no other write until it returns. When the storage is
// back, it completes with its seq and the next tick writes the next one. Time is a fake clock:
// the deadline and the ticks pass when the test says.
func TestHeartbeatStuckWhileStorageStalls(t *testing.T) {
	dir := t.TempDir()
	path, stall := filepath.Join(dir, "hb-kvm1"), filepath.Join(t.TempDir(), "storage.stall")
	writeFile(t, stall, nil)
	clk := clock.NewFake(time.Time{})
	var logs logBuffer
	h := &Heartbeat{Path: path, Host: "kvm1", BootID: "b", Interval: time.Second, Timeout: 3 * time.Second,
		Clock: clk, StallFile: stall, Log: slog.New(slog.NewTextHandler(&logs, nil))}
	runHeartbeat(t, h)

	clk.BlockUntil(2) // the ticker and the first write's deadline
	clk.Advance(2 * time.Second)
	time.Sleep(50 * time.Millisecond)
	if hh := h.Health(); hh.Stuck || hh.Seq != 0 {
		t.Errorf("before its deadline the blocked write is not stuck yet: %+v", hh)
	}
	clk.Advance(time.Second)
	waitFor(t, "stuck", func() bool { return h.Health().Stuck })
	hh := h.Health()
	mustContain(t, hh.LastError, "has not returned within 3s", "shared storage may be hung")
	if hh.Seq != 0 || hh.LastOK != nil {
		t.Errorf("stuck health = %+v", hh)
	}
	// Ten more ticks: no second write starts beside the blocked one.
	for range 10 {
		clk.Advance(time.Second)
	}
	time.Sleep(100 * time.Millisecond)
	if n := strings.Count(logs.String(), "heartbeat write blocked"); n != 1 {
		t.Errorf("%d writes started while one was stuck, want 1:\n%s", n, logs.String())
	}
	if _, err := os.Stat(path); err == nil {
		t.Errorf("the heartbeat was written while the storage stalled")
	}

	// The storage comes back: the blocked write completes, seq 1, and nothing is stuck.
	if err := os.Remove(stall); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the blocked write to return", func() bool { return h.Health().Seq == 1 })
	hh = h.Health()
	if hh.Stuck || hh.LastError != "" || hh.LastOK == nil || !hh.LastOK.Equal(clk.Now().UTC()) {
		t.Errorf("health after the storage came back = %+v (clock %v)", hh, clk.Now())
	}
	if rec := readRecord(t, path); rec.Seq != 1 || !rec.WrittenAt.Equal(clk.Now().UTC()) {
		t.Errorf("record = %+v", rec)
	}
	mustContain(t, logs.String(), "heartbeat write stuck", "heartbeat write returned after its deadline")
	clk.Advance(time.Second)
	waitFor(t, "the next write", func() bool { return h.Health().Seq == 2 })
	if rec := readRecord(t, path); rec.Seq != 2 {
		t.Errorf("record after the next tick = %+v", rec)
	}
}

// A write that fails (the heartbeat dir is gone) is reported in the health, seq unchanged, and
// retried at the next tick; the seq it would have had goes to the next successful write.
func TestHeartbeatFailedWriteIsRetried(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nfs")
	path := filepath.Join(dir, "hb-kvm1")
	clk := clock.NewFake(time.Time{})
	h := &Heartbeat{Path: path, Host: "kvm1", BootID: "b", Interval: time.Second, Clock: clk}
	runHeartbeat(t, h)

	waitFor(t, "the failed write", func() bool { return h.Health().LastError != "" })
	hh := h.Health()
	mustContain(t, hh.LastError, "write heartbeat", "no such file or directory")
	if hh.Seq != 0 || hh.LastOK != nil || hh.Stuck {
		t.Errorf("health after a failed write = %+v", hh)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	clk.BlockUntil(1)
	clk.Advance(time.Second)
	waitFor(t, "the retry", func() bool { return h.Health().Seq == 1 })
	if hh := h.Health(); hh.LastError != "" || readRecord(t, path).Seq != 1 {
		t.Errorf("health after the retry = %+v", hh)
	}
}

// An agent that stops while its write is blocked by the lab's stall is not held up by it.
func TestHeartbeatStopsWhileStorageStalls(t *testing.T) {
	dir := t.TempDir()
	stall := filepath.Join(dir, "storage.stall")
	writeFile(t, stall, nil)
	h := &Heartbeat{Path: filepath.Join(dir, "hb-kvm1"), Host: "kvm1", Interval: 20 * time.Millisecond, StallFile: stall}
	stop := runHeartbeat(t, h)
	time.Sleep(100 * time.Millisecond)
	done := make(chan struct{})
	go func() {
		stop()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return on stop while the storage stalled")
	}
	if _, err := os.Stat(h.Path); err == nil {
		t.Errorf("the heartbeat was written while the storage stalled")
	}
}

func TestWriteHeartbeatFails(t *testing.T) {
	err := WriteHeartbeat(filepath.Join(t.TempDir(), "missing", "hb"), api.HeartbeatRecord{Host: "h", Seq: 1})
	if err == nil || !strings.Contains(err.Error(), "write heartbeat") {
		t.Errorf("err = %v", err)
	}
}

func TestHeartbeatTimeout(t *testing.T) {
	for _, tc := range []struct{ interval, want time.Duration }{
		{20 * time.Millisecond, time.Second}, {time.Second, time.Second}, {4 * time.Second, 4 * time.Second}, {time.Hour, 10 * time.Second},
	} {
		if got := HeartbeatTimeout(tc.interval); got != tc.want {
			t.Errorf("HeartbeatTimeout(%v) = %v, want %v", tc.interval, got, tc.want)
		}
	}
}
