package hooks

import (
	"bytes"
	"testing"
)

func TestTailBuffer(t *testing.T) {
	var all bytes.Buffer
	tb := newTailBuffer(10)
	check := func() {
		t.Helper()
		want := all.Bytes()
		if len(want) > 10 {
			want = want[len(want)-10:]
		}
		if got := tb.String(); got != string(want) {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
	for _, w := range []string{"", "abc", "defgh", "ij", "k", "lmnopqrstu", "vwxyz0123456789", "!"} {
		all.WriteString(w)
		if n, err := tb.Write([]byte(w)); n != len(w) || err != nil {
			t.Fatal(n, err)
		}
		check()
	}
}

func TestTailBufferDropsCutRune(t *testing.T) {
	tb := newTailBuffer(5)
	// x, a 2-byte é and a 3-byte € then "!": 7 bytes, the last 5 start inside é.
	tb.Write([]byte("xé€"))
	tb.Write([]byte("!"))
	if got := tb.String(); got != "€!" {
		t.Fatalf("got %q", got)
	}
}
