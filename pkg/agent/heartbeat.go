package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/clock"
)

// Bounds of the heartbeat write deadline (Heartbeat.Timeout's default is the interval within
// them): at least a second, so that a busy but working NFS server is not called hung; at most
// ten, so that a long interval still reports a hung one soon.
const (
	minHeartbeatTimeout = time.Second
	maxHeartbeatTimeout = 10 * time.Second
)

// HeartbeatTimeout is the default deadline of one heartbeat write with the given interval: the
// interval itself, at least 1 s and at most 10 s.
func HeartbeatTimeout(interval time.Duration) time.Duration {
	return min(max(interval, minHeartbeatTimeout), maxHeartbeatTimeout)
}

// Heartbeat writes the host's heartbeat record (api.HeartbeatRecord) to a file on the shared
// storage at a fixed interval, by rename, its seq one more with every successful write. HA
// neighbours read the file: a host whose seq advances is alive, whatever its agent's network
// says.
//
// A write to a hung NFS server blocks in the kernel and cannot be cancelled, so every write runs
// in a goroutine of its own, under a deadline: one that has not returned by then marks the
// heartbeat Stuck, and no other write starts until it returns (one goroutine stuck in the kernel
// at most, however long the storage hangs). The agent meanwhile answers everything else; Health
// says how the writes go, without touching the storage.
type Heartbeat struct {
	// Path is the heartbeat file, HeartbeatDir/hb-<host>.
	Path string
	// Host and BootID go into every record.
	Host, BootID string
	// Interval is the time between the starts of two writes (default DefaultHeartbeatInterval).
	Interval time.Duration
	// Timeout is how long a write may take before the heartbeat is Stuck (default
	// HeartbeatTimeout(Interval)).
	Timeout time.Duration
	// Clock ticks the writes, times their deadlines and dates the records (default the real
	// clock).
	Clock clock.Clock
	Log   *slog.Logger
	// StallFile is for the lab only (agent.properties lab.storage.stall.file): while it exists,
	// each write blocks, as one to a hung NFS server does.
	StallFile string

	mu     sync.Mutex
	health api.HeartbeatHealth
	// started is when the write in flight began, zero when none is.
	started time.Time
}

// stallPoll is how often a write blocked by the lab's storage stall looks whether it has ended.
// It is the simulated storage's own timing, not the writer's, so it runs on real time.
const stallPoll = 100 * time.Millisecond

// writeResult is what a write goroutine hands back.
type writeResult struct {
	seq uint64
	at  time.Time
	err error
}

// Health returns how the heartbeat writes go; it never touches the storage.
func (h *Heartbeat) Health() api.HeartbeatHealth {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := h.health
	out.File = h.Path
	if out.LastOK != nil {
		t := *out.LastOK
		out.LastOK = &t
	}
	return out
}

