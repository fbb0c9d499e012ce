// Package state is kvmctl's local store: one bbolt file holding the inventory, settings, runs and
// their journal. It knows no network and no rules; engines see it through Tx, a small key/value
// interface that an etcd backend can implement later.
//
// The bucket tree:
//
//	meta/
//	  version      -> "1"          schema version; a newer one is refused
//	zones/
//	  <name>       -> Zone (JSON)
//	pods/
//	  <name>       -> Pod (JSON)
//	clusters/
//	  <name>       -> Cluster (JSON)
//	hosts/
//	  <name>       -> Host (JSON)
//	settings/
//	  <key>        -> value as the operator typed it, validated by pkg/settings
//	host_status/
//	  <host name>  -> HostStatus (JSON): the agent's last answer, from `host status`
//	runs/
//	  <run id>     -> a rolling-maintenance run and each host's progress (JSON, pkg/orchestrate)
//	journal/
//	  <stream>/<seq, 8 digits> -> one event of a stream (JSON, pkg/journal); a stream is a rolling
//	                  run (its id) or a standalone maintenance action
//	streams/
//	  <stream>     -> the stream's kind, subject, last sequence number and end (pkg/journal)
//	holds/
//	  cluster/<name>, host/<name> -> who holds the subject now (JSON, pkg/holds)
//	bmc/
//	  cluster/<name>, host/<name> -> BMC settings (JSON): a cluster's defaults, a host's overrides;
//	                  the password is only here
//	notify/
//	  <channel>    -> a notification channel (JSON): email, snmp or webhook; its SMTP password or
//	                  webhook secret is only here
//	aborts/
//	  <run id>     -> "1": `rolling abort` asked the run's live kvmctl to stop (read before
//	                  each of its writes, so kept apart from the run's large record)
//	locks/
//	  <cluster>    -> id of the run that holds the cluster: written by kvmctl before holds, read
//	                  as a hold until that run's resume or abort clears it
//
// A Store is a path, not an open database: every View and Update opens the file, runs one
// transaction and closes it again, so no command holds the file while it waits on the network
// and a second kvmctl can always read.
package state

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/kvmctl/kvmctl/pkg/errs"
	berrors "go.etcd.io/bbolt/errors"
)

// SchemaVersion is the layout of the bucket tree this build reads and writes.
const SchemaVersion = 1

// Bucket names, declared once.
const (
	BucketMeta     = "meta"
	BucketZones    = "zones"
	BucketPods     = "pods"
	BucketClusters = "clusters"
	BucketHosts    = "hosts"
	BucketSettings = "settings"
	BucketRuns     = "runs"
	BucketJournal  = "journal"
	BucketLocks    = "locks"
	BucketStreams  = "streams"
	BucketHolds    = "holds"
	BucketAborts   = "aborts"
)

// coreBuckets are the buckets of schema version 1: a file without one of them is damaged.
var coreBuckets = []string{BucketMeta, BucketZones, BucketPods, BucketClusters, BucketHosts, BucketSettings, BucketHostStatus,
	BucketRuns, BucketJournal, BucketLocks}

// Buckets lists every top-level bucket of the current schema, created by Create. Those beyond
// coreBuckets were added later, without a version bump: a file without them gets them on its
// next write.
var Buckets = append(append([]string{}, coreBuckets...), BucketStreams, BucketHolds, BucketAborts, BucketBMC, BucketNotify, BucketHA, BucketVMDefs)

const keyVersion = "version"

// DefaultLockTimeout is how long Open waits for another kvmctl to release the file.
const DefaultLockTimeout = 3 * time.Second

// ErrNotInitialized is returned when the state file does not exist yet.
var ErrNotInitialized = errors.New("state file not initialized")

// ErrInUse is returned when another process holds the state file longer than the lock timeout.
var ErrInUse = errors.New("the state file is in use by another kvmctl")

// ErrNotFound is returned by Get when a key is absent.
var ErrNotFound = errors.New("not found")

// ErrDamaged is returned when the state file's structure is broken (truncated, a page
// overwritten, a core bucket gone): no command can trust it, every command says so.
var ErrDamaged = errors.New("the state file is damaged")

