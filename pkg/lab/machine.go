package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/virt"
)

// Power states of a lab machine.
const (
	PowerOn  = "on"
	PowerOff = "off"
)

// Faults are a machine's fault switches. Each outlives power cycles: a partition or a stalled
// NFS server does not go away because a host rebooted.
type Faults struct {
	// Partitioned: kvmctl's connections to the agent hang (`lab partition`).
	Partitioned bool `json:"partitioned"`
	// StorageStalled: the host's writes to the shared storage block (`lab storage-stall`).
	StorageStalled bool `json:"storage_stalled"`
	// BMCDown: the BMC answers nothing (`lab bmc-down`).
	BMCDown bool `json:"bmc_down"`
	// BMCOffFails: the BMC reports an error for every power off, and powers off anyway
	// (`lab bmc-off-fails`).
	BMCOffFails bool `json:"bmc_off_fails"`
}

// List names the faults that are on, in the words of their commands.
func (f Faults) List() []string {
	var out []string
	for _, x := range []struct {
		on   bool
		name string
	}{{f.Partitioned, "partition"}, {f.StorageStalled, "storage-stall"}, {f.BMCDown, "bmc-down"}, {f.BMCOffFails, "bmc-off-fails"}} {
		if x.on {
			out = append(out, x.name)
		}
	}
	return out
}

// MachineState is what a lab machine says about itself, in its machine.json (rewritten on every
// change) and on its control socket.
type MachineState struct {
	Host string `json:"host"`
	// PID is the machine process; Running is false once it stopped.
	PID     int    `json:"pid"`
	Running bool   `json:"running"`
	Power   string `json:"power"`
	BootID  string `json:"boot_id,omitempty"`
	// AgentPID is the running agent, 0 for none; AgentExit says how the last one ended.
	AgentPID  int       `json:"agent_pid,omitempty"`
	AgentExit string    `json:"agent_exit,omitempty"`
	Faults    Faults    `json:"faults"`
	UpdatedAt time.Time `json:"updated_at"`
}

// The machine's timings.
const (
	// diskWriteInterval is how often a running VM writes to its disks (its guest I/O).
	diskWriteInterval = time.Second
	// agentStopGrace is how long a stopping agent (machine shutdown, soft power off) may take
	// before it is killed.
	agentStopGrace = 5 * time.Second
)

// Where a VM's guest I/O lands in its disk file: records of diskRecordSize bytes, cycling over
// diskRecords slots after the first diskRecordBase bytes, so the file stops growing.
const (
	diskRecordBase = 4096
	diskRecordSize = 128
	diskRecords    = 32
)

// machine is one simulated host: its power, its agent process, its VMs' guest I/O, its BMC and
// the proxy in front of its agent. Every change of its state happens under mu and is saved to
// machine.json before mu is released.
type machine struct {
	lab *Manifest
	h   *HostManifest
	log *slog.Logger

	mu    sync.Mutex
	st    MachineState
	agent *agentProc
	// gen counts power changes: a soft power off that took a while acts only on the boot it
	// was asked of.
	gen       uint64
	seq       uint64          // guest I/O writes
	diskWarns map[string]bool // disks whose failure to be written was logged

	proxy *proxy
	// bmcDown is read for every packet the BMC receives; Faults.BMCDown mirrors it.
	bmcDown atomic.Bool
}

