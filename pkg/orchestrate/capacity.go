// Package orchestrate holds kvmctl's engines: maintenance, rolling maintenance and capacity
// planning. Engines decide; they take their collaborators as small interfaces and know no screen.
package orchestrate

// This file is the capacity planner: a pure function that answers "can these hosts be emptied
// right now?" before anything is changed. It does no I/O so that the rolling engine can call it
// both before PreFlight and again just before each host enters maintenance (seed 001: "capacity
// checks are recalculated"), and so that every placement rule is unit-testable on plain values.

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
)

// GroupType says whether an affinity group keeps its VMs together or apart. The values are
// CloudStack's, so operators recognise them.
type GroupType string

const (
	// GroupHostAffinity keeps all running VMs of the group on one host.
	GroupHostAffinity GroupType = "host-affinity"
	// GroupHostAntiAffinity keeps every running VM of the group on a different host.
	GroupHostAntiAffinity GroupType = "host-anti-affinity"
)

// DefaultOverprovisioningFactor is the default of cpu.overprovisioning.factor and
// mem.overprovisioning.factor: no overcommit unless the operator asks for it.
const DefaultOverprovisioningFactor = 1.0

// The host and VM states the planner looks at; the other values only matter as "not this".
const (
	capResourceEnabled = "Enabled"
	capConnectionUp    = "Up"
	capAgentUp         = "Up"
	capVMRunning       = "running"
)

// AffinityGroup is one group a VM belongs to. Groups are identified by name within their type.
type AffinityGroup struct {
	Name string
	Type GroupType
}

// CapacityVM is a VM as the planner sees it: what it consumes and where it may go.
type CapacityVM struct {
	Name  string
	UUID  string
	State string // libvirt state: "running", "shutoff", ...; only "running" VMs use or need capacity
	VCPUs int
	// MemoryMiB is the memory the VM is allotted, in MiB.
	MemoryMiB uint64
	// RequiredTags must all be on a host for the VM to run there.
	RequiredTags []string
	Groups       []AffinityGroup
}

// CapacityHost is a host as the planner sees it: its states decide whether it may take VMs, its
// size and running VMs decide how many.
type CapacityHost struct {
	Name          string
	Cluster       string
	ResourceState string // Enabled, Disabled, PrepareForMaintenance, ErrorInMaintenance, Maintenance
	Connection    string // Up, Disconnected, Down
	AgentState    string // Up, hostInMaintenance
	CPUs          int
	MemoryMiB     uint64
	Tags          []string
	VMs           []CapacityVM
}

// CapacityInput is everything PlanCapacity needs. Factors are passed in rather than read from
// settings so the planner stays pure; the caller fills them from cpu.overprovisioning.factor and
// mem.overprovisioning.factor (DefaultOverprovisioningFactor when unset).
type CapacityInput struct {
	// Hosts are the hosts of the cluster; hosts of other clusters may be included and are ignored.
	Hosts []CapacityHost
	// Empty names the hosts to evacuate together (several for rolling --max-unavailable N).
	Empty     []string
	CPUFactor float64
	MemFactor float64
	// Prefer names targets to fill first: rolling maintenance prefers the hosts it has already
	// updated, so that a VM lands on a patched host and does not move twice.
	Prefer []string
}

// Placement moves one running VM off a host being emptied.
type Placement struct {
	VM   string `json:"vm"`
	UUID string `json:"uuid"`
	From string `json:"from"`
	To   string `json:"to"`
}

// Unplaced is a running VM that fits on no host; Reason tells the operator what to change.
type Unplaced struct {
	VM     string `json:"vm"`
	UUID   string `json:"uuid"`
	From   string `json:"from"`
	Reason string `json:"reason"`
}

// Plan is the outcome of PlanCapacity. Placements are listed in the order they were decided
// (biggest first), which is also a sensible migration order.
type Plan struct {
	Placements []Placement
	Unplaced   []Unplaced
}

