package lab

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// proxy stands between kvmctl and a host's agent: the inventory's address is the proxy's, so the
// lab can cut the link without touching the host. While the link works, each connection is
// forwarded to the agent, and one the agent does not take (it is not running) is reset, as a
// host without a listener would. While it is cut (a partition, or the host powered off, which
// answers nothing) connections are accepted and then hang: what comes in is read and dropped,
// nothing goes out, as over a dead link. Cutting turns the connections in flight into such
// hanging ones; mending closes them, and clients connect afresh.
type proxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	cut   bool
	pairs map[*proxyPair]struct{}
}

// proxyPair is one client connection and, while the link works, its connection to the agent.
type proxyPair struct {
	client net.Conn
	up     net.Conn // nil while hanging; guarded by proxy.mu
	hung   atomic.Bool
}

// upstreamDialTimeout bounds the proxy's connection to the agent on the same machine.
const upstreamDialTimeout = 2 * time.Second

func listenProxy(addr, target string) (*proxy, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("proxy in front of the agent: %w", err)
	}
	return &proxy{ln: ln, target: target, cut: true, pairs: map[*proxyPair]struct{}{}}, nil
}

func (p *proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // out of descriptors, say: try again
			continue
		}
		go p.handle(c)
	}
}

// Close stops accepting and closes every connection.
func (p *proxy) Close() error {
	err := p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for pr := range p.pairs {
		pr.client.Close()
		if pr.up != nil {
			pr.up.Close()
		}
	}
	return err
}

// setCut cuts the link (true) or mends it (false).
func (p *proxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut == cut {
		return
	}
	p.cut = cut
	for pr := range p.pairs {
		if cut {
			pr.hung.Store(true)
			if pr.up != nil {
				pr.up.Close()
				pr.up = nil
			}
		} else if pr.hung.Load() {
			pr.client.Close()
		}
	}
}

func (p *proxy) handle(c net.Conn) {
	pr := &proxyPair{client: c}
	p.mu.Lock()
	p.pairs[pr] = struct{}{}
	cut := p.cut
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.pairs, pr)
		if pr.up != nil {
			pr.up.Close()
		}
		p.mu.Unlock()
		c.Close()
	}()

	var up net.Conn
	if cut {
		pr.hung.Store(true)
	} else {
		var err error
		up, err = net.DialTimeout("tcp", p.target, upstreamDialTimeout)
		if err != nil {
			reset(c) // no agent listening: refuse, as the host would
			return
		}
		p.mu.Lock()
		if p.cut { // cut meanwhile
			pr.hung.Store(true)
			up.Close()
			up = nil
		} else {
			pr.up = up
		}
		p.mu.Unlock()
	}
	if up != nil {
		go func() {
			// The agent's side to the client; when the agent goes (killed, stopped), so does
			// the client's connection, unless the link was cut meanwhile: then it hangs.
			buf := make([]byte, 32<<10)
			for {
				n, err := up.Read(buf)
				if n > 0 && !pr.hung.Load() {
					if _, werr := c.Write(buf[:n]); werr != nil {
						break
					}
				}
				if err != nil {
					break
				}
			}
			if !pr.hung.Load() {
				c.Close()
			}
		}()
	}
	// The client's side to the agent, dropped while hanging, until the client goes.
	buf := make([]byte, 32<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 && up != nil && !pr.hung.Load() {
			if _, werr := up.Write(buf[:n]); werr != nil && !pr.hung.Load() {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// reset closes c with a TCP reset, the way a port without a listener answers.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	c.Close()
}
