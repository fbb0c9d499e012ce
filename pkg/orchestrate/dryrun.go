package orchestrate

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/kvmctl/kvmctl/pkg/clock"
	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/inventory"
	"github.com/kvmctl/kvmctl/pkg/settings"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// DryRunPlan is what `rolling start --dry-run` prints: the order, the scripts on each host and
// each host's capacity verdict. Building it changes nothing, not even the stored statuses.
type DryRunPlan struct {
	Clusters       []string      `json:"clusters"`
	Timeout        time.Duration `json:"timeout"`
	PingInterval   time.Duration `json:"ping_interval"`
	MaxUnavailable int           `json:"max_unavailable"`
	Forced         bool          `json:"forced"`
	Hosts          []DryRunHost  `json:"hosts"`
	// Problems are what would stop a real run before any action (or, with --forced, skip
	// those hosts): VMs that fit nowhere, agents that do not answer, refused scripts.
	Problems []string `json:"problems"`
	// WouldStop: a real run would stop on Problems (without --forced).
	WouldStop bool `json:"would_stop"`
}

// DryRunHost is one host of a dry run.
type DryRunHost struct {
	Order      int               `json:"order"`
	Host       string            `json:"host"`
	Cluster    string            `json:"cluster"`
	Batch      int               `json:"batch"`
	Connection string            `json:"connection"`
	Scripts    map[string]string `json:"scripts"`
	Capacity   string            `json:"capacity"`
	Fits       bool              `json:"fits"`
	Moves      []Placement       `json:"moves"`
}

// DryRun validates req as Start would and reports the plan.
func (r *Rolling) DryRun(ctx context.Context, req RollingRequest) (DryRunPlan, error) {
	var p rollPlan
	if err := r.Store.View(func(tx state.Tx) (err error) { p, err = r.validate(tx, &req); return err }); err != nil {
		return DryRunPlan{}, err
	}
	out := DryRunPlan{Clusters: p.clusters, Timeout: p.timeout, PingInterval: p.pingInterval, MaxUnavailable: req.MaxUnavailable, Forced: req.Forced}
	var cpuF, memF float64
	byCluster := map[string][]state.Host{}
	prev := map[string]state.HostStatus{}
	if err := r.Store.View(func(tx state.Tx) error {
		var err error
		if cpuF, err = settings.GetFloat(tx, settings.CPUOverprovisioning); err != nil {
			return err
		}
		if memF, err = settings.GetFloat(tx, settings.MemOverprovisioning); err != nil {
			return err
		}
		for _, c := range p.clusters {
			hs, err := inventory.ClusterHosts(tx, c)
			if err != nil {
				return err
			}
			byCluster[c] = hs
			for _, h := range hs {
				if prev[h.Name], err = state.GetHostStatus(tx, h.Name); err != nil {
					return err
				}
			}
		}
		return nil
	}); err != nil {
		return out, err
	}
	var all []state.Host
	for _, c := range p.clusters {
		all = append(all, byCluster[c]...)
	}
	dial := func(h state.Host) (StatusClient, error) { return r.Dial(h) }
	status := map[string]state.HostStatus{}
	w := r.Waits.withDefaults()
	for _, ch := range CheckHosts(ctx, all, prev, dial, r.clock(), w.AgentCall) {
		status[ch.Host.Name] = ch.Status
	}
	order, batch, inBatch, last := 0, 0, 0, ""
	for _, h := range p.hosts {
		if h.Cluster != last {
			last, inBatch = h.Cluster, 0
			batch++
		} else if inBatch == req.MaxUnavailable {
			inBatch = 0
			batch++
		}
		inBatch++
		order++
		dh := DryRunHost{Order: order, Host: h.Name, Cluster: h.Cluster, Batch: batch, Connection: status[h.Name].Connection, Scripts: map[string]string{}, Moves: []Placement{}}
		for _, s := range events.Stages() {
			dh.Scripts[string(s)] = "unknown (agent unreachable)"
		}
		if a, err := r.Dial(h); err == nil {
			hctx, cancel := clock.WithTimeout(ctx, r.clock(), w.AgentCall)
			scripts, err := a.Hooks(hctx)
			cancel()
			if err == nil {
				for _, s := range scripts {
					switch {
					case s.Refused != "":
						dh.Scripts[string(s.Stage)] = "refused: " + s.Refused
					case s.Present:
						dh.Scripts[string(s.Stage)] = "present"
					default:
						dh.Scripts[string(s.Stage)] = "missing"
					}
				}
			}
		}
		out.Hosts = append(out.Hosts, dh)
	}
	// Capacity per batch, as the run would plan it.
	for i := 0; i < len(out.Hosts); {
		j := i
		for j < len(out.Hosts) && out.Hosts[j].Batch == out.Hosts[i].Batch {
			j++
		}
		names := []string{}
		for _, dh := range out.Hosts[i:j] {
			names = append(names, dh.Host)
		}
		plan, err := PlanCapacity(CapacityInput{Hosts: CapacityHosts(byCluster[out.Hosts[i].Cluster], status), Empty: names, CPUFactor: cpuF, MemFactor: memF})
		for k := i; k < j; k++ {
			dh := &out.Hosts[k]
			if err != nil {
				dh.Capacity = "cannot plan: " + err.Error()
				continue
			}
			var why []string
			for _, u := range plan.Unplaced {
				if u.From == dh.Host {
					why = append(why, fmt.Sprintf("%s: %s", u.VM, u.Reason))
				}
			}
			for _, pl := range plan.Placements {
				if pl.From == dh.Host {
					dh.Moves = append(dh.Moves, pl)
				}
			}
			dh.Fits = len(why) == 0
			if dh.Fits {
				dh.Capacity = fmt.Sprintf("fits: %d VMs to move", len(dh.Moves))
			} else {
				dh.Capacity = "does not fit: " + strings.Join(why, "; ")
			}
		}
		i = j
	}
	out.Problems = []string{}
	for _, dh := range out.Hosts {
		if dh.Connection != state.ConnUp {
			out.Problems = append(out.Problems, dh.Host+": agent not answering (PreFlight would fail)")
		}
		if !dh.Fits {
			out.Problems = append(out.Problems, dh.Host+": "+dh.Capacity)
		}
		for _, st := range events.Stages() {
			if v := dh.Scripts[string(st)]; strings.HasPrefix(v, "refused") {
				out.Problems = append(out.Problems, fmt.Sprintf("%s: %s script %s", dh.Host, st, v))
			}
		}
	}
	out.WouldStop = len(out.Problems) > 0 && !req.Forced
	return out, nil
}
