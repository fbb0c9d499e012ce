package state

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	bolt "go.etcd.io/bbolt"

	"github.com/kvmctl/kvmctl/pkg/errs"
)

func newStore(t *testing.T) *Store {
	t.Helper()
	s := New(filepath.Join(t.TempDir(), "sub", "state.db"))
	created, err := s.Create()
	if err != nil || !created {
		t.Fatalf("Create = %v, %v", created, err)
	}
	return s
}

func TestCreateModeAndVersion(t *testing.T) {
	s := newStore(t)
	fi, err := os.Stat(s.Path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode = %v, want 0600", fi.Mode().Perm())
	}
	di, _ := os.Stat(filepath.Dir(s.Path))
	if di.Mode().Perm() != 0o700 {
		t.Errorf("state dir mode = %v, want 0700", di.Mode().Perm())
	}
	err = s.View(func(tx Tx) error {
		v, err := tx.Get(BucketMeta, "version")
		if string(v) != "1" {
			t.Errorf("meta/version = %q, want 1", v)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	created, err := s.Create()
	if err != nil || created {
		t.Errorf("second Create = %v, %v; want false, nil", created, err)
	}
}

func TestRoundTrip(t *testing.T) {
	s := newStore(t)
	h := Host{Name: "h1", Zone: "z1", Pod: "p1", Cluster: "c1", Address: "10.0.0.1:9250",
		Tags: []string{"ssd"}, SSH: SSH{User: "root", Port: 22, KeyFile: "/k"}, ResourceState: Enabled}
	c := Cluster{Name: "c1", Pod: "p1", Zone: "z1", ResourceState: Disabled}
	if err := s.Update(func(tx Tx) error {
		if err := PutHost(tx, h); err != nil {
			return err
		}
		return PutCluster(tx, c)
	}); err != nil {
		t.Fatal(err)
	}
	var gotH Host
	var gotC []Cluster
	if err := s.View(func(tx Tx) (err error) {
		if gotH, err = GetHost(tx, "h1"); err != nil {
			return err
		}
		gotC, err = Clusters(tx)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(h, gotH); d != "" {
		t.Errorf("host round trip (-want +got):\n%s", d)
	}
	if d := cmp.Diff([]Cluster{c}, gotC); d != "" {
		t.Errorf("clusters (-want +got):\n%s", d)
	}
	err := s.View(func(tx Tx) error { _, err := GetHost(tx, "nope"); return err })
	if !IsNotFound(err) {
		t.Errorf("GetHost(nope) = %v, want ErrNotFound", err)
	}
}

func TestUpdateErrorRollsBack(t *testing.T) {
	s := newStore(t)
	boom := errors.New("boom")
	err := s.Update(func(tx Tx) error {
		if err := PutZone(tx, Zone{Name: "z1"}); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update = %v, want boom", err)
	}
	_ = s.View(func(tx Tx) error {
		zs, _ := Zones(tx)
		if len(zs) != 0 {
			t.Errorf("zones after rolled back update = %v, want none", zs)
		}
		return nil
	})
}

func TestNotInitialized(t *testing.T) {
	s := New(filepath.Join(t.TempDir(), "missing.db"))
	err := s.View(func(Tx) error { return nil })
	if !errors.Is(err, ErrNotInitialized) || !strings.Contains(err.Error(), "kvmctl init") {
		t.Errorf("View on missing file = %v, want ErrNotInitialized naming kvmctl init", err)
	}
	if _, statErr := os.Stat(s.Path); !os.IsNotExist(statErr) {
		t.Errorf("View created the file")
	}
}

func TestNewerSchemaRefused(t *testing.T) {
	s := newStore(t)
	db, err := bolt.Open(s.Path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = db.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte(BucketMeta)).Put([]byte("version"), []byte("7")) })
	db.Close()
	for name, op := range map[string]func(func(Tx) error) error{"view": s.View, "update": s.Update} {
		err := op(func(Tx) error { return nil })
		if err == nil || !strings.Contains(err.Error(), "schema version 7") || !strings.Contains(err.Error(), "upgrade kvmctl") {
			t.Errorf("%s on version 7 = %v, want a refusal naming the version and the fix", name, err)
		}
	}
}

func TestLockedFile(t *testing.T) {
	s := newStore(t)
	s.LockTimeout = 100 * time.Millisecond
	db, err := bolt.Open(s.Path, 0o600, nil) // an exclusive lock, as a writing kvmctl holds it
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = s.Update(func(Tx) error { return nil })
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "in use by another kvmctl") {
		t.Errorf("Update on locked file = %v, want ErrInUse", err)
	}
}

func TestNotABoltFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	if err := os.WriteFile(path, []byte(strings.Repeat("not a database\n", 500)), 0o600); err != nil {
		t.Fatal(err)
	}
	s := New(path)
	err := s.View(func(Tx) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "is not a kvmctl state file") {
		t.Errorf("View on text file = %v, want 'is not a kvmctl state file'", err)
	}
	if _, err := s.Create(); err == nil {
		t.Errorf("Create over a text file succeeded, want refusal")
	}
}

func TestReadersDoNotBlockEachOther(t *testing.T) {
	s := newStore(t)
	s.LockTimeout = 100 * time.Millisecond
	err := s.View(func(Tx) error {
		return s.View(func(Tx) error { return nil })
	})
	if err != nil {
		t.Errorf("nested View = %v, want two readers at once", err)
	}
}

// A file written before a bucket existed gets it on its next write, without a version bump.
func TestMissingBucketAddedOnUpdate(t *testing.T) {
	s := newStore(t)
	db, err := bolt.Open(s.Path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = db.Update(func(tx *bolt.Tx) error { return tx.DeleteBucket([]byte(BucketHolds)) })
	db.Close()
	if err := s.View(func(tx Tx) error { return tx.ForEach(BucketHolds, func(string, []byte) error { return nil }) }); err != nil {
		t.Fatalf("reading a missing bucket = %v, want nothing to read", err)
	}
	if err := s.Update(func(tx Tx) error { return nil }); err != nil {
		t.Fatal(err)
	}
	db, err = bolt.Open(s.Path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_ = db.View(func(tx *bolt.Tx) error {
		if tx.Bucket([]byte(BucketHolds)) == nil {
			t.Errorf("bucket %s not recreated by the first write", BucketHolds)
		}
		return nil
	})
}

// A bucket every state file has had since version 1 is never recreated when it is missing: an
// empty hosts bucket would read as a fleet without hosts. The file is reported damaged.
func TestMissingCoreBucketIsDamage(t *testing.T) {
	s := newStore(t)
	db, err := bolt.Open(s.Path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = db.Update(func(tx *bolt.Tx) error { return tx.DeleteBucket([]byte(BucketHosts)) })
	db.Close()
	for name, op := range map[string]func(func(Tx) error) error{"View": s.View, "Update": s.Update} {
		err := op(func(Tx) error { return nil })
		if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "missing hosts") || errs.IsRefused(err) {
			t.Errorf("%s = %v, want damage naming the hosts bucket (exit 1, not a refusal)", name, err)
		}
	}
	db, err = bolt.Open(s.Path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_ = db.View(func(tx *bolt.Tx) error {
		if tx.Bucket([]byte(BucketHosts)) != nil {
			t.Error("the missing hosts bucket was recreated")
		}
		return nil
	})
}

// Truncated files are damage, found before bbolt reads a page past the end (which would be a
// SIGBUS): for readers and writers, at several sizes.
func TestTruncatedFileIsDamage(t *testing.T) {
	s := newStore(t)
	_ = s.Update(func(tx Tx) error {
		for i := range 300 {
			if err := tx.Put(BucketJournal, fmt.Sprintf("r/%08d", i), bytes.Repeat([]byte("x"), 200)); err != nil {
				return err
			}
		}
		return nil
	})
	whole, err := os.ReadFile(s.Path)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{8192, 12288, len(whole) / 2} {
		if err := os.WriteFile(s.Path, whole[:n], 0o600); err != nil {
			t.Fatal(err)
		}
		for name, op := range map[string]func(func(Tx) error) error{"View": s.View, "Update": s.Update} {
			err := op(func(tx Tx) error { return tx.ForEach(BucketJournal, func(string, []byte) error { return nil }) })
			if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "truncated") {
				t.Errorf("%d bytes of %d: %s = %v, want damage (truncated)", n, len(whole), name, err)
			}
		}
	}
}