// OK reports whether every running VM found a host; a plan that is not OK must refuse
// maintenance, since entering it would leave VMs with nowhere to go.
func (p Plan) OK() bool { return len(p.Unplaced) == 0 }

// PlanCapacity plans the evacuation of in.Empty, all at once: the VMs of all those hosts must fit
// on the other hosts of the cluster at the same time. It returns an error only for invalid input;
// VMs that fit nowhere are reported in Plan.Unplaced. The result depends only on the input
// values, not on the order of hosts or VMs in it.
//
// The planner is greedy: units (a VM, or the moving VMs of an affinity group, which must land
// together) are placed biggest first (memory, then vCPU, then name), each on the eligible host with
// the most free memory (then most free vCPU, then host name). Biggest first places the hard VMs
// while the most room is left; most-free-memory ("worst fit") spreads the evacuated load instead
// of stacking it on one host that then runs hot. A greedy plan can miss a packing that exists; it
// then refuses maintenance, which is the safe way to be wrong.
func PlanCapacity(in CapacityInput) (Plan, error) {
	hosts, empty, cluster, err := validateCapacityInput(in)
	if err != nil {
		return Plan{}, err
	}
	p := planner{cluster: cluster, empty: empty, anchors: map[string][]string{}}
	var movers []mover
	for _, h := range hosts { // sorted by name: input order never shows in the plan
		if empty[h.Name] {
			for i := range h.VMs {
				if h.VMs[i].State == capVMRunning {
					movers = append(movers, mover{vm: &h.VMs[i], from: h.Name})
				}
			}
			p.others = append(p.others, other{host: h, why: "being emptied"})
			continue
		}
		t := newTarget(h, in.CPUFactor, in.MemFactor)
		t.preferred = slices.Contains(in.Prefer, h.Name)
		for _, vm := range h.VMs {
			if vm.State != capVMRunning {
				continue
			}
			for _, g := range vm.Groups {
				if g.Type == GroupHostAffinity && !slices.Contains(p.anchors[g.Name], h.Name) {
					// Hosts are visited in name order, so each anchor list stays sorted.
					p.anchors[g.Name] = append(p.anchors[g.Name], h.Name)
				}
			}
		}
		p.targets = append(p.targets, t)
		p.others = append(p.others, other{host: h, why: ineligibility(h)})
	}

	plan := Plan{Placements: []Placement{}, Unplaced: []Unplaced{}}
	for _, u := range buildUnits(movers) {
		to, reason := p.place(u)
		for _, m := range u.members {
			if reason != "" {
				plan.Unplaced = append(plan.Unplaced, Unplaced{VM: m.vm.Name, UUID: m.vm.UUID, From: m.from, Reason: reason})
			} else {
				plan.Placements = append(plan.Placements, Placement{VM: m.vm.Name, UUID: m.vm.UUID, From: m.from, To: to.name})
			}
		}
	}
	return plan, nil
}

