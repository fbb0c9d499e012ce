package agent

import (
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvmctl/kvmctl/pkg/clock"
)

// Calls that hang in the kernel (opening FIFOs without a writer) keep their slots; once all are
// taken a new call fails within its own deadline without starting, saying why; when the storage
// answers again the slots come back.
func TestStorageCallsAreBounded(t *testing.T) {
	s := &storageIO{slots: make(chan struct{}, 2), clock: clock.Real(), stopped: make(chan struct{})}
	dir := t.TempDir()
	good := filepath.Join(dir, "good.img")
	writeFile(t, good, []byte("data"))
	hung := []string{fifo(t, filepath.Join(dir, "a.img")), fifo(t, filepath.Join(dir, "b.img"))}
	t.Cleanup(func() {
		for _, p := range hung {
			fifoHasReader(t, p)
		}
	})
	stat := func(p string) (fs.FileInfo, error) {
		return storageCall(s, 50*time.Millisecond, func() (fs.FileInfo, error) { return statOpen(p) })
	}

	for _, p := range hung {
		if _, err := stat(p); err == nil || !strings.Contains(err.Error(), "no answer within 50ms: the shared storage may be hung") {
			t.Errorf("hung call: err = %v", err)
		}
	}
	start := time.Now()
	if _, err := stat(good); err == nil || !strings.Contains(err.Error(), "2 earlier storage calls have not returned yet") {
		t.Errorf("call without a free slot: err = %v", err)
	}
	if took := time.Since(start); took < 50*time.Millisecond || took > time.Second {
		t.Errorf("the call without a slot took %v, want its deadline, 50ms", took)
	}
	for _, p := range hung {
		if !fifoHasReader(t, p) {
			t.Errorf("%s: the hung call is not blocked in its open", p)
		}
	}
	waitFor(t, "the slots to free", func() bool { return len(s.slots) == 0 })
	if fi, err := stat(good); err != nil || fi.Size() != 4 {
		t.Errorf("call after the storage came back: %v, %v", fi, err)
	}
}