// damaged says that the file at path is damaged, what was seen, and what to do.
func damaged(path, detail string) error {
	return fmt.Errorf("%w: %s (%s): restore it from a backup (`kvmctl state backup FILE` makes one while it is sound; `kvmctl state check` says what is wrong)",
		ErrDamaged, path, detail)
}

// guard runs fn with memory faults turned into panics and recovers every panic into a damage
// error: bbolt reads the file through mmap, and a truncated or overwritten file makes it fault
// (SIGBUS) or fail its own assertions. No command may die of a damaged file.
func guard(path string, fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			err = damaged(path, firstLine(fmt.Sprint(p)))
		}
	}()
	return fn()
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// Store is a handle on the state file at Path; it holds no open file between operations.
type Store struct {
	Path        string
	LockTimeout time.Duration

	// mu orders this process's own transactions: bbolt's file lock is per open file, so two
	// goroutines of one kvmctl would otherwise wait on each other through flock's retry loop.
	mu sync.RWMutex
}

// New returns a Store for path. It does not touch the file: see Create, View and Update.
func New(path string) *Store {
	return &Store{Path: path, LockTimeout: DefaultLockTimeout}
}

// Exists reports whether the state file is there.
func (s *Store) Exists() bool {
	_, err := os.Stat(s.Path)
	return err == nil
}

// Create makes the state file (mode 0600, parent directory 0700 when it is created) with every
// bucket and the schema version. It reports false, and changes nothing, when the file exists.
func (s *Store) Create() (bool, error) {
	if s.Exists() {
		// Opening checks it is a state file we can read, so a stray file is not silently kept.
		return false, s.View(func(Tx) error { return nil })
	}
	if err := os.MkdirAll(filepath.Dir(s.Path), 0o700); err != nil {
		return false, fmt.Errorf("create state directory: %w", err)
	}
	db, err := bolt.Open(s.Path, 0o600, &bolt.Options{Timeout: s.timeout()})
	if err != nil {
		return false, fmt.Errorf("create state file %s: %w", s.Path, err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range Buckets {
			if _, err := tx.CreateBucketIfNotExists([]byte(b)); err != nil {
				return err
			}
		}
		return tx.Bucket([]byte(BucketMeta)).Put([]byte(keyVersion), []byte(strconv.Itoa(SchemaVersion)))
	})
	if err != nil {
		return false, fmt.Errorf("create state file %s: %w", s.Path, err)
	}
	// bolt.Open honours the mode only for a new file; make sure umask did not widen it.
	if err := os.Chmod(s.Path, 0o600); err != nil {
		return false, fmt.Errorf("chmod state file: %w", err)
	}
	return true, nil
}

// View runs fn in a read-only transaction on a freshly opened file.
func (s *Store) View(fn func(Tx) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	db, err := s.open(true)
	if err != nil {
		return err
	}
	defer db.Close()
	return guard(s.Path, func() error { return db.View(func(tx *bolt.Tx) error { return fn(boltTx{tx}) }) })
}

// Update runs fn in a read-write transaction on a freshly opened file; an error from fn rolls
// back everything fn wrote.
func (s *Store) Update(fn func(Tx) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	db, err := s.open(false)
	if err != nil {
		return err
	}
	defer db.Close()
	return guard(s.Path, func() error { return db.Update(func(tx *bolt.Tx) error { return fn(boltTx{tx}) }) })
}

func (s *Store) timeout() time.Duration {
	if s.LockTimeout <= 0 {
		return DefaultLockTimeout
	}
	return s.LockTimeout
}