// validateCapacityInput refuses input that would make any plan meaningless, and returns the hosts
// of the cluster being emptied sorted by name, the set of hosts to empty, and that cluster.
func validateCapacityInput(in CapacityInput) ([]*CapacityHost, map[string]bool, string, error) {
	for _, f := range []struct {
		key string
		v   float64
	}{{"cpu.overprovisioning.factor", in.CPUFactor}, {"mem.overprovisioning.factor", in.MemFactor}} {
		if !(f.v > 0) || math.IsInf(f.v, 0) {
			return nil, nil, "", fmt.Errorf("%s must be a positive number, got %v: set it with `kvmctl config set %s 1.0`", f.key, f.v, f.key)
		}
	}
	if len(in.Empty) == 0 {
		return nil, nil, "", errors.New("no host to empty: name at least one host")
	}
	byName := map[string]*CapacityHost{}
	for i := range in.Hosts {
		h := &in.Hosts[i]
		if h.Name == "" {
			return nil, nil, "", fmt.Errorf("host #%d has no name", i+1)
		}
		if byName[h.Name] != nil {
			return nil, nil, "", fmt.Errorf("host %s is listed twice", h.Name)
		}
		byName[h.Name] = h
		if h.CPUs < 0 {
			return nil, nil, "", fmt.Errorf("host %s: negative CPU count %d", h.Name, h.CPUs)
		}
		for _, vm := range h.VMs {
			if vm.VCPUs < 0 {
				return nil, nil, "", fmt.Errorf("vm %s on host %s: negative vCPU count %d", vm.Name, h.Name, vm.VCPUs)
			}
			for _, g := range vm.Groups {
				// An unknown type silently ignored would silently drop a placement rule.
				if g.Type != GroupHostAffinity && g.Type != GroupHostAntiAffinity {
					return nil, nil, "", fmt.Errorf("vm %s on host %s: group %s has unknown type %q (want %s or %s)",
						vm.Name, h.Name, g.Name, g.Type, GroupHostAffinity, GroupHostAntiAffinity)
				}
			}
		}
	}
	empty := map[string]bool{}
	var first *CapacityHost
	for _, name := range in.Empty {
		h := byName[name]
		if h == nil {
			return nil, nil, "", fmt.Errorf("unknown host %q to empty: it is not among the %d hosts given", name, len(in.Hosts))
		}
		if first == nil {
			first = h
		} else if h.Cluster != first.Cluster {
			// VMs migrate within a cluster, so hosts of two clusters are two independent plans.
			return nil, nil, "", fmt.Errorf("hosts to empty are in different clusters (%s in %s, %s in %s): plan each cluster separately",
				first.Name, first.Cluster, h.Name, h.Cluster)
		}
		empty[name] = true // a name given twice is still one host
	}
	var hosts []*CapacityHost
	for i := range in.Hosts {
		if in.Hosts[i].Cluster == first.Cluster {
			hosts = append(hosts, &in.Hosts[i])
		}
	}
	slices.SortFunc(hosts, func(a, b *CapacityHost) int { return strings.Compare(a.Name, b.Name) })
	return hosts, empty, first.Cluster, nil
}

// ineligibility says why a host that is not being emptied cannot take VMs, or "" if it can. It
// lists every failing state, so the operator fixes them all at once.
func ineligibility(h *CapacityHost) string {
	var why []string
	if h.ResourceState != capResourceEnabled {
		why = append(why, orUnknown(h.ResourceState, "no resource state"))
	}
	if h.Connection != capConnectionUp {
		why = append(why, orUnknown(h.Connection, "no connection state"))
	}
	if h.AgentState != capAgentUp {
		why = append(why, orUnknown(h.AgentState, "no agent state"))
	}
	return strings.Join(why, " and ")
}

func orUnknown(s, unknown string) string {
	if s == "" {
		return unknown
	}
	return s
}

// mover is a running VM on a host being emptied.
type mover struct {
	vm   *CapacityVM
	from string
}

// compareMovers orders biggest first; name, source and UUID only make the order total.
func compareMovers(a, b mover) int {
	switch {
	case a.vm.MemoryMiB != b.vm.MemoryMiB:
		return cmpDesc(a.vm.MemoryMiB, b.vm.MemoryMiB)
	case a.vm.VCPUs != b.vm.VCPUs:
		return cmpDesc(a.vm.VCPUs, b.vm.VCPUs)
	case a.vm.Name != b.vm.Name:
		return strings.Compare(a.vm.Name, b.vm.Name)
	case a.from != b.from:
		return strings.Compare(a.from, b.from)
	}
	return strings.Compare(a.vm.UUID, b.vm.UUID)
}

func cmpDesc[T int | int64 | uint64](a, b T) int {
	switch {
	case a > b:
		return -1
	case a < b:
		return 1
	}
	return 0
}

// unit is what lands on one host: a lone VM, or all moving VMs joined (transitively) by host
// affinity groups. Placing the group as one keeps "all on one host" true by construction.
type unit struct {
	members []mover // biggest first
	cpu     int64
	mem     int64
	tags    []string // union of the members' required tags, sorted
	aff     []string // affinity group names, sorted
	anti    []string // anti-affinity group names, sorted
}