// Run writes at once, then at every tick of Interval until ctx ends. A failed write is logged
// and retried at the next tick: shared storage that comes back must find the host writing again.
// A tick that finds the previous write still running starts nothing. When ctx ends, Run waits for
// a write in flight up to its deadline, then returns.
func (h *Heartbeat) Run(ctx context.Context) {
	clk := clock.OrReal(h.Clock)
	log := h.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	interval := h.Interval
	if interval <= 0 {
		interval = DefaultHeartbeatInterval
	}
	timeout := h.Timeout
	if timeout <= 0 {
		timeout = HeartbeatTimeout(interval)
	}

	// Buffered: a write that returns after Run has gone still ends its goroutine.
	results := make(chan writeResult, 1)
	var (
		inFlight bool
		deadline clock.Timer
		expired  <-chan time.Time // the deadline of the write in flight; nil once passed
		failing  bool
		seq      uint64 // of the last successful write
	)
	start := func() {
		next := seq + 1
		started := clk.Now()
		h.mu.Lock()
		h.started = started
		h.mu.Unlock()
		inFlight = true
		deadline = clk.NewTimer(timeout)
		expired = deadline.C()
		go func() {
			at, err := h.write(ctx, clk, log, next)
			results <- writeResult{seq: next, at: at, err: err}
		}()
	}
	finish := func(r writeResult) {
		inFlight = false
		deadline.Stop()
		expired = nil
		h.mu.Lock()
		wasStuck, started := h.health.Stuck, h.started
		h.started = time.Time{}
		h.health.Stuck = false
		if r.err == nil {
			seq = r.seq
			at := r.at
			h.health.Seq, h.health.LastOK, h.health.LastError = r.seq, &at, ""
		} else {
			h.health.LastError = r.err.Error()
		}
		h.mu.Unlock()
		if ctx.Err() != nil {
			return // stopping: a write cut short by the stop is no storage failure
		}
		if wasStuck {
			log.Warn("heartbeat write returned after its deadline", "file", h.Path, "took", clk.Now().Sub(started), "err", r.err)
		}
		switch {
		case r.err != nil && !failing:
			log.Error("heartbeat write failed; retrying every interval", "file", h.Path, "err", r.err)
		case r.err == nil && failing:
			log.Info("heartbeat write works again", "file", h.Path)
		}
		failing = r.err != nil
	}

	start()
	tick := clk.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			// A write past its deadline is not waited for: it may never return.
			if inFlight && expired != nil {
				select {
				case r := <-results:
					finish(r)
				case <-expired:
				}
			}
			return
		case <-tick.C():
			if !inFlight {
				start()
			}
		case <-expired:
			expired = nil
			h.mu.Lock()
			h.health.Stuck = true
			h.health.LastError = fmt.Sprintf("the write started at %s has not returned within %s: the shared storage may be hung; no other write starts until it returns",
				h.started.UTC().Format(time.RFC3339), timeout)
			h.mu.Unlock()
			log.Error("heartbeat write stuck: no answer from the shared storage within its deadline", "file", h.Path, "deadline", timeout)
		case r := <-results:
			finish(r)
		}
	}
}

// write is one heartbeat write, the unit of storage I/O, dated when it reaches the storage. In a
// lab whose storage is stalled it blocks inside the write (a real block, not a skipped beat: what
// bounds a hung write must see it hang) until the stall ends or ctx does.
func (h *Heartbeat) write(ctx context.Context, clk clock.Clock, log *slog.Logger, seq uint64) (time.Time, error) {
	if h.StallFile != "" && stalled(h.StallFile) {
		log.Warn("heartbeat write blocked: the lab's shared storage is stalled", "file", h.Path, "stall_file", h.StallFile)
		if err := waitStall(ctx.Done(), h.StallFile); err != nil {
			return time.Time{}, err
		}
		log.Info("heartbeat write unblocked: the lab's shared storage is back", "file", h.Path)
	}
	at := clk.Now().UTC()
	err := WriteHeartbeat(h.Path, api.HeartbeatRecord{Host: h.Host, BootID: h.BootID, Seq: seq, WrittenAt: at})
	return at, err
}

// errStorageStopped ends a storage call blocked by the lab's storage stall when the agent stops.
var errStorageStopped = errors.New("the agent is stopping")

func stalled(flag string) bool {
	_, err := os.Lstat(flag)
	return err == nil
}

// waitStall blocks while the lab's stall flag exists, until done is closed
// (errStorageStopped).
func waitStall(done <-chan struct{}, flag string) error {
	t := time.NewTicker(stallPoll)
	defer t.Stop()
	for stalled(flag) {
		select {
		case <-done:
			return errStorageStopped
		case <-t.C:
		}
	}
	return nil
}

// WriteHeartbeat replaces path with a file holding rec as JSON: a temp file in the same
// directory, synced so that it reaches the shared storage rather than sitting in the page cache,
// then renamed over path, so that a neighbour's fresh open sees the old record or the new one,
// never a part. Others can write to that storage: rename replaces whatever is at path, a planted
// symlink included, and never writes through it to the file it points at.
func WriteHeartbeat(path string, rec api.HeartbeatRecord) (err error) {
	data, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("write heartbeat: %w", err)
	}
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
	_, err = f.Write(append(data, '\n'))
	if err == nil {
		// Neighbours only read it.
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
	// already visible to the neighbours that read the file.
	if d, derr := os.Open(dir); derr == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}
