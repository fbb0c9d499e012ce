package hooks

import (
	"os"
	"unicode/utf8"
)

// MaxOutput is how many bytes of a script's combined stdout and stderr are kept: the last ones.
const MaxOutput = 64 << 10

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
