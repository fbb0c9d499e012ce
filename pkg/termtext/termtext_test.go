package termtext

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestEscapesWhatATerminalWouldInterpret(t *testing.T) {
	for in, want := range map[string]string{
		"plain text, é and 漢字":             "plain text, é and 漢字",
		"\x1b]0;pwned\x07title":            `\u001b]0;pwned\u0007title`,
		"\x1b]52;c;ZWNobyBoaQ==\x1b\\clip": `\u001b]52;c;ZWNobyBoaQ==\u001b\clip`,
		"\x1b[2J\x1b[Hclear":               `\u001b[2J\u001b[Hclear`,
		"ok\rFAKE":                         `ok\u000dFAKE`,
		"c1 \u009b31m csi":                 `c1 \u009b31m csi`,
		"del\x7f nul\x00":                  `del\u007f nul\u0000`,
		"bidi \u202eevil":                  `bidi \u202eevil`,
		"bad utf8 \xff\xfe":                "bad utf8 \ufffd\ufffd",
		"two\nlines\tand a tab":            `two\u000alines\u0009and a tab`,
	} {
		if got := Line(in); got != want {
			t.Errorf("Line(%q) = %q, want %q", in, got, want)
		}
	}
	if got := Block("a\n\tb\x1b[31m\r\n"); got != "a\n\tb\\u001b[31m\\u000d\n" {
		t.Errorf("Block kept or lost the wrong characters: %q", got)
	}
}

// Whatever is escaped stays valid inside a JSON string and means the same thing there.
func TestEscapesAreValidJSON(t *testing.T) {
	in := "x\u0085y\u009bz\x7f\u202e"
	var out string
	if err := json.Unmarshal([]byte(`"`+Line(in)+`"`), &out); err != nil || out != in {
		t.Errorf("escaped %q does not read back in JSON: %q, %v", in, out, err)
	}
}

func TestWriterHoldsSplitCharacters(t *testing.T) {
	var b bytes.Buffer
	w := NewWriter(&b)
	in := []byte("é\u009b漢\x1b[1m\n")
	for _, c := range in { // one byte at a time: every character split
		if _, err := w.Write([]byte{c}); err != nil {
			t.Fatal(err)
		}
	}
	_ = w.Flush()
	if got, want := b.String(), "é\\u009b漢\\u001b[1m\n"; got != want {
		t.Errorf("byte-by-byte = %q, want %q", got, want)
	}
	b.Reset()
	_, _ = w.Write([]byte("x\xe6"))
	_ = w.Flush()
	if got := b.String(); got != "x\ufffd" {
		t.Errorf("a truncated character at the end = %q", got)
	}
}

func FuzzNothingUnsafeGetsThrough(f *testing.F) {
	for _, s := range []string{"", "\x1b]0;t\x07", "a\u009b", "\xff", "é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, out := range []string{Line(s), Block(s)} {
			if !utf8.ValidString(out) {
				t.Fatalf("invalid UTF-8 out of %q", s)
			}
			for _, r := range out {
				if unsafe(r) && r != '\n' && r != '\t' {
					t.Fatalf("%U got through from %q", r, s)
				}
			}
		}
		if strings.ContainsAny(Line(s), "\n\t") {
			t.Fatalf("Line kept a newline or tab from %q", s)
		}
	})
}
