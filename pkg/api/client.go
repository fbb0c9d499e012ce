package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kvmctl/kvmctl/pkg/pki"
)

// Client defaults; see the options to change them.
const (
	DefaultDialTimeout    = 5 * time.Second
	DefaultRequestTimeout = 30 * time.Second
	// maxResponseBytes bounds what the client reads of one answer: a status of a host with
	// thousands of VMs fits many times over.
	maxResponseBytes = 32 << 20
)

// Client talks to the agent of one host over mutual TLS. It keeps its connections alive between
// calls and is safe for concurrent use.
type Client struct {
	host, address  string
	http           *http.Client
	transport      *http.Transport
	dialTimeout    time.Duration
	requestTimeout time.Duration
	tlsConfig      *tls.Config
}

// Option changes a Client's defaults.
type Option func(*Client)

// WithDialTimeout bounds the TCP connect and the TLS handshake together (default
// DefaultDialTimeout).
func WithDialTimeout(d time.Duration) Option { return func(c *Client) { c.dialTimeout = d } }

// WithRequestTimeout bounds a call whose context has no deadline of its own (default
// DefaultRequestTimeout). Long polls pass a context with their own deadline.
func WithRequestTimeout(d time.Duration) Option { return func(c *Client) { c.requestTimeout = d } }

// NewClient returns a client for the agent of host, dialled at address ("addr:port").
// tlsConfig is pki.ClientConfig for host; it is cloned.
func NewClient(host, address string, tlsConfig *tls.Config, opts ...Option) *Client {
	c := &Client{
		host:           host,
		address:        address,
		dialTimeout:    DefaultDialTimeout,
		requestTimeout: DefaultRequestTimeout,
		tlsConfig:      tlsConfig.Clone(),
	}
	for _, o := range opts {
		o(c)
	}
	c.transport = &http.Transport{
		// Our own TLS dial tells a TLS refusal apart from an unreachable agent; see do.
		DialTLSContext:        c.dialTLS,
		MaxIdleConns:          4,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	c.http = &http.Client{
		Transport: c.transport,
		// The agent never redirects; following one would send our request elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return c
}

// ClientForHost builds a client for host at address from the operator's PKI dir (ca.crt,
// operator.crt, operator.key), checking that the agent's certificate names host.
func ClientForHost(pkiDir, hostName, address string, opts ...Option) (*Client, error) {
	cfg, err := pki.ClientConfig(
		filepath.Join(pkiDir, pki.CACertFile),
		filepath.Join(pkiDir, pki.OperatorCertFile),
		filepath.Join(pkiDir, pki.OperatorKeyFile),
		hostName)
	if err != nil {
		return nil, fmt.Errorf("client for %s: %w", hostName, err)
	}
	return NewClient(hostName, address, cfg, opts...), nil
}

// Host is the inventory name of the client's host.
func (c *Client) Host() string { return c.host }

// Address is where the client dials the agent.
func (c *Client) Address() string { return c.address }

// Close drops the idle connections. The client stays usable.
func (c *Client) Close() { c.transport.CloseIdleConnections() }

// Status returns the agent's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	err := c.do(ctx, http.MethodGet, PathStatus, nil, &s)
	return s, err
}

// Healthz checks that the agent answers; it returns nil only on {"ok":true}.
func (c *Client) Healthz(ctx context.Context) error {
	var h Health
	if err := c.do(ctx, http.MethodGet, PathHealthz, nil, &h); err != nil {
		return err
	}
	if !h.OK {
		return &Error{Host: c.host, Status: http.StatusOK, Code: CodeInternal, Message: "agent reports not ok"}
	}
	return nil
}

// dialTLS connects and completes the handshake within the dial timeout. A failure to connect is
// returned as is (do makes it an UnreachableError); a handshake refused on either side becomes a
// *TLSError.
func (c *Client) dialTLS(ctx context.Context, network, _ string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, c.dialTimeout)
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(ctx, network, c.address)
	if err != nil {
		return nil, err
	}
	conn := tls.Client(raw, c.tlsConfig)
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		if isTransportFailure(err) {
			return nil, err
		}
		return nil, &TLSError{Host: c.host, Address: c.address, Err: err}
	}
	return conn, nil
}

// isTransportFailure reports whether err is the network failing rather than TLS refusing: a
// timeout, a reset, a connection closed before the handshake completed.
func isTransportFailure(err error) bool {
	var ne net.Error
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// do sends one request with in (if not nil) as its JSON body and decodes a 2xx answer into out.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	if _, ok := ctx.Deadline(); !ok && c.requestTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.requestTimeout)
		defer cancel()
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("agent %s: encode %s %s: %w", c.host, method, path, err)
		}
		body = bytes.NewReader(b)
	}
	// The URL host is only a label for the connection pool: dialTLS dials c.address and TLS
	// checks the certificate against the host name in tlsConfig.
	req, err := http.NewRequestWithContext(ctx, method, "https://"+c.host+path, body)
	if err != nil {
		return fmt.Errorf("agent %s: %s %s: %w", c.host, method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return c.transportError(ctx, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		return c.transportError(ctx, err)
	}
	if len(b) > maxResponseBytes {
		return fmt.Errorf("agent %s: %s %s: answer larger than %d bytes", c.host, method, path, maxResponseBytes)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return c.decodeError(resp.StatusCode, b)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("agent %s: %s %s: decode answer: %w", c.host, method, path, err)
	}
	return nil
}

// transportError classifies a failed round trip: a TLS refusal stays a *TLSError, a caller's
// cancellation stays the context error, everything else means the agent gave no answer.
func (c *Client) transportError(ctx context.Context, err error) error {
	var te *TLSError
	if errors.As(err, &te) {
		return te
	}
	// In TLS 1.3 the server checks our certificate after the client's handshake is done, so its
	// refusal arrives as an alert on the first read.
	if isRemoteAlert(err) {
		return &TLSError{Host: c.host, Address: c.address, Err: err}
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		return fmt.Errorf("agent %s: %w", c.host, ctx.Err())
	}
	return &UnreachableError{Host: c.host, Address: c.address, Err: err}
}

func (c *Client) decodeError(status int, b []byte) error {
	var eb ErrorBody
	if err := json.Unmarshal(b, &eb); err == nil && eb.Code != "" {
		return &Error{Host: c.host, Status: status, Code: eb.Code, Message: eb.Error}
	}
	msg := strings.TrimSpace(string(b))
	if len(msg) > 200 {
		msg = msg[:200] + "..."
	}
	if msg == "" {
		msg = http.StatusText(status)
	}
	return &Error{Host: c.host, Status: status, Code: "http_" + strconv.Itoa(status), Message: msg}
}

// isRemoteAlert reports whether err is a TLS alert sent by the agent ("remote error: tls: bad
// certificate"). crypto/tls reports it as a *net.OpError with Op "remote error"; QUIC would use
// tls.AlertError.
func isRemoteAlert(err error) bool {
	var op *net.OpError
	var alert tls.AlertError
	return (errors.As(err, &op) && op.Op == "remote error") || errors.As(err, &alert)
}