func buildUnits(movers []mover) []*unit {
	slices.SortFunc(movers, compareMovers)
	// Union-find over movers sharing an affinity group.
	parent := make([]int, len(movers))
	for i := range parent {
		parent[i] = i
	}
	find := func(i int) int {
		for parent[i] != i {
			parent[i] = parent[parent[i]]
			i = parent[i]
		}
		return i
	}
	firstIn := map[string]int{}
	for i, m := range movers {
		for _, g := range m.vm.Groups {
			if g.Type != GroupHostAffinity {
				continue
			}
			if j, ok := firstIn[g.Name]; ok {
				parent[find(i)] = find(j)
			} else {
				firstIn[g.Name] = i
			}
		}
	}
	byRoot := map[int]*unit{}
	var units []*unit
	for i, m := range movers { // movers are sorted, so members stay biggest first
		r := find(i)
		u := byRoot[r]
		if u == nil {
			u = &unit{}
			byRoot[r] = u
			units = append(units, u)
		}
		u.members = append(u.members, m)
		u.cpu += int64(m.vm.VCPUs)
		u.mem = satAdd(u.mem, m.vm.MemoryMiB)
		u.tags = addSorted(u.tags, m.vm.RequiredTags...)
		for _, g := range m.vm.Groups {
			if g.Type == GroupHostAffinity {
				u.aff = addSorted(u.aff, g.Name)
			} else {
				u.anti = addSorted(u.anti, g.Name)
			}
		}
	}
	slices.SortFunc(units, func(a, b *unit) int {
		switch {
		case a.mem != b.mem:
			return cmpDesc(a.mem, b.mem)
		case a.cpu != b.cpu:
			return cmpDesc(a.cpu, b.cpu)
		}
		return compareMovers(a.members[0], b.members[0])
	})
	return units
}

func addSorted(s []string, vs ...string) []string {
	for _, v := range vs {
		if i, found := slices.BinarySearch(s, v); !found {
			s = slices.Insert(s, i, v)
		}
	}
	return s
}

// satAdd and satSub count MiB without wrapping around: absurd sizes must fail to fit, not fit by
// overflow.
func satAdd(a int64, b uint64) int64 {
	if b > math.MaxInt64 || a > math.MaxInt64-int64(b) {
		return math.MaxInt64
	}
	return a + int64(b)
}

func satSub(a int64, b uint64) int64 {
	if b > math.MaxInt64 || a < math.MinInt64+int64(b) {
		return math.MinInt64
	}
	return a - int64(b)
}

// target is a host of the cluster that is not being emptied, with the room left on it.
type target struct {
	name     string
	eligible bool
	tags     map[string]bool
	freeCPU  int64           // may go negative on an overcommitted host
	freeMem  int64           // likewise
	antiHere map[string]bool // anti-affinity groups with a running or planned member here
	// preferred targets are filled first (see CapacityInput.Prefer).
	preferred bool
}

func newTarget(h *CapacityHost, cpuFactor, memFactor float64) *target {
	t := &target{
		name:     h.Name,
		eligible: ineligibility(h) == "",
		tags:     map[string]bool{},
		freeCPU:  scale(uint64(h.CPUs), cpuFactor),
		freeMem:  scale(h.MemoryMiB, memFactor),
		antiHere: map[string]bool{},
	}
	for _, tag := range h.Tags {
		t.tags[tag] = true
	}
	for _, vm := range h.VMs {
		// Only running VMs hold CPU and memory; a shut-off VM's reservation is not the
		// hypervisor's concern until it starts, and starting it is placed anew.
		if vm.State != capVMRunning {
			continue
		}
		t.freeCPU -= int64(vm.VCPUs)
		t.freeMem = satSub(t.freeMem, vm.MemoryMiB)
		for _, g := range vm.Groups {
			if g.Type == GroupHostAntiAffinity {
				t.antiHere[g.Name] = true
			}
		}
	}
	return t
}

