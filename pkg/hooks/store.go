package hooks

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kvmctl/kvmctl/pkg/events"
)

// ErrUnknownID reports an execution id that no Start produced.
var ErrUnknownID = errors.New("unknown stage execution")

// errCorruptRecord marks a record file that exists but does not decode.
var errCorruptRecord = errors.New("record unreadable")

// ExecID returns the execution id of (runID, stage): the same pair always gives the same id,
// which is what makes Start idempotent across agent restarts.
func ExecID(runID string, stage events.Stage) string {
	sum := sha256.Sum256([]byte(runID + "/" + string(stage)))
	return hex.EncodeToString(sum[:8])
}

func validID(id string) bool {
	if len(id) != 16 {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil && strings.ToLower(id) == id
}

// Executor kinds stored in records.
const (
	kindService = "service"
	kindAgent   = "agent"
)

// record is the file <stateDir>/stages/<id>.json.
type record struct {
	Status
	Executor string `json:"executor"`
	Script   string `json:"script,omitempty"`
	// BootID is the host's boot id when the stage started; a different one now means the host
	// rebooted during the stage.
	BootID string `json:"boot_id,omitempty"`
	// PID is the process that owns the stage: the runner (service) or the agent (agent
	// executor). Zero in a service stage's record until it completes: while the runner runs,
	// its pid is in <id>.pid (an older runner wrote it here instead).
	PID int `json:"pid,omitempty"`
	// PIDStart is PID's start time in clock ticks since boot, to tell it from a reused pid.
	PIDStart uint64 `json:"pid_start,omitempty"`
}

// store reads and writes the stage records of one state directory.
type store struct{ dir string }

func openStore(stateDir string) (store, error) {
	if stateDir == "" {
		return store{}, errors.New("state dir not set")
	}
	dir := filepath.Join(stateDir, "stages")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return store{}, fmt.Errorf("create stages dir: %w", err)
	}
	return store{dir: dir}, nil
}

func (s store) recordPath(id string) string { return filepath.Join(s.dir, id+".json") }
func (s store) specPath(id string) string   { return filepath.Join(s.dir, id+".spec") }
func (s store) logPath(id string) string    { return filepath.Join(s.dir, id+".log") }
func (s store) pidPath(id string) string    { return filepath.Join(s.dir, id+".pid") }

func (s store) exists(id string) bool {
	_, err := os.Lstat(s.recordPath(id))
	return err == nil
}

// read reads the record of id. A record that cannot be one (see readRecord) or that names
// another execution is errCorruptRecord; its output is cut to the last MaxOutput bytes.
func (s store) read(id string) (record, error) {
	rec, err := readRecord(s.recordPath(id))
	if err != nil {
		return rec, err
	}
	if rec.ID != id {
		return record{}, fmt.Errorf("stage record %s holds execution %q (%w)", s.recordPath(id), rec.ID, errCorruptRecord)
	}
	rec.Output = tailString(rec.Output, MaxOutput)
	return rec, nil
}

// maxRecordSize bounds what is read of a record file. A record this agent writes is far
// smaller (its output is at most MaxOutput bytes, 6 times that when every byte is escaped); a
// larger one, say a whole 40 MiB output written by an older agent, is not read into memory but
// set aside.
const maxRecordSize = 1 << 20

// readRecord reads and decodes the record at path. What cannot be a record is errCorruptRecord,
// to be set aside: a symlink (never followed), a directory or anything else not a regular file,
// a file the agent may not read, one larger than maxRecordSize, one that does not decode. Other
// errors (no file descriptor left, an I/O error) are returned as they are: the next read may
// succeed.
func readRecord(path string) (record, error) {
	var rec record
	b, err := readSmallFile(path, maxRecordSize)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return rec, ErrUnknownID
	case errors.Is(err, errCorruptRecord):
		return rec, fmt.Errorf("stage record %s: %w", path, err)
	case err != nil:
		return rec, fmt.Errorf("read stage record: %w", err)
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, fmt.Errorf("decode stage record %s: %w (%w)", path, err, errCorruptRecord)
	}
	return rec, nil
}

