package state

import (
	"encoding/json"
	"fmt"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// Tx is one transaction over flat buckets of keys. It is all an engine sees of the store, so a
// backend other than bbolt (etcd) can implement it.
type Tx interface {
	// Get returns the value of key in bucket, or ErrNotFound.
	Get(bucket, key string) ([]byte, error)
	// Put writes key in bucket; it fails in a read-only transaction.
	Put(bucket, key string, value []byte) error
	// Delete removes key from bucket; removing an absent key is not an error.
	Delete(bucket, key string) error
	// ForEach calls fn for every key of bucket in byte order, stopping at the first error.
	ForEach(bucket string, fn func(key string, value []byte) error) error
	// Scan calls fn, in byte order, for the keys of bucket that start with prefix and sort
	// after after ("" = from the first), stopping at the first error. It seeks: the keys before
	// are not read.
	Scan(bucket, prefix, after string, fn func(key string, value []byte) error) error
	// Last returns the greatest key of bucket that starts with prefix, and its value; ok is
	// false when there is none.
	Last(bucket, prefix string) (key string, value []byte, ok bool, err error)
}

// DB is a store as its users see it: transactions, each on a freshly opened backend. The bbolt
// file (Store) and the in-memory store (Memory) implement it; etcd will.
type DB interface {
	View(func(Tx) error) error
	Update(func(Tx) error) error
}

type boltTx struct{ tx *bolt.Tx }

func (t boltTx) bucket(name string) (*bolt.Bucket, error) {
	b := t.tx.Bucket([]byte(name))
	if b == nil {
		if !t.tx.Writable() {
			return nil, nil
		}
		return t.tx.CreateBucketIfNotExists([]byte(name))
	}
	return b, nil
}

func (t boltTx) Get(bucket, key string) ([]byte, error) {
	b, err := t.bucket(bucket)
	if err != nil {
		return nil, err
	}
	if b == nil {
		return nil, ErrNotFound
	}
	v := b.Get([]byte(key))
	if v == nil {
		return nil, ErrNotFound
	}
	// bbolt's slices die with the transaction; callers may keep theirs.
	return append([]byte(nil), v...), nil
}

func (t boltTx) Put(bucket, key string, value []byte) error {
	b, err := t.bucket(bucket)
	if err != nil {
		return err
	}
	if b == nil {
		return fmt.Errorf("put %s/%s: read-only transaction", bucket, key)
	}
	return b.Put([]byte(key), value)
}

func (t boltTx) Delete(bucket, key string) error {
	b, err := t.bucket(bucket)
	if err != nil || b == nil {
		return err
	}
	return b.Delete([]byte(key))
}

func (t boltTx) ForEach(bucket string, fn func(string, []byte) error) error {
	b, err := t.bucket(bucket)
	if err != nil || b == nil {
		return err
	}
	return b.ForEach(func(k, v []byte) error {
		if v == nil { // nested bucket: not part of the flat model
			return nil
		}
		return fn(string(k), append([]byte(nil), v...))
	})
}

func (t boltTx) Scan(bucket, prefix, after string, fn func(string, []byte) error) error {
	b, err := t.bucket(bucket)
	if err != nil || b == nil {
		return err
	}
	c := b.Cursor()
	start := prefix
	if after > start {
		start = after
	}
	k, v := c.Seek([]byte(start))
	if after != "" && k != nil && string(k) == after {
		k, v = c.Next()
	}
	for ; k != nil && strings.HasPrefix(string(k), prefix); k, v = c.Next() {
		if v == nil {
			continue
		}
		if err := fn(string(k), append([]byte(nil), v...)); err != nil {
			return err
		}
	}
	return nil
}

func (t boltTx) Last(bucket, prefix string) (string, []byte, bool, error) {
	b, err := t.bucket(bucket)
	if err != nil || b == nil {
		return "", nil, false, err
	}
	c := b.Cursor()
	var k, v []byte
	if end := prefixEnd(prefix); end == "" {
		k, v = c.Last()
	} else if k, _ = c.Seek([]byte(end)); k == nil {
		k, v = c.Last()
	} else {
		k, v = c.Prev()
	}
	for ; k != nil && strings.HasPrefix(string(k), prefix); k, v = c.Prev() {
		if v != nil {
			return string(k), append([]byte(nil), v...), true, nil
		}
	}
	return "", nil, false, nil
}

// prefixEnd is the smallest key greater than every key starting with prefix ("" when none is).
func prefixEnd(prefix string) string {
	b := []byte(prefix)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1])
		}
	}
	return ""
}

// GetJSON decodes the JSON value of key in bucket into v.
func GetJSON(tx Tx, bucket, key string, v any) error {
	raw, err := tx.Get(bucket, key)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return unreadable(bucket, key, err)
	}
	return nil
}

// unreadable says that the record bucket/key does not decode: the file is damaged (or was
// written by hand).
func unreadable(bucket, key string, err error) error {
	return fmt.Errorf("%w: record %s/%q is unreadable (%v): restore the state file from a backup, or remove the record; `kvmctl state check` lists every such record",
		ErrDamaged, bucket, key, err)
}

// PutJSON stores v as JSON under key in bucket.
func PutJSON(tx Tx, bucket, key string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s/%s: %w", bucket, key, err)
	}
	return tx.Put(bucket, key, raw)
}

// ListJSON decodes every value of bucket, in key order.
func ListJSON[T any](tx Tx, bucket string) ([]T, error) {
	var out []T
	err := tx.ForEach(bucket, func(key string, raw []byte) error {
		var v T
		if err := json.Unmarshal(raw, &v); err != nil {
			return unreadable(bucket, key, err)
		}
		out = append(out, v)
		return nil
	})
	return out, err
}
