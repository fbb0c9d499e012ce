package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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
	if p := findProgram("kvmagent"); p != "" {
		return p, nil
	}
	return "", errs.Refusedf("kvmagent not found beside kvmctl nor on PATH: run `make build` and use bin/kvmctl, or pass --agent PATH")
}

// FindMachine locates the kvmctl that runs the lab's machines (`kvmctl lab machine`): the
// running executable when it is kvmctl, else a kvmctl beside it, else on PATH.
func FindMachine() (string, error) {
	if p := findProgram("kvmctl"); p != "" {
		return p, nil
	}
	return "", errs.Refusedf("kvmctl not found on PATH to run the lab's machines: run `make build` and use bin/kvmctl")
}

// findProgram returns the absolute path of the program name: the running executable when it is
// name, else the one beside it, else the one on PATH; "" when there is none.
func findProgram(name string) string {
	if exe, err := os.Executable(); err == nil {
		if filepath.Base(exe) == name {
			return exe
		}
		p := filepath.Join(filepath.Dir(exe), name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return ""
	}
	if p, err = filepath.Abs(p); err != nil {
		return ""
	}
	return p
}

// procAlive reports whether pid runs (not a zombie) with a command line that satisfies ours.
func procAlive(pid int, ours func(args []string) bool) bool {
	if pid <= 0 {
		return false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	// Just after exec.Cmd.Start returns, the kernel may still show an empty command line (the
	// new program's arguments are not in place yet): that is our process starting, not gone.
	if err != nil || (len(cmdline) > 0 && !ours(strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00"))) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name: "pid (comm) S ...".
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) {
		return stat[i+2] != 'Z' && stat[i+2] != 'X'
	}
	return false
}

// AgentPID is the pid of h's agent as its machine last saved it, 0 for none (see Alive).
func AgentPID(h *HostManifest) int {
	st, err := readMachineState(h)
	if err != nil || !st.Running {
		return 0
	}
	return st.AgentPID
}

// Alive reports whether the agent of host h runs: the pid its machine recorded, still a
// kvmagent of h (a pid the kernel reused for another program is not ours, and is never
// signalled).
func Alive(h *HostManifest) bool {
	return procAlive(AgentPID(h), func(args []string) bool { return slices.Contains(args, h.Config()) })
}

// MachineAlive reports whether the machine process of h runs.
func MachineAlive(m *Manifest, h *HostManifest) bool {
	return procAlive(h.MachinePID, func(args []string) bool {
		n := len(args)
		return n >= 3 && args[n-3] == "machine" && args[n-2] == m.Dir && args[n-1] == h.Name
	})
}

// opTimeout bounds a quick operation of a machine (all but stopping an agent).
const opTimeout = 30 * time.Second

// StartAgent starts the agent of host h on its running machine (which reaps it, and kills it
// with the host's power); m is the lab of h. StartHosts also boots a machine that is not running.
func StartAgent(_ *Manifest, h *HostManifest) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	_, _, err := MachineOp(ctx, h, "start-agent", nil)
	return err
}

// KillAgent has h's machine SIGKILL its agent, as a crash of the agent alone would, and returns
// once it is gone; the host and its VMs run on.
func KillAgent(h *HostManifest) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	_, _, err := MachineOp(ctx, h, "kill-agent", nil)
	return err
}

// StopAgent asks the agent of h to stop (SIGTERM) and has it killed when it has not after grace.
// No agent, or no machine, is no error.
func StopAgent(h *HostManifest, grace time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout+grace)
	defer cancel()
	_, _, err := MachineOp(ctx, h, "stop-agent", url.Values{"grace": {grace.String()}})
	if errs.IsRefused(err) && !Alive(h) {
		return nil
	}
	return err
}

// startMachine starts the machine of host h in its own session, so it outlives kvmctl, with its
// output appended to its log. It records the pid in h (the caller saves the manifest).
func startMachine(m *Manifest, h *HostManifest) error {
	if m.Machine == "" {
		p, err := FindMachine()
		if err != nil {
			return err
		}
		m.Machine = p
	}
	log, err := os.OpenFile(h.MachineLog(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := exec.Command(m.Machine, "lab", "machine", m.Dir, h.Name)
	cmd.Dir = h.Dir
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the machine of %s: %w", h.Name, err)
	}
	h.MachinePID = cmd.Process.Pid
	// Reap it if it dies while we still run, so MachineAlive never sees a zombie of ours.
	go func() { _ = cmd.Wait() }()
	return nil
}

// stopMachine stops the machine of h (SIGTERM: it stops its agent, then itself) and kills it
// when it has not after grace; an agent left behind is killed too.
func stopMachine(m *Manifest, h *HostManifest, grace time.Duration) error {
	if MachineAlive(m, h) {
		_ = syscall.Kill(h.MachinePID, syscall.SIGTERM)
		if err := waitGone(grace, func() bool { return MachineAlive(m, h) }); err != nil {
			_ = syscall.Kill(h.MachinePID, syscall.SIGKILL)
			if err := waitGone(5*time.Second, func() bool { return MachineAlive(m, h) }); err != nil {
				return fmt.Errorf("the machine of %s (pid %d) is still running after SIGKILL", h.Name, h.MachinePID)
			}
		}
	}
	if pid := AgentPID(h); Alive(h) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		if err := waitGone(5*time.Second, func() bool { return Alive(h) }); err != nil {
			return fmt.Errorf("the agent of %s (pid %d) is still running after SIGKILL", h.Name, pid)
		}
	}
	h.MachinePID = 0
	return nil
}

