package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	bolt "go.etcd.io/bbolt"

	"github.com/kvmctl/kvmctl/pkg/errs"
)

// jsonBuckets hold one JSON document per key; the others hold plain values.
var jsonBuckets = []string{BucketZones, BucketPods, BucketClusters, BucketHosts, BucketHostStatus, BucketRuns,
	BucketJournal, BucketStreams, BucketHolds, BucketBMC, BucketNotify, BucketHA, BucketVMDefs}

// Report is what Check found in a state file.
type Report struct {
	Path string `json:"path"`
	Size int64  `json:"size"`
	// Keys counts the records of each bucket.
	Keys map[string]int `json:"keys"`
	// Problems lists what is wrong with the file's structure (pages, buckets, schema).
	Problems []string `json:"problems"`
	// Records lists the records that cannot be read; the rest of the file can.
	Records []string `json:"unreadable_records"`
}

// Sound reports whether Check found nothing wrong.
func (r Report) Sound() bool { return len(r.Problems) == 0 && len(r.Records) == 0 }

// Check reads the whole file: bbolt's own consistency check of every page (nothing unreachable,
// nothing freed twice), the schema, every bucket, and every record that must be JSON. It never
// writes (not even the buckets a later version adds). An error is returned only when the file
// cannot be checked at all (missing, in use, not a state file); damage is a problem in the report.
func (s *Store) Check() (Report, error) {
	r := Report{Path: s.Path, Keys: map[string]int{}, Problems: []string{}, Records: []string{}}
	fi, err := os.Stat(s.Path)
	if err == nil {
		r.Size = fi.Size()
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	db, err := s.open(true)
	if errors.Is(err, ErrDamaged) {
		r.Problems = append(r.Problems, err.Error())
		return r, nil
	}
	if err != nil {
		return r, err
	}
	defer db.Close()
	err = guard(s.Path, func() error {
		return db.View(func(tx *bolt.Tx) error {
			for cerr := range tx.Check() {
				r.Problems = append(r.Problems, "structure: "+cerr.Error())
			}
			return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
				bucket := string(name)
				isJSON := false
				for _, j := range jsonBuckets {
					isJSON = isJSON || j == bucket
				}
				return b.ForEach(func(k, v []byte) error {
					r.Keys[bucket]++
					if v != nil && isJSON && !json.Valid(v) {
						r.Records = append(r.Records, fmt.Sprintf("record %s/%q is not valid JSON", bucket, k))
					}
					return nil
				})
			})
		})
	})
	if err != nil {
		r.Problems = append(r.Problems, err.Error())
	}
	sort.Strings(r.Problems)
	sort.Strings(r.Records)
	return r, nil
}

// Backup writes a consistent copy of the state to dst, mode 0600, while other kvmctl processes
// may read it, and checks the copy. dst must not exist. A file whose structure is damaged is not
// copied; one with unreadable records is (they are copied as they are, and Check lists them).
func (s *Store) Backup(dst string) (int64, error) {
	if _, err := os.Lstat(dst); err == nil {
		return 0, errs.Refusedf("%s exists: give a new file name (the backup never overwrites)", dst)
	}
	abs, err := filepath.Abs(dst)
	if err != nil {
		return 0, err
	}
	if src, err := filepath.Abs(s.Path); err == nil && src == abs {
		return 0, errs.Refusedf("%s is the state file itself: give another file name", dst)
	}
	tmp, err := os.CreateTemp(filepath.Dir(abs), "."+filepath.Base(abs)+".*")
	if err != nil {
		return 0, fmt.Errorf("backup: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return 0, fmt.Errorf("backup: %w", err)
	}
	var n int64
	s.mu.RLock()
	db, err := s.open(true)
	if err == nil {
		err = guard(s.Path, func() error {
			return db.View(func(tx *bolt.Tx) (err error) { n, err = tx.WriteTo(tmp); return err })
		})
		db.Close()
	}
	s.mu.RUnlock()
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("backup of %s: %w", s.Path, err)
	}
	rep, err := (&Store{Path: tmp.Name(), LockTimeout: s.LockTimeout}).Check()
	if err != nil || len(rep.Problems) > 0 {
		return 0, fmt.Errorf("backup of %s: the copy does not check out (%v %v): the state file was not copied", s.Path, err, rep.Problems)
	}
	// Link, not rename: a file created at dst meanwhile is never replaced.
	if err := os.Link(tmp.Name(), abs); err != nil {
		return 0, fmt.Errorf("backup: %w", err)
	}
	return n, nil
}