// agentProc is a running agent: done is closed once it exited and was reaped, err says how.
type agentProc struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// RunMachine runs host's machine of the lab in dir until ctx ends: it binds the host's proxy,
// BMC and control socket, powers the host on (a new boot id, the agent started), and on the
// way out stops the agent and saves its state. Its log goes to logw.
func RunMachine(ctx context.Context, dir, host string, logw io.Writer) error {
	m, err := Load(dir)
	if err != nil {
		return err
	}
	h, err := m.Host(host)
	if err != nil {
		return err
	}
	mc := &machine{lab: m, h: h, diskWarns: map[string]bool{},
		log: slog.New(slog.NewTextHandler(logw, nil)).With("host", h.Name),
		st:  MachineState{Host: h.Name, PID: os.Getpid(), Running: true, Power: PowerOff}}
	password, err := h.BMCPassword()
	if err != nil {
		return err
	}
	// The faults of a machine that ran before (the lab was down, or the machine was killed)
	// still hold: a stalled storage stays stalled. Only the power starts over.
	if prev, err := readMachineState(h); err == nil {
		mc.st.Faults = prev.Faults
		mc.bmcDown.Store(prev.Faults.BMCDown)
	}
	ctl, err := listenControl(h.ControlSocket())
	if err != nil {
		return err
	}
	defer ctl.Close()
	if mc.proxy, err = listenProxy(h.Address, h.AgentAddress); err != nil {
		return err
	}
	defer mc.proxy.Close()
	bmcSrv, err := newBMC(mc, password)
	if err != nil {
		return err
	}
	defer bmcSrv.Close()

	mc.mu.Lock()
	if err := mc.powerOnLocked(); err != nil {
		// The host is on without an agent: `lab status` and the agent log say why.
		mc.log.Error("boot: the agent did not start", "err", err)
	}
	mc.mu.Unlock()
	mc.log.Info("machine running", "pid", os.Getpid(), "proxy", h.Address, "agent", h.AgentAddress, "bmc", h.BMCAddress(),
		"control", h.ControlSocket())

	var wg sync.WaitGroup
	wg.Go(func() { serveControl(ctl, mc) })
	wg.Go(func() { mc.proxy.serve() })
	wg.Go(func() { _ = bmcSrv.Serve(context.Background()) })
	wg.Go(func() { mc.writeLoop(ctx) })

	<-ctx.Done()
	mc.log.Info("machine stopping", "reason", context.Cause(ctx))
	// No operation or BMC power-on may start an agent behind the stop.
	ctl.Close()
	bmcSrv.Close()
	mc.mu.Lock()
	mc.stopAgentLocked(syscall.SIGTERM, agentStopGrace)
	mc.st.Running = false
	mc.saveLocked()
	mc.mu.Unlock()
	mc.proxy.Close()
	wg.Wait()
	return nil
}

// saveLocked writes the machine's state to machine.json; a failure is logged, not fatal: the
// machine still runs and its control socket still tells.
func (mc *machine) saveLocked() {
	mc.st.UpdatedAt = time.Now().UTC()
	if err := writeJSON(mc.h.MachineStateFile(), mc.st); err != nil {
		mc.log.Error("save machine state", "err", err)
	}
}

func (mc *machine) snapshot() MachineState {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	return mc.st
}

func (mc *machine) powerIsOn() bool {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	return mc.st.Power == PowerOn
}

// powerOnLocked boots the host: a new boot id, the proxy open (unless partitioned), the agent
// started. Its VMs stay as the node file has them: shut off since the last power loss.
func (mc *machine) powerOnLocked() error {
	id, err := newBoot(mc.h)
	if err != nil {
		return fmt.Errorf("boot %s: %w", mc.h.Name, err)
	}
	mc.gen++
	mc.st.Power, mc.st.BootID = PowerOn, id
	mc.proxy.setCut(mc.st.Faults.Partitioned)
	mc.log.Info("power on", "boot_id", id)
	err = mc.startAgentLocked()
	mc.saveLocked()
	return err
}

// powerOffLocked cuts the power: nothing passes the proxy any more, the agent is killed (and
// reaped before this returns, so it writes nothing after), and the VMs stop: the node file
// shows them shut off. It returns the agent's pid (0 for none) and how many VMs ran.
func (mc *machine) powerOffLocked(why string) (agentPID, vms int, err error) {
	mc.gen++
	mc.st.Power = PowerOff
	mc.proxy.setCut(true)
	agentPID = mc.stopAgentLocked(syscall.SIGKILL, 0)
	vms, err = mc.shutOffVMs()
	mc.log.Info("power off", "why", why, "agent_pid", agentPID, "vms_stopped", vms, "err", err)
	mc.saveLocked()
	return agentPID, vms, err
}