// readSmallFile reads the regular file at path, at most limit bytes, without following a
// symlink or blocking on a FIFO. A file that is not one to read (see readRecord) is
// errCorruptRecord.
func readSmallFile(path string, limit int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	switch {
	case errors.Is(err, syscall.ELOOP):
		return nil, fmt.Errorf("a symbolic link (%w)", errCorruptRecord)
	case errors.Is(err, os.ErrPermission):
		return nil, fmt.Errorf("%w (%w)", err, errCorruptRecord)
	case err != nil:
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("not a regular file (%s) (%w)", fi.Mode().Type(), errCorruptRecord)
	}
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("larger than %d bytes (%w)", limit, errCorruptRecord)
	}
	return b, nil
}

// setAside renames the unusable entry at path to path.corrupt (path.corrupt.N when that is
// taken) and returns the new name.
func setAside(path string) (string, error) {
	for i := 0; i < 100; i++ {
		to := path + ".corrupt"
		if i > 0 {
			to += "." + strconv.Itoa(i)
		}
		if _, err := os.Lstat(to); err == nil {
			continue
		}
		if err := os.Rename(path, to); err != nil {
			return "", err
		}
		return to, nil
	}
	return "", fmt.Errorf("%s.corrupt to %[1]s.corrupt.99 are all taken", path)
}

// write replaces the record atomically and durably.
func (s store) write(rec record) error {
	return writeJSONAtomic(s.recordPath(rec.ID), rec)
}

// writeSpec writes the spec file of a stage without syncing it: no one needs it once the host
// has restarted (the reboot rule settles the stage), and the runner reads it from the page
// cache. That saves two fsyncs per stage.
func (s store) writeSpec(es execSpec) error {
	return replaceJSON(s.specPath(es.ID), es, false)
}

// stageProcs is the file <id>.pid: the processes of a running stage. The stage runner claims
// it with its own pid before it starts the script (service executor), and whoever starts the
// script adds the script's process group as soon as it runs (both executors); it is removed once
// the result is recorded. While the process that started the script lives, the stage ends with
// the script (the group leader) and its exit status; once that process is gone, the group is all
// there is to go by: the stage runs while any process of the group lives.
//
// A file of its own rather than a rewrite of the record, and not synced: losing it in a power
// cut loses nothing, since the record it leaves (with the boot id of the stage) is settled by the
// reboot rule just as one with the pids would be, and without a reboot the page cache has it.
// That saves the two fsyncs of a record rewrite, twice per stage.
type stageProcs struct {
	// PID is the stage runner (service executor); PIDStart its start time in clock ticks since
	// boot, to tell it from a process that reused the pid.
	PID      int    `json:"pid,omitempty"`
	PIDStart uint64 `json:"pid_start,omitempty"`
	// PGID is the script's process group: the script's pid, as it leads a group of its own.
	// PGIDStart is the leader's start time; a group recorded without one is never trusted.
	PGID      int    `json:"pgid,omitempty"`
	PGIDStart uint64 `json:"pgid_start,omitempty"`
	// ScriptStart, Timeout and Grace let an agent that watches an orphaned script enforce its
	// timeout as the process that started it would have.
	ScriptStart time.Time     `json:"script_start,omitzero"`
	Timeout     time.Duration `json:"timeout,omitempty"`
	Grace       time.Duration `json:"grace,omitempty"`
}

// claim writes the runner's <id>.pid, failing with os.ErrExist if there is one already: the
// hard link is atomic and exclusive, so a stage started twice (a unit restarted) runs once.
func (s store) claim(id string, p stageProcs) error {
	tmp, err := writeTemp(s.dir, p, false)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, s.pidPath(id)); err != nil {
		return fmt.Errorf("claim stage: %w", err)
	}
	return nil
}

// writeProcs replaces <id>.pid with p, atomically but not durably (see stageProcs).
func (s store) writeProcs(id string, p stageProcs) error {
	return replaceJSON(s.pidPath(id), p, false)
}

// procs returns the processes of id from its <id>.pid; ok is false when there is none yet (or
// any more) or it cannot be read.
func (s store) procs(id string) (p stageProcs, ok bool) {
	b, err := readSmallFile(s.pidPath(id), 64<<10)
	if err != nil || json.Unmarshal(b, &p) != nil || p.PID < 0 || p.PGID < 0 || p.PID == 0 && p.PGID == 0 {
		return stageProcs{}, false
	}
	return p, true
}

