package agent

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"
)

// Heartbeat writes the current time to a file on shared storage at a fixed interval. HA
// neighbours read the file's modification time: a host that still writes is alive, whatever its
// agent's network says.
type Heartbeat struct {
	Path     string
	Interval time.Duration
	// Now is the clock of the written content; default time.Now. The mtime is always the file
	// system's, which is what neighbours compare.
	Now func() time.Time
	Log *slog.Logger
}

// Run writes at once, then every Interval until ctx ends. A failed write is logged and retried
// at the next tick: shared storage that comes back must find the host writing again.
func (h Heartbeat) Run(ctx context.Context) {
	now, log := h.Now, h.Log
	if now == nil {
		now = time.Now
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	interval := h.Interval
	if interval <= 0 {
		interval = DefaultHeartbeatInterval
	}
	failing := false
	beat := func() {
		err := WriteHeartbeat(h.Path, now())
		switch {
		case err != nil && !failing:
			log.Error("heartbeat write failed; retrying every interval", "file", h.Path, "err", err)
		case err == nil && failing:
			log.Info("heartbeat write works again", "file", h.Path)
		}
		failing = err != nil
	}
	beat()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			beat()
		}
	}
}

// WriteHeartbeat overwrites path with now (RFC 3339, UTC) and syncs it, so that the new mtime
// reaches the shared storage rather than sitting in the page cache.
func WriteHeartbeat(path string, now time.Time) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("write heartbeat: %w", err)
	}
	if _, err := f.WriteString(now.UTC().Format(time.RFC3339Nano) + "\n"); err != nil {
		f.Close()
		return fmt.Errorf("write heartbeat: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write heartbeat: sync: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write heartbeat: %w", err)
	}
	return nil
}
