package sshx

import (
	"sync"
	"unicode/utf8"
)

// tailBuffer keeps the last max bytes written to it. The ssh session copies stdout and stderr
// from two goroutines, so writes are serialised.
type tailBuffer struct {
	max int

	mu  sync.Mutex
	buf []byte
	cut bool
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := len(p)
	if len(p) >= b.max {
		b.buf = append(b.buf[:0], p[len(p)-b.max:]...)
		b.cut = true
		return n, nil
	}
	if over := len(b.buf) + len(p) - b.max; over > 0 {
		b.buf = b.buf[:copy(b.buf, b.buf[over:])]
		b.cut = true
	}
	b.buf = append(b.buf, p...)
	return n, nil
}

// String returns the kept output; once output was dropped, it starts at a whole character.
func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cut {
		return validTail(string(b.buf))
	}
	return string(b.buf)
}

// validTail drops the bytes of a character cut in half at the start of s.
func validTail(s string) string {
	for i := 0; i < len(s) && i < utf8.UTFMax; i++ {
		if utf8.RuneStart(s[i]) {
			return s[i:]
		}
	}
	return s
}
