package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// backends returns every implementation of DB, fresh: the suite below runs on each, so that an
// engine tested on one behaves the same on the other.
func backends(t *testing.T) map[string]DB {
	t.Helper()
	file := New(filepath.Join(t.TempDir(), "state.db"))
	if _, err := file.Create(); err != nil {
		t.Fatal(err)
	}
	return map[string]DB{"bbolt": file, "memory": NewMemory()}
}

func TestBackendsScanSeeksAndStopsAtThePrefix(t *testing.T) {
	for name, db := range backends(t) {
		t.Run(name, func(t *testing.T) {
			err := db.Update(func(tx Tx) error {
				for _, k := range []string{"a/00000001", "a/00000002", "a/00000003", "ab/00000001", "b/00000001", "a"} {
					if err := tx.Put(BucketJournal, k, []byte("v"+k)); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			scan := func(prefix, after string) (keys []string) {
				_ = db.View(func(tx Tx) error {
					return tx.Scan(BucketJournal, prefix, after, func(k string, v []byte) error {
						if string(v) != "v"+k {
							t.Errorf("value of %s = %q", k, v)
						}
						keys = append(keys, k)
						return nil
					})
				})
				return keys
			}
			for _, c := range []struct {
				prefix, after string
				want          []string
			}{
				{"a/", "", []string{"a/00000001", "a/00000002", "a/00000003"}},
				{"a/", "a/00000001", []string{"a/00000002", "a/00000003"}},
				{"a/", "a/00000003", nil},
				{"a/", "a/0", []string{"a/00000001", "a/00000002", "a/00000003"}},
				{"b/", "", []string{"b/00000001"}},
				{"c/", "", nil},
				{"", "ab/00000001", []string{"b/00000001"}},
			} {
				if got := scan(c.prefix, c.after); !cmp.Equal(got, c.want) {
					t.Errorf("Scan(%q, %q) = %v, want %v", c.prefix, c.after, got, c.want)
				}
			}
			_ = db.View(func(tx Tx) error {
				for prefix, want := range map[string]string{"a/": "a/00000003", "b/": "b/00000001", "": "b/00000001", "ab/": "ab/00000001", "zz": ""} {
					k, v, ok, err := tx.Last(BucketJournal, prefix)
					if err != nil || k != want || ok != (want != "") || (ok && string(v) != "v"+k) {
						t.Errorf("Last(%q) = %q, %q, %v, %v; want %q", prefix, k, v, ok, err, want)
					}
				}
				return nil
			})
			// An error in fn stops the scan and is returned.
			stop := errors.New("stop")
			n := 0
			err = db.View(func(tx Tx) error {
				return tx.Scan(BucketJournal, "a/", "", func(string, []byte) error { n++; return stop })
			})
			if !errors.Is(err, stop) || n != 1 {
				t.Errorf("Scan with a failing fn: %v after %d keys", err, n)
			}
		})
	}
}

func TestBackendsRollBackAFailedUpdate(t *testing.T) {
	for name, db := range backends(t) {
		t.Run(name, func(t *testing.T) {
			if err := db.Update(func(tx Tx) error { return tx.Put(BucketLocks, "c1", []byte("r1")) }); err != nil {
				t.Fatal(err)
			}
			boom := errors.New("boom")
			err := db.Update(func(tx Tx) error {
				if err := tx.Put(BucketLocks, "c2", []byte("r2")); err != nil {
					return err
				}
				if err := tx.Delete(BucketLocks, "c1"); err != nil {
					return err
				}
				// The transaction reads its own writes.
				if _, err := tx.Get(BucketLocks, "c1"); !IsNotFound(err) {
					return fmt.Errorf("deleted key still read: %v", err)
				}
				if v, err := tx.Get(BucketLocks, "c2"); err != nil || string(v) != "r2" {
					return fmt.Errorf("own write not read: %q %v", v, err)
				}
				return boom
			})
			if !errors.Is(err, boom) {
				t.Fatalf("Update = %v", err)
			}
			var keys []string
			_ = db.View(func(tx Tx) error {
				return tx.ForEach(BucketLocks, func(k string, v []byte) error { keys = append(keys, k+"="+string(v)); return nil })
			})
			if !cmp.Equal(keys, []string{"c1=r1"}) {
				t.Errorf("after a failed update: %v, want c1=r1 only", keys)
			}
			if err := db.View(func(tx Tx) error { return tx.Put(BucketLocks, "x", nil) }); err == nil {
				t.Error("a write in a read-only transaction succeeded")
			}
		})
	}
}

// A record written by a newer kvmctl keeps the fields this one does not know when it is read and
// written back.
func TestUnknownFieldsSurviveARewrite(t *testing.T) {
	for name, db := range backends(t) {
		t.Run(name, func(t *testing.T) {
			raw := `{"name":"h1","zone":"z1","pod":"p1","cluster":"c1","address":"10.0.0.1:9250","tags":["a"],"ssh":{},` +
				`"resource_state":"Enabled","lab":true,"bmc":{"address":"10.0.1.1","user":"admin"}}`
			if err := db.Update(func(tx Tx) error { return tx.Put(BucketHosts, "h1", []byte(raw)) }); err != nil {
				t.Fatal(err)
			}
			err := db.Update(func(tx Tx) error {
				h, err := GetHost(tx, "h1")
				if err != nil {
					return err
				}
				h.Tags = []string{"a", "b"}
				return PutHost(tx, h)
			})
			if err != nil {
				t.Fatal(err)
			}
			var got map[string]any
			_ = db.View(func(tx Tx) error {
				b, err := tx.Get(BucketHosts, "h1")
				if err == nil {
					err = json.Unmarshal(b, &got)
				}
				return err
			})
			if got["lab"] != true || got["bmc"] == nil || len(got["tags"].([]any)) != 2 {
				t.Errorf("after a rewrite: %v; want lab and bmc kept and the new tags", got)
			}
		})
	}
}
