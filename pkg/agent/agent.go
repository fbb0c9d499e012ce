package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/kvmctl/kvmctl/pkg/buildinfo"
	"github.com/kvmctl/kvmctl/pkg/clock"
	"github.com/kvmctl/kvmctl/pkg/hooks"
	"github.com/kvmctl/kvmctl/pkg/pki"
	"github.com/kvmctl/kvmctl/pkg/virt"
)

// Server timeouts that do not depend on the routes.
const (
	readHeaderTimeout      = 10 * time.Second
	idleTimeout            = 2 * time.Minute
	maxHeaderBytes         = 64 << 10
	DefaultShutdownTimeout = 10 * time.Second
)

// Agent is kvmagent's server for one host.
type Agent struct {
	cfg             Config
	hv              virt.Hypervisor
	log             *slog.Logger
	now             func() time.Time
	tlsConfig       *tls.Config
	handlerTimeout  time.Duration
	shutdownTimeout time.Duration
	version         string

	startedAt time.Time
	state     *agentState
	handler   http.Handler
	// bootID is the host's boot id read when the agent started, for GET /v1/health, which
	// reads no file: a host's boot id changes only with a reboot, which restarts the agent (the
	// lab restarts it on every power-on too). Status still reads the file afresh.
	bootID string
	// heartbeat is the heartbeat writer, nil without heartbeat.dir.
	heartbeat *Heartbeat
	// storage runs the activity checks' reads of the shared storage under their deadlines.
	storage *storageIO

	// stages runs the stage scripts (stages.go); hooksConfig are the WithHooksConfig changes.
	stages      hooks.Executor
	hooksConfig []func(*hooks.Config)
}

// Option changes an Agent's defaults.
type Option func(*Agent)

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(a *Agent) { a.log = l } }

// WithClock sets the clock (default time.Now).
func WithClock(now func() time.Time) Option { return func(a *Agent) { a.now = now } }

// WithTLSConfig serves with c instead of loading pki.ServerConfig from the tls.* files; the lab
// and tests use it with certificates held in memory.
func WithTLSConfig(c *tls.Config) Option { return func(a *Agent) { a.tlsConfig = c } }

// WithHandlerTimeout sets the timeout of routes that have none of their own (default
// DefaultHandlerTimeout).
func WithHandlerTimeout(d time.Duration) Option { return func(a *Agent) { a.handlerTimeout = d } }

// WithShutdownTimeout bounds how long Serve waits for requests in flight after its context ends
// (default DefaultShutdownTimeout).
func WithShutdownTimeout(d time.Duration) Option { return func(a *Agent) { a.shutdownTimeout = d } }

// New returns the agent for cfg on hypervisor hv, which it does not close. It creates the state
// dir and, without WithTLSConfig, loads the TLS files.
func New(cfg Config, hv virt.Hypervisor, opts ...Option) (*Agent, error) {
	if cfg.HostName == "" {
		return nil, errors.New("new agent: host name not set: set " + KeyHostName)
	}
	if hv == nil {
		return nil, errors.New("new agent: no hypervisor")
	}
	a := &Agent{
		cfg:             cfg,
		hv:              hv,
		log:             slog.New(slog.DiscardHandler),
		now:             time.Now,
		handlerTimeout:  DefaultHandlerTimeout,
		shutdownTimeout: DefaultShutdownTimeout,
		version:         buildinfo.String(),
		state:           newAgentState(),
	}
	for _, o := range opts {
		o(a)
	}
	if a.tlsConfig == nil {
		c, err := pki.ServerConfig(cfg.TLSCert, cfg.TLSKey, cfg.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("new agent: %w", err)
		}
		a.tlsConfig = c
	}
	if a.tlsConfig.MinVersion < tls.VersionTLS13 || a.tlsConfig.ClientAuth != tls.RequireAndVerifyClientCert {
		// No way to serve without mutual TLS 1.3, not even by mistake in the lab.
		return nil, errors.New("new agent: tls config must require TLS 1.3 and a verified client certificate (use pki.ServerConfig)")
	}
	if cfg.StateDir != "" {
		if err := prepareStateDir(cfg.StateDir, a.log); err != nil {
			return nil, fmt.Errorf("new agent: %w", err)
		}
	}
	err := a.loadState()
	if err != nil {
		return nil, fmt.Errorf("new agent: %w", err)
	}
	a.startedAt = a.now().UTC().Truncate(time.Second)
	if a.bootID, err = a.BootID(); err != nil {
		return nil, fmt.Errorf("new agent: %w: fix %s", err, KeyBootIDFile)
	}
	if path := cfg.HeartbeatFile(); path != "" {
		a.heartbeat = &Heartbeat{Path: path, Host: cfg.HostName, BootID: a.bootID, Interval: cfg.HeartbeatInterval,
			Clock: clock.Real(), Log: a.log, StallFile: cfg.LabStorageStallFile}
	}
	a.storage = newStorageIO(cfg.LabStorageStallFile)
	stages, err := a.newStageExecutor()
	if err != nil {
		return nil, fmt.Errorf("new agent: %w", err)
	}
	a.stages = stages
	a.handler = a.newHandler()
	return a, nil
}

