// Package testnet holds network peers that misbehave, for tests of the bounds kvmctl puts on
// every network wait.
package testnet

import (
	"net"
	"sync"
	"testing"
)

// Silent returns the address of a TCP listener on 127.0.0.1 that accepts every connection and
// never says a word: an SSH server, a mail server or a webhook that hangs. It closes the
// listener and the connections when the test ends.
func Silent(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}
