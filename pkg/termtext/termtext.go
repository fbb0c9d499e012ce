// Package termtext makes text from hosts safe for an operator's terminal. Script output, error
// texts and names come from machines kvmctl does not trust; an escape sequence in them could
// retitle the terminal (OSC 0), write the clipboard (OSC 52), clear the screen or move the
// cursor over what kvmctl printed. Every control character, apart from newline and tab in text
// of several lines, is shown escaped as \uXXXX: readable, never interpreted, and still valid
// inside a JSON string.
package termtext

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"unicode/utf8"
)

// unsafe reports whether r must not reach a terminal as itself: C0 and C1 control characters,
// DEL, and the bidirectional overrides that make text read other than it is.
func unsafe(r rune) bool {
	switch {
	case r < 0x20, r == 0x7f, r >= 0x80 && r <= 0x9f:
		return true
	case r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069, r == 0x200e, r == 0x200f:
		return true
	}
	return false
}

func escape(b *strings.Builder, r rune) { fmt.Fprintf(b, `\u%04x`, r) }

// Line returns s for one line of a terminal: every unsafe character, newlines and tabs too,
// escaped; invalid UTF-8 shown as U+FFFD.
func Line(s string) string { return clean(s, false) }

// Block returns s as text of several lines: newlines and tabs kept, every other unsafe character
// escaped.
func Block(s string) string { return clean(s, true) }

func clean(s string, multiline bool) string {
	ok := true
	for _, r := range s {
		if r == utf8.RuneError || (unsafe(r) && !(multiline && (r == '\n' || r == '\t'))) {
			ok = false
			break
		}
	}
	if ok {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		i += n
		switch {
		case r == utf8.RuneError && n <= 1:
			b.WriteRune(utf8.RuneError)
		case multiline && (r == '\n' || r == '\t'):
			b.WriteRune(r)
		case unsafe(r):
			escape(&b, r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// Writer passes text to W with every unsafe character but newline and tab escaped, whatever the
// pieces it is written in (a character split between two writes is held until it is whole). It
// is safe for concurrent use.
type Writer struct {
	W       io.Writer
	mu      sync.Mutex
	pending []byte
}

// NewWriter returns a Writer onto w.
func NewWriter(w io.Writer) *Writer { return &Writer{W: w} }

// Write cleans p and writes it; it reports len(p) when the cleaned text was written.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	buf := append(w.pending, p...)
	// Hold back an incomplete character at the end.
	cut := len(buf)
	for k := 1; k <= 3 && k <= len(buf); k++ {
		c := buf[len(buf)-k]
		if c < 0x80 {
			break
		}
		if utf8.RuneStart(c) {
			if !utf8.FullRune(buf[len(buf)-k:]) {
				cut = len(buf) - k
			}
			break
		}
	}
	w.pending = append([]byte(nil), buf[cut:]...)
	if _, err := io.WriteString(w.W, Block(string(buf[:cut]))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush writes what Write held back (an incomplete character, shown as U+FFFD).
func (w *Writer) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.pending) == 0 {
		return nil
	}
	_, err := io.WriteString(w.W, Block(string(w.pending)))
	w.pending = nil
	return err
}