// shutOffVMs rewrites the node file as a power loss leaves it and returns how many VMs ran.
func (mc *machine) shutOffVMs() (int, error) {
	path := mc.h.NodeFile()
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("stop the VMs of %s: %w", mc.h.Name, err)
	}
	doms, err := virt.NodeDomains(data)
	if err != nil {
		return 0, fmt.Errorf("stop the VMs of %s: %w", mc.h.Name, err)
	}
	running := 0
	for _, d := range doms {
		if d.State.Active() {
			running++
		}
	}
	off, err := virt.PowerOffNode(data)
	if err != nil {
		return 0, fmt.Errorf("stop the VMs of %s: %w", mc.h.Name, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return running, writeAtomic(path, off, fi.Mode().Perm())
}

// startAgentLocked starts the agent as the machine's child, its output appended to its log. It
// dies with the machine (a machine killed outright takes its host down with it).
func (mc *machine) startAgentLocked() error {
	switch {
	case mc.st.Power != PowerOn:
		return errs.Refusedf("%s is powered off: `kvmctl lab power-on %s` boots it, agent included", mc.h.Name, mc.h.Name)
	case mc.agent != nil:
		return errs.Refusedf("the agent of %s is already running (pid %d)", mc.h.Name, mc.st.AgentPID)
	}
	logf, err := os.OpenFile(mc.h.Log(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(mc.lab.Agent, "run", "--config", mc.h.Config())
	cmd.Dir = mc.h.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		mc.st.AgentExit = "did not start: " + err.Error()
		return fmt.Errorf("start the agent of %s: %w", mc.h.Name, err)
	}
	ap := &agentProc{cmd: cmd, done: make(chan struct{})}
	mc.agent = ap
	mc.st.AgentPID, mc.st.AgentExit = cmd.Process.Pid, ""
	mc.log.Info("agent started", "pid", cmd.Process.Pid)
	go func() {
		ap.err = cmd.Wait()
		close(ap.done)
		mc.agentExited(ap)
	}()
	return nil
}

// agentExited records an agent that ended by itself (or was killed from outside).
func (mc *machine) agentExited(ap *agentProc) {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	if mc.agent != ap {
		return // stopped by the machine, which recorded it
	}
	mc.agent = nil
	mc.st.AgentPID, mc.st.AgentExit = 0, exitText(ap.err)
	mc.log.Warn("agent exited", "how", mc.st.AgentExit)
	mc.saveLocked()
}

// stopAgentLocked sends sig to the agent and, after grace, SIGKILL; it returns once the agent is
// reaped, with its pid (0 when none ran).
func (mc *machine) stopAgentLocked(sig syscall.Signal, grace time.Duration) int {
	ap := mc.agent
	if ap == nil {
		return 0
	}
	pid := ap.cmd.Process.Pid
	_ = ap.cmd.Process.Signal(sig)
	if sig != syscall.SIGKILL {
		select {
		case <-ap.done:
		case <-time.After(grace):
			_ = ap.cmd.Process.Signal(syscall.SIGKILL)
		}
	}
	<-ap.done
	mc.agent = nil
	mc.st.AgentPID, mc.st.AgentExit = 0, exitText(ap.err)
	mc.log.Info("agent stopped", "pid", pid, "signal", sig.String(), "how", mc.st.AgentExit)
	mc.saveLocked()
	return pid
}

func exitText(err error) string {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return "exited with status 0"
	case errors.As(err, &ee):
		return ee.String()
	default:
		return err.Error()
	}
}

// writeLoop is the guest I/O of the host's running VMs, every diskWriteInterval.
func (mc *machine) writeLoop(ctx context.Context) {
	t := time.NewTicker(diskWriteInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			mc.writeDisks()
		}
	}
}

// writeDisks writes one record to every disk of every VM the node file shows running, unless
// the host is off or its storage stalled. It runs under mu: a write never lands after a power
// off or a stall has returned to whoever asked for it.
func (mc *machine) writeDisks() {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	if mc.st.Power != PowerOn || mc.st.Faults.StorageStalled {
		return
	}
	data, err := os.ReadFile(mc.h.NodeFile())
	var doms []virt.NodeDomain
	if err == nil {
		doms, err = virt.NodeDomains(data)
	}
	if err != nil {
		mc.warnOnce("node", "cannot read which VMs run: no guest I/O", err)
		return
	}
	mc.seq++
	for _, d := range doms {
		if d.State != virt.StateRunning {
			continue
		}
		for _, disk := range d.Disks {
			mc.writeDisk(d.Name, disk)
		}
	}
}

