// Package safetext is the one rule for text that names something or is passed on: valid UTF-8
// without NUL, other C0 or C1 control characters, or DEL. Such characters are read differently
// by different programs (libvirt cut "web1\x00x" at the NUL and acted on web1; a newline starts
// a new key in a properties file), so kvmctl and kvmagent refuse them where text enters, on
// both sides of the API. The package imports nothing of the project, so both may use it.
package safetext

import (
	"fmt"
	"unicode/utf8"
)

// Error says which character of a value is refused and where it is.
type Error struct {
	// What names the value for people: "vm name", "ssh user", "restart command".
	What  string
	Value string
	// Offset is the byte offset of the refused character in Value.
	Offset int
	// Char describes it: "NUL", "control character U+001B", "invalid UTF-8 byte 0xff".
	Char string
}

func (e *Error) Error() string {
	return fmt.Sprintf("invalid %s %q: %s at byte %d: use printable text, without NUL, control characters or invalid UTF-8",
		e.What, e.Value, e.Char, e.Offset)
}

// Check returns nil when s is valid UTF-8 free of NUL, C0 and C1 control characters and DEL,
// and otherwise an *Error naming what (e.g. "vm name") and the first refused character.
func Check(what, s string) error {
	for i, r := range s {
		var char string
		switch {
		case r == utf8.RuneError:
			if _, size := utf8.DecodeRuneInString(s[i:]); size == 1 {
				char = fmt.Sprintf("invalid UTF-8 byte 0x%02x", s[i])
			}
		case r == 0:
			char = "NUL"
		case r == 0x7f:
			char = "DEL"
		case r < 0x20:
			char = fmt.Sprintf("control character U+%04X", r)
		case r >= 0x80 && r <= 0x9f:
			char = fmt.Sprintf("C1 control character U+%04X", r)
		}
		if char != "" {
			return &Error{What: what, Value: s, Offset: i, Char: char}
		}
	}
	return nil
}

// Valid reports whether Check accepts s.
func Valid(s string) bool { return Check("", s) == nil }
