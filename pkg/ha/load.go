package ha

import (
	"fmt"
	"time"

	"github.com/kvmctl/kvmctl/pkg/fence"
	"github.com/kvmctl/kvmctl/pkg/holds"
	"github.com/kvmctl/kvmctl/pkg/orchestrate"
	"github.com/kvmctl/kvmctl/pkg/settings"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// fleet is what one tick reads of the state file, in one read transaction.
type fleet struct {
	cfg   Config
	hosts map[string]state.Host
	// order is every host's name, in the inventory's order.
	order []string
	// enabled says whether HA protects a host (its own switch, else its cluster's).
	enabled map[string]bool
	// watched are the hosts whose health is checked: every host of a cluster with an HA host
	// (the others serve as neighbours).
	watched map[string]bool
	records map[string]state.HAHost
	status  map[string]state.HostStatus
	// action is the effective HA action of each host's BMC (off, reboot, blink, none), and
	// noBMC why a host whose action powers it down cannot be fenced ("" when it can).
	action map[string]string
	noBMC  map[string]string
	// busy says why a host may not be touched now: maintenance, a maintenance action or a
	// rolling run working on it ("" when free).
	busy map[string]string
	// requests are the operators' words pending for the watch (confirm-down, clear).
	requests map[string]state.HARequest
}

// LoadConfig reads the kvm.ha.* settings (and those HA shares: kvm.ssh.to.agent, the
// overprovisioning factors).
func LoadConfig(tx state.Tx) (Config, error) {
	var c Config
	var err error
	secs := func(name string) time.Duration {
		if err != nil {
			return 0
		}
		var n int64
		n, err = settings.GetInt(tx, name)
		return time.Duration(n) * time.Second
	}
	num := func(name string) int {
		if err != nil {
			return 0
		}
		var n int64
		n, err = settings.GetInt(tx, name)
		return int(n)
	}
	c.HealthInterval = secs(settings.HealthCheckInterval)
	c.HealthTimeout = secs(settings.HealthCheckTimeout)
	c.CheckInterval = secs(settings.ActivityCheckInterval)
	c.Neighbours = num(settings.ActivityNeighbours)
	c.MaxAttempts = num(settings.ActivityMaxAttempts)
	c.RestartEvery = secs(settings.DegradedRestartEvery)
	c.StartupGrace = secs(settings.FenceStartupGrace)
	c.QuietTime = secs(settings.FenceQuietTime)
	c.RecoverParallel = num(settings.RecoverMaxParallel)
	if err != nil {
		return c, err
	}
	if c.StormRatio, err = settings.GetFloat(tx, settings.StormRatio); err != nil {
		return c, err
	}
	if c.RecoverWithoutFence, err = settings.GetBool(tx, settings.RecoverWithoutFence); err != nil {
		return c, err
	}
	if c.SSHToAgent, err = settings.GetBool(tx, settings.SSHToAgent); err != nil {
		return c, err
	}
	if c.CPUFactor, err = settings.GetFloat(tx, settings.CPUOverprovisioning); err != nil {
		return c, err
	}
	c.MemFactor, err = settings.GetFloat(tx, settings.MemOverprovisioning)
	return c, err
}

// Enabled says whether HA protects host h: its own switch, else its cluster's, else off.
func Enabled(tx state.Tx, h state.Host) (bool, string, error) {
	if e, ok, err := state.GetHAEnabled(tx, "host", h.Name); err != nil || ok {
		return e.Enabled, "host", err
	}
	if e, ok, err := state.GetHAEnabled(tx, "cluster", h.Cluster); err != nil || ok {
		return e.Enabled, "cluster", err
	}
	return false, "", nil
}

// Action returns host h's effective HA action (none when unset) and, when it powers the host
// down, what its BMC settings lack ("" when they are complete).
func Action(tx state.Tx, h state.Host) (action, missing string, err error) {
	cb, err := state.GetBMC(tx, "cluster", h.Cluster)
	if err != nil {
		return "", "", err
	}
	hb, err := state.GetBMC(tx, "host", h.Name)
	if err != nil {
		return "", "", err
	}
	b, _ := fence.Effective(cb, hb)
	action = b.Action
	if action == "" {
		action = "none"
	}
	if action == string(fence.ActionOff) || action == string(fence.ActionReboot) || action == string(fence.ActionBlink) {
		if m := fence.Missing(b); len(m) > 0 {
			missing = fmt.Sprintf("its BMC settings lack %v (`kvmctl bmc set --host %s`)", m, h.Name)
		}
	}
	return action, missing, nil
}

func loadFleet(tx state.Tx) (*fleet, error) {
	f := &fleet{hosts: map[string]state.Host{}, enabled: map[string]bool{}, watched: map[string]bool{}, records: map[string]state.HAHost{},
		status: map[string]state.HostStatus{}, action: map[string]string{}, noBMC: map[string]string{}, busy: map[string]string{},
		requests: map[string]state.HARequest{}}
	var err error
	if f.cfg, err = LoadConfig(tx); err != nil {
		return nil, err
	}
	hosts, err := state.Hosts(tx)
	if err != nil {
		return nil, err
	}
	haClusters := map[string]bool{}
	for _, h := range hosts {
		f.hosts[h.Name] = h
		f.order = append(f.order, h.Name)
		on, _, err := Enabled(tx, h)
		if err != nil {
			return nil, err
		}
		f.enabled[h.Name] = on
		if on {
			haClusters[h.Cluster] = true
		}
	}
	for _, h := range hosts {
		if !haClusters[h.Cluster] {
			continue
		}
		f.watched[h.Name] = true
		if f.records[h.Name], _, err = state.GetHAHost(tx, h.Name); err != nil {
			return nil, err
		}
		if f.status[h.Name], err = state.GetHostStatus(tx, h.Name); err != nil {
			return nil, err
		}
		if f.action[h.Name], f.noBMC[h.Name], err = Action(tx, h); err != nil {
			return nil, err
		}
		if f.busy[h.Name], err = busy(tx, h); err != nil {
			return nil, err
		}
		if r, ok, err := state.GetHARequest(tx, h.Name); err != nil {
			return nil, err
		} else if ok {
			f.requests[h.Name] = r
		}
	}
	return f, nil
}

// busy says why h may not be fenced now by HA: it is in maintenance (a Maintenance script that
// reboots a host is no crash), a maintenance action or a fence holds it, or a rolling run works
// on it; "" when none.
func busy(tx state.Tx, h state.Host) (string, error) {
	switch h.ResourceState {
	case state.PrepareForMaintenance, state.Maintenance, state.ErrorInMaintenance:
		return "in " + h.ResourceState, nil
	}
	if hold, ok, err := holds.Get(tx, holds.Host(h.Name)); err != nil {
		return "", err
	} else if ok && hold.Kind != holds.Fencing {
		return "held by " + hold.What, nil
	}
	run, working, err := orchestrate.RollingWork(tx, h)
	if err != nil || !working {
		return "", err
	}
	return "rolling run " + run + " works on it", nil
}
