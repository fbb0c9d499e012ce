package safetext

import (
	"errors"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

func TestCheck(t *testing.T) {
	for _, s := range []string{"", "web1", "my vm/1", "systemctl restart kvmagent", "zürich-1", "日本", "\u00a0", "\ufffd", "a\u200bb"} {
		if err := Check("name", s); err != nil {
			t.Errorf("Check(%q) = %v, want nil", s, err)
		}
	}
	for _, tc := range []struct {
		s, char string
		offset  int
	}{
		{"web1\x00", "NUL", 4},
		{"\x00web1", "NUL", 0},
		{"a\tb", "control character U+0009", 1},
		{"a\nb", "control character U+000A", 1},
		{"a\rb", "control character U+000D", 1},
		{"\x1b[31m", "control character U+001B", 0},
		{"a\x7f", "DEL", 1},
		{"ab\u0085", "C1 control character U+0085", 2},
		{"\u009f", "C1 control character U+009F", 0},
		{"ok\xff", "invalid UTF-8 byte 0xff", 2},
		{"\xc3", "invalid UTF-8 byte 0xc3", 0},
		{"\xed\xa0\x80", "invalid UTF-8 byte 0xed", 0}, // a UTF-16 surrogate, not UTF-8
	} {
		err := Check("vm name", tc.s)
		var e *Error
		if !errors.As(err, &e) {
			t.Errorf("Check(%q) = %v, want an *Error", tc.s, err)
			continue
		}
		if e.Char != tc.char || e.Offset != tc.offset || e.What != "vm name" || e.Value != tc.s {
			t.Errorf("Check(%q) = %+v, want %s at %d", tc.s, e, tc.char, tc.offset)
		}
		// The message quotes the value, so the refused character shows as an escape, never raw.
		msg := err.Error()
		if !strings.HasPrefix(msg, "invalid vm name \"") || !strings.Contains(msg, tc.char) || !utf8.ValidString(msg) ||
			strings.ContainsFunc(msg, unicode.IsControl) {
			t.Errorf("message %q", msg)
		}
	}
}

// FuzzCheck: Check accepts exactly valid UTF-8 without control characters (unicode.IsControl is
// C0, DEL and C1), and never panics.
func FuzzCheck(f *testing.F) {
	for _, s := range []string{"", "web1", "web1\x00", "\u0085", "\xff", "é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want := utf8.ValidString(s) && !strings.ContainsFunc(s, unicode.IsControl)
		if got := Valid(s); got != want {
			t.Fatalf("Valid(%q) = %v, want %v", s, got, want)
		}
	})
}
