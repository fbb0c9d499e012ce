package hooks

import (
	"os"
	"sync"
	"unicode/utf8"
)

// MaxOutput is how many bytes of a script's combined stdout and stderr are kept: the last ones.
const MaxOutput = 64 << 10

// tailBuffer keeps the last len(buf) bytes written to it, in a ring.
type tailBuffer struct {
	mu      sync.Mutex
	buf     []byte
	next    int // where the next byte goes
	wrapped bool
}

func newTailBuffer(n int) *tailBuffer { return &tailBuffer{buf: make([]byte, n)} }

// Write never fails; older bytes are overwritten.
func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(p)
	if n >= len(t.buf) {
		copy(t.buf, p[n-len(t.buf):])
		t.next, t.wrapped = 0, true
		return n, nil
	}
	c := copy(t.buf[t.next:], p)
	if c < n {
		copy(t.buf, p[c:])
		t.wrapped = true
	}
	t.next = (t.next + n) % len(t.buf)
	if t.next == 0 && n > 0 {
		t.wrapped = true
	}
	return n, nil
}

// String returns the kept bytes in order. When older bytes were dropped, a rune cut in half at
// the start is dropped too, so the text stays valid where the script's was.
func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.wrapped {
		return string(t.buf[:t.next])
	}
	out := make([]byte, 0, len(t.buf))
	out = append(out, t.buf[t.next:]...)
	out = append(out, t.buf[:t.next]...)
	for i := 0; i < utf8.UTFMax-1 && len(out) > 0 && !utf8.RuneStart(out[0]); i++ {
		out = out[1:]
	}
	return string(out)
}

// readTail returns the last n bytes of the file at path (all of a shorter one), read from its
// end: a log of gigabytes costs n bytes of memory. "" when it cannot be read.
func readTail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return ""
	}
	off := max(0, fi.Size()-int64(n))
	buf := make([]byte, fi.Size()-off)
	k, _ := f.ReadAt(buf, off)
	return cutTail(buf[:k], off > 0)
}

// tailString returns the last n bytes of s.
func tailString(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return cutTail([]byte(s[len(s)-n:]), true)
}

// cutTail returns b as text; when older bytes were dropped (cut), a rune cut in half at the start
// is dropped too, so the text stays valid where the script's was.
func cutTail(b []byte, cut bool) string {
	for i := 0; cut && i < utf8.UTFMax-1 && len(b) > 0 && !utf8.RuneStart(b[0]); i++ {
		b = b[1:]
	}
	return string(b)
}