func (mc *machine) writeDisk(vm, disk string) {
	path := filepath.Clean(disk)
	if !strings.HasPrefix(path, mc.lab.SharedDir()+string(filepath.Separator)) {
		mc.warnOnce(path, "disk outside the lab's shared storage: not written", nil)
		return
	}
	// An existing regular file only: never create one, never follow a link planted there.
	f, err := os.OpenFile(path, os.O_WRONLY|syscall.O_NOFOLLOW, 0)
	if err == nil {
		rec := fmt.Sprintf("%s guest I/O of %s on %s, boot %s, write %d", time.Now().UTC().Format(time.RFC3339Nano), vm, mc.h.Name, mc.st.BootID, mc.seq)
		if len(rec) > diskRecordSize-1 {
			rec = rec[:diskRecordSize-1]
		}
		buf := []byte(rec + strings.Repeat(" ", diskRecordSize-1-len(rec)) + "\n")
		_, err = f.WriteAt(buf, diskRecordBase+int64(mc.seq%diskRecords)*diskRecordSize)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		mc.warnOnce(path, "guest I/O failed", err)
		return
	}
	delete(mc.diskWarns, path)
}

func (mc *machine) warnOnce(key, msg string, err error) {
	if mc.diskWarns[key] {
		return
	}
	mc.diskWarns[key] = true
	mc.log.Warn(msg, "what", key, "err", err)
}

// The operations of the machine's control socket, by name: each returns one line saying what it
// did, or refuses (errs.Refused) what does not apply.
var machineOps = map[string]func(mc *machine, q url.Values) (string, error){
	"crash":          (*machine).opCrash,
	"power-on":       (*machine).opPowerOn,
	"start-agent":    (*machine).opStartAgent,
	"kill-agent":     (*machine).opKillAgent,
	"stop-agent":     (*machine).opStopAgent,
	"partition":      (*machine).opPartition,
	"heal":           (*machine).opHeal,
	"storage-stall":  (*machine).opStorageStall,
	"storage-resume": (*machine).opStorageResume,
	"bmc-down":       (*machine).opBMCDown,
	"bmc-off-fails":  (*machine).opBMCOffFails,
	"bmc-up":         (*machine).opBMCUp,
}

func (mc *machine) opCrash(url.Values) (string, error) {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	if mc.st.Power == PowerOff {
		return "", errs.Refusedf("%s is already off: nothing to crash (`kvmctl lab power-on %s` boots it)", mc.h.Name, mc.h.Name)
	}
	pid, vms, err := mc.powerOffLocked("lab crash")
	if err != nil {
		return "", err
	}
	agent := "no agent ran"
	if pid > 0 {
		agent = fmt.Sprintf("its agent (pid %d) killed", pid)
	}
	return fmt.Sprintf("crashed %s: power lost, %s, %d running VM%s stopped, nothing more written to the shared storage; its BMC answers: power off",
		mc.h.Name, agent, vms, plural(vms)), nil
}

func (mc *machine) opPowerOn(url.Values) (string, error) {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	if mc.st.Power == PowerOn {
		return "", errs.Refusedf("%s is already on", mc.h.Name)
	}
	if err := mc.powerOnLocked(); err != nil {
		return "", err
	}
	return fmt.Sprintf("powered on %s: boot id %s, agent pid %d; its VMs stay shut off until started", mc.h.Name, mc.st.BootID, mc.st.AgentPID), nil
}

func (mc *machine) opStartAgent(url.Values) (string, error) {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	if err := mc.startAgentLocked(); err != nil {
		return "", err
	}
	mc.saveLocked()
	return fmt.Sprintf("started the agent of %s (pid %d)", mc.h.Name, mc.st.AgentPID), nil
}

func (mc *machine) opKillAgent(url.Values) (string, error) {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	if mc.agent == nil {
		if mc.st.Power == PowerOff {
			return "", errs.Refusedf("the agent of %s is not running: the host is powered off", mc.h.Name)
		}
		return "", errs.Refusedf("the agent of %s is not running", mc.h.Name)
	}
	pid := mc.stopAgentLocked(syscall.SIGKILL, 0)
	return fmt.Sprintf("killed the agent of %s (pid %d); the host and its VMs run on", mc.h.Name, pid), nil
}

// opStopAgent asks the agent to stop (SIGTERM) and kills it after q's grace (a duration, 5s
// when absent); no agent is no error.
func (mc *machine) opStopAgent(q url.Values) (string, error) {
	grace := agentStopGrace
	if g := q.Get("grace"); g != "" {
		d, err := time.ParseDuration(g)
		if err != nil || d < 0 {
			return "", errs.Refusedf("grace %q: want a duration such as 5s", g)
		}
		grace = d
	}
	mc.mu.Lock()
	defer mc.mu.Unlock()
	if pid := mc.stopAgentLocked(syscall.SIGTERM, grace); pid > 0 {
		return fmt.Sprintf("stopped the agent of %s (pid %d)", mc.h.Name, pid), nil
	}
	return fmt.Sprintf("the agent of %s was not running", mc.h.Name), nil
}

