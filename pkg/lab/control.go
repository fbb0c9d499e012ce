package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/kvmctl/kvmctl/pkg/errs"
)

// The control socket of a machine speaks HTTP/1.1 on a unix socket (DIR/hosts/hN/run, mode
// 0700: its owner only):
//
//	GET  /v1/state       the MachineState
//	POST /v1/ops/NAME    one operation of machineOps (query parameters as it takes them):
//	                     200 {"message", "state"}, 409 {"error"} when refused, 500 {"error"}

// opReply is the answer to an operation.
type opReply struct {
	Message string       `json:"message,omitempty"`
	State   MachineState `json:"state"`
	Error   string       `json:"error,omitempty"`
}

func serveControl(ln net.Listener, mc *machine) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/state", func(w http.ResponseWriter, r *http.Request) {
		replyJSON(w, http.StatusOK, mc.snapshot())
	})
	mux.HandleFunc("POST /v1/ops/{op}", func(w http.ResponseWriter, r *http.Request) {
		op, ok := machineOps[r.PathValue("op")]
		if !ok {
			replyJSON(w, http.StatusNotFound, opReply{Error: fmt.Sprintf("no operation %q", r.PathValue("op"))})
			return
		}
		msg, err := op(mc, r.URL.Query())
		switch {
		case err == nil:
			replyJSON(w, http.StatusOK, opReply{Message: msg, State: mc.snapshot()})
		case errs.IsRefused(err):
			replyJSON(w, http.StatusConflict, opReply{Error: err.Error(), State: mc.snapshot()})
		default:
			mc.log.Error("operation failed", "op", r.PathValue("op"), "err", err)
			replyJSON(w, http.StatusInternalServerError, opReply{Error: err.Error(), State: mc.snapshot()})
		}
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	_ = srv.Serve(ln)
}

func replyJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// maxSocketPath is the longest path of a unix socket Linux takes (sun_path without its NUL).
const maxSocketPath = 107

// socketPath returns a path for the unix socket at path that the kernel takes however deep the
// lab's directory is: path itself when short enough, else the same file reached through a
// descriptor of its directory (/proc/self/fd/N/NAME), valid until done is called.
func socketPath(path string) (short string, done func(), err error) {
	if len(path) <= maxSocketPath {
		return path, func() {}, nil
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return "", nil, err
	}
	return fmt.Sprintf("/proc/self/fd/%d/%s", d.Fd(), filepath.Base(path)), func() { d.Close() }, nil
}

// listenControl binds the machine's control socket, replacing one a dead machine left.
func listenControl(path string) (net.Listener, error) {
	if c, err := dialUnix(context.Background(), path); err == nil {
		c.Close()
		return nil, fmt.Errorf("control socket %s: another machine serves it", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	short, done, err := socketPath(path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	defer done()
	ln, err := net.Listen("unix", short)
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	// Closing must not unlink by the short name: its descriptor is gone by then.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	return &controlListener{Listener: ln, path: path}, nil
}

// controlListener removes its socket file when closed.
type controlListener struct {
	net.Listener
	path string
	once sync.Once
}

func (l *controlListener) Close() error {
	err := l.Listener.Close()
	l.once.Do(func() { _ = os.Remove(l.path) })
	return err
}

func dialUnix(ctx context.Context, path string) (net.Conn, error) {
	short, done, err := socketPath(path)
	if err != nil {
		return nil, err
	}
	defer done()
	var d net.Dialer
	return d.DialContext(ctx, "unix", short)
}

// controlClient talks to the machine of h over its control socket.
func controlClient(h *HostManifest) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialUnix(ctx, h.ControlSocket())
		},
	}}
}

// errNoMachine says that h's machine does not run.
func errNoMachine(h *HostManifest, err error) error {
	return errs.Refusedf("the machine of %s is not running (is the lab down?): `kvmctl lab start-agent %s` boots it again (%v)", h.Name, h.Name, err)
}

// MachineOp runs operation op (a name of machineOps, e.g. "crash") on h's machine and returns
// the line saying what it did. A refusal comes back as one (errs.IsRefused); so does a machine
// that does not run.
func MachineOp(ctx context.Context, h *HostManifest, op string, q url.Values) (string, MachineState, error) {
	u := "http://machine/v1/ops/" + url.PathEscape(op)
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, nil)
	if err != nil {
		return "", MachineState{}, err
	}
	var r opReply
	status, err := controlDo(h, req, &r)
	switch {
	case err != nil:
		return "", MachineState{}, err
	case status == http.StatusOK:
		return r.Message, r.State, nil
	case status == http.StatusConflict:
		return "", r.State, errs.Refused(errors.New(r.Error))
	default:
		return "", r.State, fmt.Errorf("%s on %s: %s", op, h.Name, r.Error)
	}
}

// MachineStatus asks h's machine for its state.
func MachineStatus(ctx context.Context, h *HostManifest) (MachineState, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://machine/v1/state", nil)
	if err != nil {
		return MachineState{}, err
	}
	var st MachineState
	if _, err := controlDo(h, req, &st); err != nil {
		return MachineState{}, err
	}
	return st, nil
}

func controlDo(h *HostManifest, req *http.Request, v any) (int, error) {
	resp, err := controlClient(h).Do(req)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return 0, fmt.Errorf("the machine of %s did not answer: %w", h.Name, err)
		}
		return 0, errNoMachine(h, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, fmt.Errorf("the machine of %s: %w", h.Name, err)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return 0, fmt.Errorf("the machine of %s answered %s: %w", h.Name, resp.Status, err)
	}
	return resp.StatusCode, nil
}

// readMachineState reads the state h's machine saved last; it may be stale when the machine no
// longer runs (see MachineAlive).
func readMachineState(h *HostManifest) (MachineState, error) {
	var st MachineState
	raw, err := os.ReadFile(h.MachineStateFile())
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(raw, &st)
}

func writeJSON(path string, v any) error {
	raw, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(path, append(raw, '\n'), 0o644)
}