func (s *Store) open(readOnly bool) (*bolt.DB, error) {
	fi, err := os.Stat(s.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: no state file at %s: run `kvmctl init` first, or point --state/KVMCTL_STATE at an existing one", ErrNotInitialized, s.Path)
	}
	if err != nil {
		return nil, fmt.Errorf("open state: %w", err)
	}
	if fi.IsDir() {
		return nil, errs.Refusedf("open state: %s is a directory, not a state file: point --state at the file", s.Path)
	}
	if fi.Size() == 0 {
		// bbolt would quietly turn an empty file into a database; it is not ours to take.
		return nil, errs.Refusedf("%s is not a kvmctl state file (it is empty): point --state at the right file, or remove it and run `kvmctl init`", s.Path)
	}
	if !readOnly {
		// A writer loads the free list at open, from pages a truncated file no longer has:
		// the size is checked first, by a reader (an open without a transaction costs 20 µs).
		db, err := s.open(true)
		if err != nil {
			return nil, err
		}
		db.Close()
	}
	var db *bolt.DB
	err = guard(s.Path, func() (err error) {
		db, err = bolt.Open(s.Path, 0o600, &bolt.Options{Timeout: s.timeout(), ReadOnly: readOnly})
		return err
	})
	switch {
	case errors.Is(err, ErrDamaged):
		return nil, err
	case errors.Is(err, berrors.ErrTimeout):
		return nil, fmt.Errorf("%w (%s): wait for it to finish and try again", ErrInUse, s.Path)
	case errors.Is(err, fs.ErrPermission):
		return nil, fmt.Errorf("open state %s: %w: run kvmctl as the user that owns it", s.Path, err)
	case errors.Is(err, berrors.ErrChecksum):
		// Both meta pages are bbolt's but neither adds up: the file was overwritten.
		return nil, damaged(s.Path, err.Error())
	case err != nil:
		// bbolt reports a foreign file in several ways (invalid, version mismatch, too small, ...).
		return nil, errs.Refusedf("%s is not a kvmctl state file (%v): point --state at the right file", s.Path, err)
	}
	if err := guard(s.Path, func() error { return checkFile(db, s.Path, readOnly) }); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// checkFile checks, before any caller reads, what is cheap to check: the file holds every page
// its meta page counts (a truncated file faults when those are read), the schema version, the
// core buckets. It adds the buckets later versions added.
func checkFile(db *bolt.DB, path string, readOnly bool) error {
	var need int64
	if err := db.View(func(tx *bolt.Tx) error { need = tx.Size(); return nil }); err != nil {
		return err
	}
	// Sized now, under bbolt's file lock: a writer in another process cannot grow the file
	// between this and the meta page read above (a size taken before the open could be older).
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("open state: %w", err)
	}
	if size := fi.Size(); size < need {
		return damaged(path, fmt.Sprintf("truncated: it has %d bytes, its pages reach %d", size, need))
	}
	return checkVersion(db, path, readOnly)
}

func checkVersion(db *bolt.DB, path string, readOnly bool) error {
	var v int
	var missing, missingCore []string
	err := db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(BucketMeta))
		if b == nil {
			for _, name := range coreBuckets {
				if tx.Bucket([]byte(name)) != nil {
					// kvmctl's buckets without its meta bucket: the root page was overwritten.
					return damaged(path, "its meta bucket is missing")
				}
			}
			return errs.Refusedf("%s is not a kvmctl state file (no meta bucket): point --state at the right file", path)
		}
		for _, name := range Buckets {
			if tx.Bucket([]byte(name)) == nil {
				missing = append(missing, name)
				if slices.Contains(coreBuckets, name) {
					missingCore = append(missingCore, name)
				}
			}
		}
		raw := b.Get([]byte(keyVersion))
		n, err := strconv.Atoi(string(raw))
		if err != nil || n <= 0 {
			return errs.Refusedf("%s has an unreadable schema version %q: restore it from a backup", path, raw)
		}
		v = n
		return nil
	})
	if err != nil {
		return err
	}
	if v > SchemaVersion {
		return errs.Refusedf("%s has schema version %d, this kvmctl knows up to %d: upgrade kvmctl", path, v, SchemaVersion)
	}
	if len(missingCore) > 0 {
		// Never recreated: an empty hosts bucket would read as a fleet with no hosts.
		return damaged(path, "missing "+strings.Join(missingCore, ", "))
	}
	if readOnly || len(missing) == 0 {
		return nil
	}
	// Buckets added by later versions appear here without a version bump: they are additive.
	// Only then is there a write (and an fsync) before the caller's own transaction.
	return db.Update(func(tx *bolt.Tx) error {
		for _, b := range missing {
			if _, err := tx.CreateBucketIfNotExists([]byte(b)); err != nil {
				return err
			}
		}
		return nil
	})
}