// scale applies an overprovisioning factor. The tiny epsilon keeps 10 × 0.7 from flooring to 6
// through binary rounding; capacity is whole vCPUs and MiB.
func scale(n uint64, factor float64) int64 {
	v := math.Floor(float64(n)*factor + 1e-6)
	if v >= math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(v)
}

func (t *target) hasTags(tags []string) bool {
	for _, tag := range tags {
		if !t.tags[tag] {
			return false
		}
	}
	return true
}

// other is a host of the cluster with why it cannot take VMs ("" if it can), kept to explain
// refusals.
type other struct {
	host *CapacityHost
	why  string
}

type planner struct {
	cluster string
	empty   map[string]bool
	targets []*target           // non-emptied hosts of the cluster, sorted by name
	others  []other             // every host of the cluster, sorted by name
	anchors map[string][]string // affinity group -> non-emptied hosts running a member, sorted
}

// place picks a host for u and books its resources there, or returns why none fits. Filters run
// in a fixed order (eligibility, affinity, tags, anti-affinity, room) and the first one that
// leaves no host names the reason, so the operator reads the rule that actually blocked.
func (p *planner) place(u *unit) (*target, string) {
	if reason := u.selfConflict(); reason != "" {
		return nil, reason
	}
	var cands []*target
	for _, t := range p.targets {
		if t.eligible {
			cands = append(cands, t)
		}
	}
	if len(cands) == 0 {
		return nil, p.noEligible(u)
	}

	// Host affinity: members already running on a staying host pin the unit there. Members in
	// another cluster cannot be joined (migration stays in the cluster) and are not in p.anchors.
	var pins []string
	for _, g := range u.aff {
		on := p.anchors[g]
		if len(on) == 0 {
			continue
		}
		var described []string
		for _, name := range on {
			described = append(described, p.describe(name))
		}
		pins = append(pins, fmt.Sprintf("affinity group %s runs on %s", g, strings.Join(described, ", ")))
		cands = slices.DeleteFunc(cands, func(t *target) bool { return !slices.Contains(on, t.name) })
	}
	pinned := strings.Join(pins, "; ")
	if len(pins) > 0 && len(cands) == 0 {
		return nil, pinned + ": its moving members must join it there, but no eligible target host can take them"
	}

	// Host tags.
	cands = slices.DeleteFunc(cands, func(t *target) bool { return !t.hasTags(u.tags) })
	if len(cands) == 0 {
		if pinned != "" {
			return nil, fmt.Sprintf("%s, which lacks tags [%s]", pinned, strings.Join(u.tags, " "))
		}
		return nil, p.noTags(u)
	}

	// Host anti-affinity, against what runs on or is planned for each candidate.
	blocking := map[string]bool{}
	cands = slices.DeleteFunc(cands, func(t *target) bool {
		hit := false
		for _, g := range u.anti {
			if t.antiHere[g] {
				blocking[g] = true
				hit = true
			}
		}
		return hit
	})
	if len(cands) == 0 {
		var gs []string
		for _, g := range u.anti {
			if blocking[g] {
				gs = append(gs, g)
			}
		}
		if pinned != "" {
			return nil, fmt.Sprintf("%s, which already runs a member of anti-affinity group %s", pinned, strings.Join(gs, ", "))
		}
		hosts := "every eligible host"
		if len(u.tags) > 0 {
			hosts = fmt.Sprintf("every eligible host with tags [%s]", strings.Join(u.tags, " "))
		}
		if len(gs) == 1 {
			return nil, fmt.Sprintf("anti-affinity group %s: %s already runs a member", gs[0], hosts)
		}
		return nil, fmt.Sprintf("anti-affinity groups %s: %s already runs a member of one of them", strings.Join(gs, ", "), hosts)
	}

	// Room: the remaining candidate with the most free memory that can hold the whole unit.
	var best, roomiest *target
	for _, t := range cands { // name order: strict > keeps the first name on ties
		if roomiest == nil || more(t, roomiest) {
			roomiest = t
		}
		if t.freeCPU >= u.cpu && t.freeMem >= u.mem && (best == nil || better(t, best)) {
			best = t
		}
	}
	if best == nil {
		subject := "needs"
		if len(u.members) > 1 {
			subject = fmt.Sprintf("affinity group %s (%d VMs) needs", strings.Join(u.aff, ", "), len(u.members))
		}
		reason := fmt.Sprintf("%s %d vCPU / %d MiB; most free: %s %d vCPU / %d MiB",
			subject, u.cpu, u.mem, roomiest.name, max(roomiest.freeCPU, 0), max(roomiest.freeMem, 0))
		if pinned != "" {
			reason = pinned + "; " + reason
		}
		return nil, reason
	}
	best.freeCPU -= u.cpu
	best.freeMem -= u.mem
	for _, g := range u.anti {
		best.antiHere[g] = true
	}
	return best, ""
}

