package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestHeartbeatWritesAndUpdatesMtime(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kvm1.heartbeat")
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { Heartbeat{Path: path, Interval: 20 * time.Millisecond}.Run(ctx) })
	defer func() {
		cancel()
		wg.Wait()
	}()

	// Wait for the first write, then for a later one with a newer mtime and content.
	first, firstContent := waitForHeartbeat(t, path, time.Time{})
	if _, err := time.Parse(time.RFC3339Nano, strings.TrimSpace(firstContent)); err != nil {
		t.Errorf("content %q is not an RFC 3339 time: %v", firstContent, err)
	}
	later, laterContent := waitForHeartbeat(t, path, first)
	if !later.After(first) || laterContent == firstContent {
		t.Errorf("heartbeat did not advance: %v %q -> %v %q", first, firstContent, later, laterContent)
	}
}

// waitForHeartbeat polls until path exists with an mtime after since.
func waitForHeartbeat(t *testing.T, path string, since time.Time) (time.Time, string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		fi, err := os.Stat(path)
		if err == nil && fi.ModTime().After(since) {
			b, err := os.ReadFile(path)
			if err == nil && len(b) > 0 {
				return fi.ModTime(), string(b)
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no heartbeat newer than %v in %s", since, path)
	return time.Time{}, ""
}

func TestHeartbeatRunsWithAgent(t *testing.T) {
	f := newFleet(t)
	cfg := f.testConfig("kvm1", "b")
	cfg.HeartbeatFile = filepath.Join(t.TempDir(), "hb")
	cfg.HeartbeatInterval = time.Second
	serve(t, cfg, panicHypervisor{})
	waitForHeartbeat(t, cfg.HeartbeatFile, time.Time{})
}

func TestWriteHeartbeatFails(t *testing.T) {
	err := WriteHeartbeat(filepath.Join(t.TempDir(), "missing", "hb"), time.Now())
	if err == nil || !strings.Contains(err.Error(), "write heartbeat") {
		t.Errorf("err = %v", err)
	}
}

// In a lab whose storage is stalled, the heartbeat write blocks (nothing is written, the writer
// is stuck in its write) until the stall file goes; then it writes again. An agent that stops
// meanwhile is not held up by the stall.
func TestHeartbeatBlocksWhileLabStorageStalls(t *testing.T) {
	dir := t.TempDir()
	path, stall := filepath.Join(dir, "hb"), filepath.Join(dir, "storage.stall")
	if err := os.WriteFile(stall, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Heartbeat{Path: path, Interval: 20 * time.Millisecond, StallFile: stall}.Run(ctx)
	}()
	time.Sleep(300 * time.Millisecond)
	if _, err := os.Stat(path); err == nil {
		t.Fatalf("the heartbeat was written while the storage stalled")
	}
	if err := os.Remove(stall); err != nil {
		t.Fatal(err)
	}
	first, _ := waitForHeartbeat(t, path, time.Time{})
	waitForHeartbeat(t, path, first)

	// Stalled again, then stopped: Run returns without waiting for the storage.
	if err := os.WriteFile(stall, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return on stop while the storage stalled")
	}
}
