package agent

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
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
	// StallFile is for the lab only (agent.properties lab.storage.stall.file): while it exists,
	// each write blocks, as one to a hung NFS server does.
	StallFile string
}

// stallPoll is how often a stalled write looks whether the lab's stall has ended.
const stallPoll = 100 * time.Millisecond

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
		err := h.write(ctx, now, log)
		if ctx.Err() != nil {
			return // stopping: a write cut short by the stop is no storage failure
		}
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

// write is one heartbeat write, the unit of storage I/O. In a lab whose storage is stalled it
// blocks inside the write (a real block, not a skipped beat: what bounds a hung write must see it
// hang) until the stall ends or the agent stops, then writes the time of that moment.
func (h Heartbeat) write(ctx context.Context, now func() time.Time, log *slog.Logger) error {
	if h.StallFile != "" && stalled(h.StallFile) {
		log.Warn("heartbeat write blocked: the lab's shared storage is stalled", "file", h.Path, "stall_file", h.StallFile)
		t := time.NewTicker(stallPoll)
		for stalled(h.StallFile) {
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
		}
		t.Stop()
		log.Info("heartbeat write unblocked: the lab's shared storage is back", "file", h.Path)
	}
	return WriteHeartbeat(h.Path, now())
}

func stalled(flag string) bool {
	_, err := os.Lstat(flag)
	return err == nil
}

// WriteHeartbeat replaces path with a file holding now (RFC 3339, UTC): a temp file in the same
// directory, synced so that its mtime reaches the shared storage rather than sitting in the page
// cache, then renamed over path. Others can write to that storage: rename replaces whatever is at
// path, a planted symlink included, and never writes through it to the file it points at.
func WriteHeartbeat(path string, now time.Time) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	// CreateTemp opens with O_EXCL and a random name: it never follows a planted link either.
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("write heartbeat: %w", err)
	}
	defer func() {
		if err != nil {
			_ = os.Remove(f.Name())
		}
	}()
	_, err = f.WriteString(now.UTC().Format(time.RFC3339Nano) + "\n")
	if err == nil {
		// Neighbours only read it; 0644 as before.
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write heartbeat: %w", err)
	}
	if err = os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write heartbeat: %w", err)
	}
	// Best effort: some shared file systems refuse fsync on a directory, and the rename is
	// already visible to the neighbours that read the mtime.
	if d, derr := os.Open(dir); derr == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}