// prepareStateDir creates the state dir (mode 0700) when it is missing, and checks that only
// root or the agent's user can change it or any directory above it, and that nobody else can
// read it: the stage records in it decide whether a Maintenance script runs again, and the
// maintenance flag whether VMs start. An existing directory is never changed: it may be shared,
// and its mode is its owner's to decide; one open to others is refused.
func prepareStateDir(dir string, log *slog.Logger) error {
	_, statErr := os.Stat(dir)
	created := errors.Is(statErr, fs.ErrNotExist)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("state dir %s is not a directory: fix %s", dir, KeyStateDir)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		if uid := os.Getuid(); st.Uid != 0 && int(st.Uid) != uid {
			return fmt.Errorf("state dir %s is owned by uid %d, not root or the agent's user (uid %d): chown %d %s, or set %s to a dir of the agent's",
				dir, st.Uid, uid, uid, dir, KeyStateDir)
		}
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		if !created {
			return fmt.Errorf("state dir %[1]s has mode %04[2]o: others may read or change it; chmod 700 %[1]s if it is the agent's alone, or set %[3]s to a directory of its own (the agent creates a missing one with mode 0700)",
				dir, perm, KeyStateDir)
		}
		// Created just now: a umask narrower than usual cannot widen 0700, but MkdirAll may
		// have made parents too; this one is ours to set.
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("state dir %s: %w", dir, err)
		}
		log.Info("created the state dir", "dir", dir)
	}
	if err := hooks.CheckTrustedPath(dir); err != nil {
		return fmt.Errorf("state dir %s (%s): %w", dir, KeyStateDir, err)
	}
	return nil
}

// Config returns the agent's configuration.
func (a *Agent) Config() Config { return a.cfg }

// Handler returns the agent's HTTP handler without TLS, for tests of the routes.
func (a *Agent) Handler() http.Handler { return a.handler }

// ListenAndServe listens on the configured address and serves until ctx ends.
func (a *Agent) ListenAndServe(ctx context.Context) error {
	ln, err := net.Listen("tcp", a.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s (%s): %w", a.cfg.Listen, KeyListen, err)
	}
	return a.Serve(ctx, ln)
}

// Serve serves HTTPS with mutual TLS on ln, and runs the heartbeat writer when configured, until
// ctx ends; then it stops accepting, lets requests in flight finish (up to the shutdown
// timeout) and returns nil. It closes ln.
func (a *Agent) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           a.handler,
		TLSConfig:         a.tlsConfig,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readHeaderTimeout + 20*time.Second,
		// A handler may run for its route's timeout; the answer still needs time to go out.
		WriteTimeout:   a.maxTimeout() + 10*time.Second,
		IdleTimeout:    idleTimeout,
		MaxHeaderBytes: maxHeaderBytes,
		ErrorLog:       slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
		BaseContext:    func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	// Shutdown waits up to 5 s for a connection that was opened but has sent no request yet
	// (a client that dialled ahead); such a connection carries no work, so it is closed at once.
	fresh := newConnSet()
	srv.ConnState = fresh.track

	var wg sync.WaitGroup
	bgCtx, stopBackground := context.WithCancel(ctx)
	defer func() {
		stopBackground()
		wg.Wait()
	}()
	if a.heartbeat != nil {
		wg.Go(func() { a.heartbeat.Run(bgCtx) })
	}
	// The lab's stall of the storage ends for the activity checks' reads when the agent stops.
	context.AfterFunc(bgCtx, a.storage.stop)
	// New already reloaded the maintenance state and the hooks executor recovered the stages
	// of an earlier agent, before the first request.

	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	a.log.Info("kvmagent serving", "host", a.cfg.HostName, "addr", ln.Addr().String(), "version", a.version,
		"libvirt", a.cfg.LibvirtURI, "heartbeat_file", a.cfg.HeartbeatFile())

	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	a.log.Info("kvmagent shutting down", "reason", context.Cause(ctx))
	sctx, cancel := context.WithTimeout(context.Background(), a.shutdownTimeout)
	defer cancel()
	go func() {
		// Shutdown first stops accepting; then the fresh connections go.
		time.Sleep(10 * time.Millisecond)
		fresh.closeAll()
	}()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
		a.log.Warn("requests still running at shutdown were cut off", "err", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// connSet tracks the connections that have not carried a request yet.
type connSet struct {
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func newConnSet() *connSet { return &connSet{conns: map[net.Conn]struct{}{}} }

func (s *connSet) track(c net.Conn, st http.ConnState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st == http.StateNew {
		s.conns[c] = struct{}{}
	} else {
		delete(s.conns, c)
	}
}

func (s *connSet) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		_ = c.Close()
		delete(s.conns, c)
	}
}
