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