func waitGone(d time.Duration, alive func() bool) error {
	deadline := time.Now().Add(d)
	for alive() {
		if time.Now().After(deadline) {
			return fmt.Errorf("still running after %s", d)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// WaitReady waits until the machine of every host of hosts answers on its control socket and its
// agent answers over mutual TLS (directly, not through the proxy a partition cuts), or ctx ends.
// A machine or agent that exits meanwhile fails fast with the tail of its log.
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
	for attempt := 0; ; attempt++ {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := MachineStatus(pctx, h)
		cancel()
		if err == nil {
			break
		}
		if h.MachinePID > 0 && !MachineAlive(m, h) {
			return fmt.Errorf("the machine of %s exited: %s", h.Name, tail(h.MachineLog(), 5))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the machine of %s did not answer on %s: %w (log: %s)", h.Name, h.ControlSocket(), err, h.MachineLog())
		case <-time.After(backoff.Delay(attempt, 10*time.Millisecond, 250*time.Millisecond)):
		}
	}
	return waitAgent(ctx, m, h)
}

// waitAgent waits until the agent of h answers on its own address.
func waitAgent(ctx context.Context, m *Manifest, h *HostManifest) error {
	c, err := api.ClientForHost(m.PKIDir(), h.Name, h.AgentAddress)
	if err != nil {
		return err
	}
	defer c.Close()
	for attempt := 0; ; attempt++ {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		err := c.Healthz(pctx)
		cancel()
		if err == nil {
			return nil
		}
		if !Alive(h) {
			st, _ := readMachineState(h)
			if st.Power == PowerOff {
				return errs.Refusedf("%s is powered off: `kvmctl lab power-on %s` boots it", h.Name, h.Name)
			}
			return fmt.Errorf("the agent of %s is not running (%s): %s", h.Name, st.AgentExit, tail(h.Log(), 5))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the agent of %s did not answer on %s: %w (log: %s)", h.Name, h.AgentAddress, err, h.Log())
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

// StartHosts brings up hosts: it starts the machine of each that has none running (the machine
// boots it, agent included) and the agent of each whose machine runs without one; it saves the
// machines' pids and waits until every agent answers.
func StartHosts(ctx context.Context, m *Manifest, hosts []*HostManifest) error {
	var startErr []error
	for _, h := range hosts {
		var err error
		if MachineAlive(m, h) {
			err = StartAgent(m, h)
		} else {
			err = startMachine(m, h)
		}
		if err != nil {
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

// Down stops every machine the lab started (each stops its agent, BMC and proxy); with purge it
// also removes the lab's directory.
func Down(m *Manifest, purge bool) error {
	// All at once: a lab of 100 machines stops in the time of its slowest one.
	errc := make([]error, len(m.Hosts))
	var wg sync.WaitGroup
	for i := range m.Hosts {
		wg.Go(func() { errc[i] = stopMachine(m, &m.Hosts[i], agentStopGrace+10*time.Second) })
	}
	wg.Wait()
	var all []error
	for _, err := range errc {
		if err != nil {
			all = append(all, err)
		}
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

// PIDString renders the agent's pid for tables: "-" when not running.
func PIDString(h *HostManifest) string {
	if !Alive(h) {
		return "-"
	}
	return strconv.Itoa(AgentPID(h))
}

// HostStatus is what the lab knows of one host right now: its machine, power, agent and faults.
type HostStatus struct {
	Host           *HostManifest
	MachineRunning bool
	// Power, BootID and Faults are the machine's; Power is "" when no machine runs.
	Power    string
	BootID   string
	Faults   Faults
	AgentPID int // 0 when no agent runs
	// AgentExit says how the last agent ended, when none runs.
	AgentExit string
}

// Status reports every host of the lab, from what each machine saved and which processes run.
func Status(m *Manifest) []HostStatus {
	out := make([]HostStatus, len(m.Hosts))
	for i := range m.Hosts {
		h := &m.Hosts[i]
		hs := HostStatus{Host: h, MachineRunning: MachineAlive(m, h)}
		if st, err := readMachineState(h); err == nil {
			hs.BootID, hs.Faults, hs.AgentExit = st.BootID, st.Faults, st.AgentExit
			if hs.MachineRunning {
				hs.Power = st.Power
			}
		}
		if Alive(h) {
			hs.AgentPID, hs.AgentExit = AgentPID(h), ""
		}
		out[i] = hs
	}
	return out
}
