package state

import (
	"path/filepath"
	"testing"
)

// BenchmarkUpdate is the cost of one journaled step: open the file, write a key, sync, close.
func BenchmarkUpdate(b *testing.B) {
	s := New(filepath.Join(b.TempDir(), "state.db"))
	if _, err := s.Create(); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < b.N; i++ {
		if err := s.Update(func(tx Tx) error { return tx.Put(BucketRuns, "r", []byte("x")) }); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkView is the cost of one read: open the file read-only, read a key, close.
func BenchmarkView(b *testing.B) {
	s := New(filepath.Join(b.TempDir(), "state.db"))
	if _, err := s.Create(); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < b.N; i++ {
		if err := s.View(func(tx Tx) error { _, _ = tx.Get(BucketMeta, "version"); return nil }); err != nil {
			b.Fatal(err)
		}
	}
}
