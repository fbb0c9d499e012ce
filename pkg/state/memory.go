package state

import (
	"fmt"
	"sort"
	"strings"
	"sync"
)

// Memory is a store kept in memory, with the transactions of the bbolt file: a View sees one
// state, an Update's writes are all kept or, when it fails, all dropped. Engines' unit tests use
// it; kvmctl itself uses the file.
type Memory struct {
	mu      sync.RWMutex
	buckets map[string]map[string][]byte
}

var _ DB = (*Memory)(nil)

// NewMemory returns an empty in-memory store with every bucket and the schema version.
func NewMemory() *Memory {
	m := &Memory{buckets: map[string]map[string][]byte{}}
	for _, b := range Buckets {
		m.buckets[b] = map[string][]byte{}
	}
	m.buckets[BucketMeta][keyVersion] = []byte(fmt.Sprint(SchemaVersion))
	return m
}

// View runs fn on the current state.
func (m *Memory) View(fn func(Tx) error) error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return fn(&memTx{base: m.buckets})
}

// Update runs fn and keeps its writes only when it returns nil.
func (m *Memory) Update(fn func(Tx) error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	tx := &memTx{base: m.buckets, writable: true, dirty: map[string]map[string][]byte{}}
	if err := fn(tx); err != nil {
		return err
	}
	for b, keys := range tx.dirty {
		if m.buckets[b] == nil {
			m.buckets[b] = map[string][]byte{}
		}
		for k, v := range keys {
			if v == nil {
				delete(m.buckets[b], k)
			} else {
				m.buckets[b][k] = v
			}
		}
	}
	return nil
}

// memTx reads through its own writes (dirty; a nil value is a deletion) to the base.
type memTx struct {
	base     map[string]map[string][]byte
	dirty    map[string]map[string][]byte
	writable bool
}

func (t *memTx) Get(bucket, key string) ([]byte, error) {
	if v, ok := t.dirty[bucket][key]; ok {
		if v == nil {
			return nil, ErrNotFound
		}
		return append([]byte(nil), v...), nil
	}
	v, ok := t.base[bucket][key]
	if !ok {
		return nil, ErrNotFound
	}
	return append([]byte(nil), v...), nil
}

func (t *memTx) set(bucket, key string, v []byte) error {
	if !t.writable {
		return fmt.Errorf("put %s/%s: read-only transaction", bucket, key)
	}
	if t.dirty[bucket] == nil {
		t.dirty[bucket] = map[string][]byte{}
	}
	t.dirty[bucket][key] = v
	return nil
}

func (t *memTx) Put(bucket, key string, value []byte) error {
	if key == "" {
		return fmt.Errorf("put %s: empty key", bucket)
	}
	return t.set(bucket, key, append([]byte{}, value...))
}

func (t *memTx) Delete(bucket, key string) error {
	if !t.writable {
		return fmt.Errorf("delete %s/%s: read-only transaction", bucket, key)
	}
	if _, err := t.Get(bucket, key); err != nil {
		return nil
	}
	return t.set(bucket, key, nil)
}

// keys returns the live keys of bucket, sorted.
func (t *memTx) keys(bucket string) []string {
	seen := map[string]bool{}
	var out []string
	for k := range t.base[bucket] {
		if v, ok := t.dirty[bucket][k]; ok && v == nil {
			continue
		}
		seen[k] = true
		out = append(out, k)
	}
	for k, v := range t.dirty[bucket] {
		if v != nil && !seen[k] {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

func (t *memTx) ForEach(bucket string, fn func(string, []byte) error) error {
	return t.Scan(bucket, "", "", fn)
}

func (t *memTx) Scan(bucket, prefix, after string, fn func(string, []byte) error) error {
	for _, k := range t.keys(bucket) {
		if !strings.HasPrefix(k, prefix) || (after != "" && k <= after) {
			continue
		}
		v, err := t.Get(bucket, k)
		if err != nil {
			return err
		}
		if err := fn(k, v); err != nil {
			return err
		}
	}
	return nil
}

func (t *memTx) Last(bucket, prefix string) (string, []byte, bool, error) {
	keys := t.keys(bucket)
	for i := len(keys) - 1; i >= 0; i-- {
		if strings.HasPrefix(keys[i], prefix) {
			v, err := t.Get(bucket, keys[i])
			return keys[i], v, err == nil, err
		}
	}
	return "", nil, false, nil
}