// better orders the targets that can hold a unit: a preferred host first, then worst fit.
func better(a, b *target) bool {
	if a.preferred != b.preferred {
		return a.preferred
	}
	return more(a, b)
}

// more is the worst-fit order: more free memory, then more free vCPU.
func more(a, b *target) bool {
	if a.freeMem != b.freeMem {
		return a.freeMem > b.freeMem
	}
	return a.freeCPU > b.freeCPU
}

// selfConflict catches a unit that affinity forces onto one host while anti-affinity forbids it:
// no host can ever satisfy both.
func (u *unit) selfConflict() string {
	for _, g := range u.anti {
		var names []string
		for _, m := range u.members {
			for _, mg := range m.vm.Groups {
				if mg.Type == GroupHostAntiAffinity && mg.Name == g {
					names = append(names, m.vm.Name)
					break
				}
			}
		}
		if len(names) > 1 {
			return fmt.Sprintf("anti-affinity group %s keeps %s apart, but affinity group %s keeps them on one host",
				g, strings.Join(names, ", "), strings.Join(u.aff, ", "))
		}
	}
	return ""
}

// sources is the set of hosts the unit's VMs come from; they go without saying in reasons.
func (u *unit) sources() map[string]bool {
	s := map[string]bool{}
	for _, m := range u.members {
		s[m.from] = true
	}
	return s
}

// describe names a host and, if it cannot take VMs, why.
func (p *planner) describe(name string) string {
	for _, o := range p.others {
		if o.host.Name == name && o.why != "" {
			return fmt.Sprintf("%s (%s)", name, o.why)
		}
	}
	return name
}

func (p *planner) noEligible(u *unit) string {
	src := u.sources()
	var why []string
	for _, o := range p.others {
		if !src[o.host.Name] {
			why = append(why, fmt.Sprintf("%s: %s", o.host.Name, o.why))
		}
	}
	if len(why) == 0 {
		return fmt.Sprintf("no eligible target host in cluster %s (no other host)", p.cluster)
	}
	return fmt.Sprintf("no eligible target host in cluster %s (%s)", p.cluster, strings.Join(why, ", "))
}

// noTags distinguishes "nobody has these tags" (retag a host) from "the tagged hosts cannot take
// VMs now" (bring one back), because the fixes differ.
func (p *planner) noTags(u *unit) string {
	src := u.sources()
	tags := strings.Join(u.tags, " ")
	var tagged []string
	for _, o := range p.others {
		if src[o.host.Name] {
			continue
		}
		have := true
		for _, tag := range u.tags {
			if !slices.Contains(o.host.Tags, tag) {
				have = false
				break
			}
		}
		if have {
			tagged = append(tagged, fmt.Sprintf("%s is %s", o.host.Name, o.why))
		}
	}
	if len(tagged) == 0 {
		return fmt.Sprintf("no other host in cluster %s has tags [%s]", p.cluster, tags)
	}
	return fmt.Sprintf("no eligible host in cluster %s has tags [%s]; hosts with them cannot take VMs: %s",
		p.cluster, tags, strings.Join(tagged, ", "))
}
