package agent

import (
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
)

// Handler timeouts. Every route runs under one; a long poll (waiting for a stage to finish, for
// maintenance to be reached) sets LongPollTimeout on its route.
const (
	DefaultHandlerTimeout = 30 * time.Second
	LongPollTimeout       = 5 * time.Minute
)

// route is one endpoint. A zero timeout means the agent's handler timeout.
type route struct {
	method  string
	path    string
	timeout time.Duration
	handler handlerFunc
	// quiet routes are polled often (HA health checks): log them at debug level only.
	quiet bool
}

// routes is the agent's API, one line per endpoint.
func (a *Agent) routes() []route {
	return []route{
		{method: http.MethodGet, path: api.PathStatus, handler: a.handleStatus},
		{method: http.MethodGet, path: api.PathHealthz, handler: a.handleHealthz, quiet: true},
		// Polled every second by kvmctl's HA monitor; answered from memory.
		{method: http.MethodGet, path: api.PathHealth, handler: a.handleHealth, quiet: true},
		{method: http.MethodPost, path: api.PathActivityCheck, timeout: activityCheckTimeout, handler: a.handleActivityCheck},
		{method: http.MethodGet, path: api.PathHooks, handler: a.handleHooks},
		{method: http.MethodPost, path: api.PathStages, handler: a.handleStartStage},
		// A long poll (?wait=): its timeout outlasts the longest wait.
		{method: http.MethodGet, path: api.PathStages + "/{id}", timeout: stageWaitTimeout, handler: a.handleStage},
		{method: http.MethodGet, path: api.PathMaintenance, handler: a.handleGetMaintenance},
		{method: http.MethodPost, path: api.PathMaintenance, handler: a.handleEnterMaintenance},
		{method: http.MethodDelete, path: api.PathMaintenance, handler: a.handleCancelMaintenance},
		{method: http.MethodPost, path: api.PathVMs, handler: a.handleDefineVM},
		{method: http.MethodGet, path: api.PathVMs + "/{name}/xml", handler: a.handleVMXML},
		{method: http.MethodPost, path: api.PathVMs + "/{name}/start", handler: a.handleStartVM},
		{method: http.MethodDelete, path: api.PathVMs + "/{name}", handler: a.handleRemoveVM},
		// A live migration copies the VM's memory while it runs: minutes for a large VM.
		{method: http.MethodPost, path: api.PathVMs + "/{name}/migrate", timeout: api.MaxMigrateTimeout, handler: a.handleMigrateVM},
	}
}

// maxTimeout is the longest handler timeout of any route; the server's write timeout must
// leave room for it.
func (a *Agent) maxTimeout() time.Duration {
	m := a.handlerTimeout
	for _, rt := range a.routes() {
		m = max(m, rt.timeout)
	}
	return m
}

// newHandler builds the mux: each route behind its timeout, a JSON 405 for a known path with
// another method, a JSON 404 for everything else, and around it all the request log, the body
// limit and panic recovery.
func (a *Agent) newHandler() http.Handler {
	mux := http.NewServeMux()
	methods := map[string][]string{}
	quiet := map[string]bool{}
	for _, rt := range a.routes() {
		timeout := rt.timeout
		if timeout <= 0 {
			timeout = a.handlerTimeout
		}
		mux.Handle(rt.method+" "+rt.path, http.TimeoutHandler(a.wrap(rt.handler), timeout, timeoutBody(rt.path)))
		methods[rt.path] = append(methods[rt.path], rt.method)
		if rt.quiet {
			quiet[rt.path] = true
		}
	}
	for path, ms := range methods {
		slices.Sort(ms)
		allow := strings.Join(ms, ", ")
		mux.Handle(path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", allow)
			writeError(w, newHTTPError(api.CodeMethodNotAllowed, "%s %s: method not allowed, use %s", r.Method, path, allow))
		}))
	}
	mux.Handle("/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, newHTTPError(api.CodeNotFound, "no endpoint %s: this agent (version %s) serves %s", r.URL.Path, a.version, strings.Join(sortedKeys(methods), ", ")))
	}))
	return a.middleware(mux, quiet)
}

func sortedKeys(m map[string][]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// middleware limits the body, recovers a panicking handler into a JSON 500 and logs each request
// with the operator certificate that made it.
func (a *Agent) middleware(next http.Handler, quiet map[string]bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := a.now()
		rec := &statusRecorder{ResponseWriter: w}
		if r.Body != nil {
			r.Body = http.MaxBytesReader(rec, r.Body, MaxRequestBytes)
		}
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				a.log.Error("handler panicked", "method", r.Method, "path", r.URL.Path, "panic", fmt.Sprint(p))
				if rec.status == 0 {
					writeError(rec, newHTTPError(api.CodeInternal, "internal error in the agent; its log has the details"))
				}
			}
			level := slog.LevelInfo
			if quiet[r.URL.Path] && rec.status < 400 {
				level = slog.LevelDebug
			}
			a.log.Log(r.Context(), level, "request",
				"method", r.Method, "path", r.URL.Path, "status", rec.statusOr200(),
				"duration", a.now().Sub(start), "operator", peerName(r), "remote", r.RemoteAddr)
		}()
		next.ServeHTTP(rec, r)
	})
}

// peerName is the Common Name of the client certificate, i.e. which operator called.
func peerName(r *http.Request) string {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return ""
	}
	return r.TLS.PeerCertificates[0].Subject.CommonName
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusRecorder) statusOr200() int {
	if s.status == 0 {
		return http.StatusOK
	}
	return s.status
}

// Unwrap lets http.ResponseController reach the connection (deadlines for long polls).
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }
