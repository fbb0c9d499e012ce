package hooks

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	if got := readTail(path, 10); got != "" {
		t.Errorf("no file: %q", got)
	}
	var all strings.Builder
	for _, w := range []string{"", "abc", "defgh", "ij", "k", "lmnopqrstu", "vwxyz0123456789", "!"} {
		all.WriteString(w)
		if err := os.WriteFile(path, []byte(all.String()), 0o600); err != nil {
			t.Fatal(err)
		}
		want := all.String()
		want = want[len(want)-min(10, len(want)):]
		if got := readTail(path, 10); got != want {
			t.Fatalf("readTail = %q, want %q", got, want)
		}
		if got := tailString(all.String(), 10); got != want {
			t.Fatalf("tailString = %q, want %q", got, want)
		}
	}
}

func TestTailDropsCutRune(t *testing.T) {
	// x, a 2-byte é and a 3-byte € then "!": 7 bytes, the last 5 start inside é.
	path := filepath.Join(t.TempDir(), "log")
	if err := os.WriteFile(path, []byte("xé€!"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := readTail(path, 5); got != "€!" {
		t.Errorf("readTail = %q", got)
	}
	if got := tailString("xé€!", 5); got != "€!" {
		t.Errorf("tailString = %q", got)
	}
	// Nothing dropped: nothing cut.
	if got := tailString("é", 5); got != "é" {
		t.Errorf("tailString = %q", got)
	}
}
