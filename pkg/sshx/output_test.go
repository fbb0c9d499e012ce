package sshx

import (
	"strings"
	"testing"
)

func TestTailBuffer(t *testing.T) {
	for _, tc := range []struct {
		name   string
		writes []string
		want   string
	}{
		{"fits", []string{"ab", "cd"}, "abcd"},
		{"exactly full", []string{"abcd", "ef"}, "abcdef"},
		{"drops oldest", []string{"abcd", "efgh"}, "cdefgh"},
		{"one big write", []string{"a", "0123456789"}, "456789"},
		{"cut character dropped", []string{"aé", "bcdef"}, "bcdef"}, // "é" is 2 bytes, half of it is cut
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &tailBuffer{max: 6}
			for _, w := range tc.writes {
				if n, err := b.Write([]byte(w)); n != len(w) || err != nil {
					t.Fatalf("Write(%q) = %d, %v", w, n, err)
				}
			}
			if got := b.String(); got != tc.want {
				t.Errorf("String() = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestWithDefaultPort(t *testing.T) {
	for in, want := range map[string]string{
		"kvm1":             "kvm1:22",
		"kvm1:2222":        "kvm1:2222",
		"10.0.0.11":        "10.0.0.11:22",
		"10.0.0.11:22":     "10.0.0.11:22",
		"::1":              "[::1]:22",
		"[::1]":            "[::1]:22",
		"[fe80::1]:2222":   "[fe80::1]:2222",
		"kvm1.example.org": "kvm1.example.org:22",
	} {
		if got := withDefaultPort(in); got != want {
			t.Errorf("withDefaultPort(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestExitErrorQuotesOnlyTheTail(t *testing.T) {
	out := strings.Repeat("early line\n", 1000) + "the real reason\n"
	msg := (&ExitError{Host: "kvm1", Command: "c", Status: 1, Output: out}).Error()
	if !strings.HasSuffix(msg, "the real reason") || len(msg) > errorOutputTail+100 {
		t.Errorf("message is %d bytes and ends %q", len(msg), msg[len(msg)-40:])
	}
	if got := (&ExitError{Host: "kvm1", Command: "c", Status: 3}).Error(); got != `run "c" on kvm1: exit status 3 (no output)` {
		t.Errorf("Error() = %q", got)
	}
}