// create writes the first record of an execution, failing with os.ErrExist if there is one
// already: the hard link is both atomic and exclusive, so two starts cannot both win.
func (s store) create(rec record) error {
	tmp, err := writeTemp(s.dir, rec, true)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, s.recordPath(rec.ID)); err != nil {
		return fmt.Errorf("create stage record: %w", err)
	}
	// Without this the new name may not survive a power cut, and the stage would run again.
	if err := syncDir(s.dir); err != nil {
		return fmt.Errorf("create stage record: %w", err)
	}
	return nil
}

func (s store) remove(id string) {
	_ = os.Remove(s.recordPath(id))
	s.removeLeftovers(id)
}

// removeLeftovers removes what a stage needs only while it runs: its spec, its processes and its
// log, whose tail the completed record holds.
func (s store) removeLeftovers(id string) {
	_ = os.Remove(s.specPath(id))
	_ = os.Remove(s.pidPath(id))
	_ = os.Remove(s.logPath(id))
}

// ids lists the executions that have a record.
func (s store) ids() ([]string, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("list stages: %w", err)
	}
	var ids []string
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if ok && validID(id) {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// writeTemp writes v as JSON to a new temporary file in dir, synced when durable.
func writeTemp(dir string, v any, durable bool) (string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", fmt.Errorf("encode: %w", err)
	}
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return "", fmt.Errorf("write state: %w", err)
	}
	name := f.Name()
	// Sync: the record must survive the reboot that a Maintenance script may trigger.
	_, err = f.Write(b)
	if err == nil && durable {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(name)
		return "", fmt.Errorf("write state: %w", err)
	}
	return name, nil
}

// writeJSONAtomic replaces path with v as JSON atomically and durably: once it returns, the new
// content survives a power cut.
func writeJSONAtomic(path string, v any) error { return replaceJSON(path, v, true) }

// replaceJSON replaces path with v as JSON atomically; durable syncs the data and the new name.
func replaceJSON(path string, v any, durable bool) error {
	tmp, err := writeTemp(filepath.Dir(path), v, durable)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write state: %w", err)
	}
	if !durable {
		return nil
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	return nil
}

// syncDir makes the names created, replaced or removed in dir durable; a variable so that tests
// can see it called.
var syncDir = func(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync dir: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	return nil
}

// ReadBootID returns the kernel's boot id, which changes on every boot.
func ReadBootID() (string, error) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", fmt.Errorf("read boot id: %w", err)
	}
	return string(bytes.TrimSpace(b)), nil
}

// procStat returns the state (R, S, Z...) and start time (clock ticks since boot, field 22 of
// /proc/PID/stat) of pid, and false when there is no such process.
func procStat(pid int) (state byte, start uint64, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, false
	}
	// The command name may contain spaces and parentheses; fields resume after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); starttime is field 22.
	if len(f) < 20 || len(f[0]) != 1 {
		return 0, 0, false
	}
	start, err = strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0, 0, false
	}
	return f[0][0], start, true
}

// procStart returns the start time (clock ticks since boot) of a live process, and false when
// the process is gone or a zombie.
func procStart(pid int) (uint64, bool) {
	state, start, ok := procStat(pid)
	if !ok || state == 'Z' || state == 'X' {
		return 0, false
	}
	return start, true
}

// alive tells whether pid is still the process that was recorded with start time start. Without
// a start time a pid cannot be told from a process that reused it: it does not count as alive.
func alive(pid int, start uint64) bool {
	if pid <= 0 || start == 0 {
		return false
	}
	got, ok := procStart(pid)
	return ok && got == start
}

// groupAlive tells whether anything of the process group pgid, whose leader started at start,
// still lives. The leader alive with that start time: yes. The leader alive with another start
// time: its pid was reused, which the kernel does only once the group is gone: no. The leader
// gone (or a zombie): a process group id is not reused either while any member lives, so a
// live member of the group (zombies do not count) is one of the leader's own descendants: yes.
// A group recorded without its leader's start time is never trusted.
func groupAlive(pgid int, start uint64) bool {
	if pgid <= 1 || start == 0 {
		return false
	}
	state, got, ok := procStat(pgid)
	if ok && got != start {
		return false
	}
	if ok && state != 'Z' && state != 'X' {
		return true
	}
	return !groupGone(pgid)
}
