package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/backoff"
	"github.com/kvmctl/kvmctl/pkg/errs"
)

// FindAgent locates the kvmagent binary: beside the running executable, then on PATH.
func FindAgent() (string, error) {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "kvmagent")
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	p, err := exec.LookPath("kvmagent")
	if err != nil {
		return "", errs.Refusedf("kvmagent not found beside kvmctl nor on PATH: run `make build` and use bin/kvmctl, or pass --agent PATH")
	}
	return filepath.Abs(p)
}

// Alive reports whether pid is a running (not zombie) kvmagent of host h: a pid the kernel
// reused for another program is not ours, and is never signalled.
func Alive(h *HostManifest) bool {
	if h.PID <= 0 {
		return false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", h.PID))
	// Just after exec.Cmd.Start returns, the kernel may still show an empty command line (the
	// new program's arguments are not in place yet): that is our agent starting, not gone.
	if err != nil || (len(cmdline) > 0 && !bytes.Contains(cmdline, []byte(h.Config()))) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", h.PID))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name: "pid (comm) S ...".
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) {
		return stat[i+2] != 'Z' && stat[i+2] != 'X'
	}
	return false
}

// StartAgent starts the agent of host h in its own session, so it outlives kvmctl, with its
// output appended to its log. It records the pid in h (the caller saves the manifest).
func StartAgent(m *Manifest, h *HostManifest) error {
	if Alive(h) {
		return errs.Refusedf("the agent of %s is already running (pid %d)", h.Name, h.PID)
	}
	log, err := os.OpenFile(h.Log(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := exec.Command(m.Agent, "run", "--config", h.Config())
	cmd.Dir = h.Dir
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start agent of %s: %w", h.Name, err)
	}
	h.PID = cmd.Process.Pid
	// Reap it if it dies while we still run, so Alive never sees a zombie of ours.
	go func() { _ = cmd.Wait() }()
	return nil
}

// KillAgent sends SIGKILL to the agent of h, as a crash would, and waits until it is gone.
func KillAgent(h *HostManifest) error {
	if !Alive(h) {
		return errs.Refusedf("the agent of %s is not running", h.Name)
	}
	if err := syscall.Kill(h.PID, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill agent of %s: %w", h.Name, err)
	}
	return waitGone(h, 5*time.Second)
}

// StopAgent asks the agent of h to stop (SIGTERM) and kills it when it has not after grace.
func StopAgent(h *HostManifest, grace time.Duration) error {
	if !Alive(h) {
		return nil
	}
	_ = syscall.Kill(h.PID, syscall.SIGTERM)
	if waitGone(h, grace) == nil {
		return nil
	}
	_ = syscall.Kill(h.PID, syscall.SIGKILL)
	return waitGone(h, 5*time.Second)
}

func waitGone(h *HostManifest, d time.Duration) error {
	deadline := time.Now().Add(d)
	for Alive(h) {
		if time.Now().After(deadline) {
			return fmt.Errorf("the agent of %s (pid %d) is still running after %s", h.Name, h.PID, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// WaitReady waits until every agent of hosts answers over mutual TLS, or ctx ends. An agent
// that exits meanwhile fails fast with the tail of its log.
func WaitReady(ctx context.Context, m *Manifest, hosts []*HostManifest) error {
	var wg sync.WaitGroup
	errc := make(chan error, len(hosts))
	for _, h := range hosts {
		wg.Add(1)
		go func(h *HostManifest) {
			defer wg.Done()
			errc <- waitOne(ctx, m, h)
		}(h)
	}
	wg.Wait()
	close(errc)
	var all []error
	for err := range errc {
		if err != nil {
			all = append(all, err)
		}
	}
	return errors.Join(all...)
}

func waitOne(ctx context.Context, m *Manifest, h *HostManifest) error {
	c, err := api.ClientForHost(m.PKIDir(), h.Name, h.Address)
	if err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		err := c.Healthz(pctx)
		cancel()
		if err == nil {
			return nil
		}
		if !Alive(h) {
			return fmt.Errorf("the agent of %s exited: %s", h.Name, tail(h.Log(), 5))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the agent of %s did not answer on %s: %w (log: %s)", h.Name, h.Address, err, h.Log())
		case <-time.After(backoff.Delay(attempt, 10*time.Millisecond, 250*time.Millisecond)):
		}
	}
}

func tail(path string, n int) string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "no log at " + path
	}
	lines := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// Up builds the lab and starts every agent, waiting until all answer.
func Up(ctx context.Context, o Options) (*Manifest, error) {
	m, err := Build(o)
	if err != nil {
		return nil, err
	}
	hosts := make([]*HostManifest, len(m.Hosts))
	for i := range m.Hosts {
		hosts[i] = &m.Hosts[i]
	}
	return m, StartHosts(ctx, m, hosts)
}

// StartHosts starts the agents of hosts, saves their pids and waits until all answer.
func StartHosts(ctx context.Context, m *Manifest, hosts []*HostManifest) error {
	var startErr []error
	for _, h := range hosts {
		if err := StartAgent(m, h); err != nil {
			startErr = append(startErr, err)
		}
	}
	if err := m.Save(); err != nil {
		return err
	}
	if err := errors.Join(startErr...); err != nil {
		return err
	}
	return WaitReady(ctx, m, hosts)
}

// Down stops every agent the lab started; with purge it also removes the lab's directory.
func Down(m *Manifest, purge bool) error {
	// All at once: a lab of 100 agents stops in the time of its slowest one.
	errc := make([]error, len(m.Hosts))
	var wg sync.WaitGroup
	for i := range m.Hosts {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errc[i] = StopAgent(&m.Hosts[i], 5*time.Second)
		}(i)
	}
	wg.Wait()
	var all []error
	for i, err := range errc {
		if err != nil {
			all = append(all, err)
			continue
		}
		m.Hosts[i].PID = 0
	}
	if err := errors.Join(all...); err != nil {
		_ = m.Save()
		return err
	}
	if purge {
		// Only a directory with our manifest is removed, never whatever --dir points at.
		if _, err := os.Stat(filepath.Join(m.Dir, ManifestFile)); err != nil {
			return fmt.Errorf("refusing to purge %s: no %s in it", m.Dir, ManifestFile)
		}
		return os.RemoveAll(m.Dir)
	}
	return m.Save()
}

// PIDString renders a pid for tables: "-" when not running.
func PIDString(h *HostManifest) string {
	if !Alive(h) {
		return "-"
	}
	return strconv.Itoa(h.PID)
}