// setFault turns the fault at flag on or off, doing apply (when not nil) first, and returns
// done; it refuses, saying refusal, when the fault already is so.
func (mc *machine) setFault(flag *bool, on bool, refusal string, apply func() error, done string) (string, error) {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	if *flag == on {
		return "", errs.Refused(errors.New(refusal))
	}
	if apply != nil {
		if err := apply(); err != nil {
			return "", err
		}
	}
	*flag = on
	mc.log.Info("faults changed", "faults", strings.Join(mc.st.Faults.List(), ","))
	mc.saveLocked()
	return done, nil
}

func (mc *machine) opPartition(url.Values) (string, error) {
	n := mc.h.Name
	return mc.setFault(&mc.st.Faults.Partitioned, true, fmt.Sprintf("%s is already partitioned (`kvmctl lab heal %s` ends it)", n, n),
		func() error { mc.proxy.setCut(true); return nil },
		fmt.Sprintf("partitioned %s: kvmctl's connections to its agent at %s hang; the host and its VMs run on", n, mc.h.Address))
}

func (mc *machine) opHeal(url.Values) (string, error) {
	n := mc.h.Name
	return mc.setFault(&mc.st.Faults.Partitioned, false, fmt.Sprintf("%s is not partitioned", n),
		func() error { mc.proxy.setCut(mc.st.Power == PowerOff); return nil },
		fmt.Sprintf("healed %s: kvmctl reaches its agent at %s again", n, mc.h.Address))
}

func (mc *machine) opStorageStall(url.Values) (string, error) {
	n := mc.h.Name
	return mc.setFault(&mc.st.Faults.StorageStalled, true,
		fmt.Sprintf("the shared storage of %s is already stalled (`kvmctl lab storage-resume %s` ends it)", n, n),
		func() error {
			// The agent's heartbeat writer blocks while this file exists (lab.storage.stall.file).
			if err := os.WriteFile(mc.h.StallFile(), []byte("stalled by kvmctl lab storage-stall\n"), 0o644); err != nil {
				return fmt.Errorf("stall the storage of %s: %w", n, err)
			}
			return nil
		},
		fmt.Sprintf("stalled the shared storage of %s: its heartbeat and VM disk writes block; its agent still answers", n))
}

func (mc *machine) opStorageResume(url.Values) (string, error) {
	n := mc.h.Name
	return mc.setFault(&mc.st.Faults.StorageStalled, false, fmt.Sprintf("the shared storage of %s is not stalled", n),
		func() error {
			if err := os.Remove(mc.h.StallFile()); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("resume the storage of %s: %w", n, err)
			}
			return nil
		},
		fmt.Sprintf("resumed the shared storage of %s: its heartbeat and VM disks are written again", n))
}

func (mc *machine) opBMCDown(url.Values) (string, error) {
	n := mc.h.Name
	return mc.setFault(&mc.st.Faults.BMCDown, true, fmt.Sprintf("the BMC of %s is already down (`kvmctl lab bmc-up %s` brings it back)", n, n),
		func() error { mc.bmcDown.Store(true); return nil },
		fmt.Sprintf("the BMC of %s stopped answering: IPMI to %s times out; the host itself is not touched", n, mc.h.BMCAddress()))
}

func (mc *machine) opBMCOffFails(url.Values) (string, error) {
	n := mc.h.Name
	return mc.setFault(&mc.st.Faults.BMCOffFails, true, fmt.Sprintf("the BMC of %s already fails its power offs", n), nil,
		fmt.Sprintf("the BMC of %s now answers every power off with an error, and powers off all the same", n))
}

func (mc *machine) opBMCUp(url.Values) (string, error) {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	if !mc.st.Faults.BMCDown && !mc.st.Faults.BMCOffFails {
		return "", errs.Refusedf("the BMC of %s has no fault: it answers", mc.h.Name)
	}
	mc.st.Faults.BMCDown, mc.st.Faults.BMCOffFails = false, false
	mc.bmcDown.Store(false)
	mc.log.Info("bmc up")
	mc.saveLocked()
	return fmt.Sprintf("the BMC of %s answers again, without faults, on %s", mc.h.Name, mc.h.BMCAddress()), nil
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
