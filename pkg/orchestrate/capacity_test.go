package orchestrate

import (
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// host builds an Enabled, Up host of cluster c1: the eligible default that each case then breaks.
func host(name string, cpus int, mem uint64, vms ...CapacityVM) CapacityHost {
	return CapacityHost{
		Name: name, Cluster: "c1", ResourceState: "Enabled", Connection: "Up", AgentState: "Up",
		CPUs: cpus, MemoryMiB: mem, VMs: vms,
	}
}

func tagged(h CapacityHost, tags ...string) CapacityHost { h.Tags = tags; return h }

func with(h CapacityHost, f func(*CapacityHost)) CapacityHost { f(&h); return h }

// vm builds a running VM.
func vm(name string, vcpus int, mem uint64, groups ...AffinityGroup) CapacityVM {
	return CapacityVM{Name: name, UUID: "uuid-" + name, State: "running", VCPUs: vcpus, MemoryMiB: mem, Groups: groups}
}

func shutoff(v CapacityVM) CapacityVM { v.State = "shutoff"; return v }

func needs(v CapacityVM, tags ...string) CapacityVM { v.RequiredTags = tags; return v }

func aff(name string) AffinityGroup  { return AffinityGroup{Name: name, Type: GroupHostAffinity} }
func anti(name string) AffinityGroup { return AffinityGroup{Name: name, Type: GroupHostAntiAffinity} }

func input(empty []string, hosts ...CapacityHost) CapacityInput {
	return CapacityInput{Hosts: hosts, Empty: empty, CPUFactor: 1, MemFactor: 1}
}

func factors(in CapacityInput, cpu, mem float64) CapacityInput {
	in.CPUFactor, in.MemFactor = cpu, mem
	return in
}

func placed(vmName, from, to string) Placement {
	return Placement{VM: vmName, UUID: "uuid-" + vmName, From: from, To: to}
}

func unplaced(vmName, from, reason string) Unplaced {
	return Unplaced{VM: vmName, UUID: "uuid-" + vmName, From: from, Reason: reason}
}

func plan(ps []Placement, us ...Unplaced) Plan { return Plan{Placements: ps, Unplaced: us} }

func ok(ps ...Placement) Plan { return Plan{Placements: ps} }

var h1 = []string{"h1"}

func TestPlanCapacity(t *testing.T) {
	tests := []struct {
		name string
		in   CapacityInput
		want Plan
	}{
		// Compute.
		{
			name: "cpu limit: too few free CPUs",
			in:   input(h1, host("h1", 8, 16384, vm("a", 4, 1024)), host("h2", 2, 8192)),
			want: plan(nil, unplaced("a", "h1", "needs 4 vCPU / 1024 MiB; most free: h2 2 vCPU / 8192 MiB")),
		},
		{
			name: "cpu limit: exactly enough CPUs fits",
			in:   input(h1, host("h1", 8, 16384, vm("a", 4, 1024)), host("h2", 4, 8192)),
			want: ok(placed("a", "h1", "h2")),
		},
		{
			name: "memory limit: too little free memory",
			in:   input(h1, host("h1", 8, 16384, vm("a", 2, 8192)), host("h2", 8, 4096)),
			want: plan(nil, unplaced("a", "h1", "needs 2 vCPU / 8192 MiB; most free: h2 8 vCPU / 4096 MiB")),
		},
		{
			name: "running VMs on the target use its capacity",
			in:   input(h1, host("h1", 8, 16384, vm("a", 4, 1024)), host("h2", 8, 16384, vm("x", 6, 1024))),
			want: plan(nil, unplaced("a", "h1", "needs 4 vCPU / 1024 MiB; most free: h2 2 vCPU / 15360 MiB")),
		},
		{
			name: "shut-off VMs on the target use nothing",
			in:   input(h1, host("h1", 8, 16384, vm("a", 4, 1024)), host("h2", 8, 16384, shutoff(vm("x", 6, 1024)))),
			want: ok(placed("a", "h1", "h2")),
		},
		{
			name: "overcommit factors make the VM fit",
			in:   factors(input(h1, host("h1", 8, 16384, vm("a", 4, 6144)), host("h2", 2, 4096)), 2, 1.5),
			want: ok(placed("a", "h1", "h2")),
		},
		{
			name: "cpu factor alone leaves memory short",
			in:   factors(input(h1, host("h1", 8, 16384, vm("a", 4, 6144)), host("h2", 2, 4096)), 2, 1),
			want: plan(nil, unplaced("a", "h1", "needs 4 vCPU / 6144 MiB; most free: h2 4 vCPU / 4096 MiB")),
		},
		{
			name: "memory factor below 1 keeps headroom",
			in:   factors(input(h1, host("h1", 8, 16384, vm("a", 1, 6144)), host("h2", 8, 8192)), 1, 0.5),
			want: plan(nil, unplaced("a", "h1", "needs 1 vCPU / 6144 MiB; most free: h2 8 vCPU / 4096 MiB")),
		},

		// Host tags.
		{
			name: "tags: fits only on the tagged host, though another has more room",
			in: input(h1,
				host("h1", 8, 16384, needs(vm("a", 1, 1024), "ssd")),
				host("h2", 8, 32768),
				tagged(host("h3", 2, 4096), "hdd", "ssd")),
			want: ok(placed("a", "h1", "h3")),
		},
		{
			name: "tags: all required tags must be on the host",
			in: input(h1,
				host("h1", 8, 16384, needs(vm("a", 1, 1024), "ssd", "gpu")),
				tagged(host("h2", 8, 32768), "ssd")),
			want: plan(nil, unplaced("a", "h1", "no other host in cluster c1 has tags [gpu ssd]")),
		},
		{
			name: "tags: fits nowhere",
			in: input(h1,
				tagged(host("h1", 8, 16384, needs(vm("a", 1, 1024), "ssd")), "ssd"),
				host("h2", 8, 32768)),
			want: plan(nil, unplaced("a", "h1", "no other host in cluster c1 has tags [ssd]")),
		},
		{
			name: "tags: the tagged host cannot take VMs",
			in: input(h1,
				host("h1", 8, 16384, needs(vm("a", 1, 1024), "ssd")),
				host("h2", 8, 32768),
				with(tagged(host("h3", 8, 32768), "ssd"), func(h *CapacityHost) { h.ResourceState = "Disabled" })),
			want: plan(nil, unplaced("a", "h1", "no eligible host in cluster c1 has tags [ssd]; hosts with them cannot take VMs: h3 is Disabled")),
		},

		// Host anti-affinity.
		{
			name: "anti-affinity: members spread over distinct hosts",
			in: input(h1,
				host("h1", 8, 16384, vm("w1", 1, 1024, anti("web")), vm("w2", 1, 1024, anti("web"))),
				host("h2", 8, 32768),
				host("h3", 8, 4096)),
			want: ok(placed("w1", "h1", "h2"), placed("w2", "h1", "h3")),
		},
		{
			name: "anti-affinity: fewer eligible hosts than members",
			in: input(h1,
				host("h1", 8, 16384, vm("w1", 1, 1024, anti("web")), vm("w2", 1, 1024, anti("web")), vm("w3", 1, 1024, anti("web"))),
				host("h2", 8, 32768),
				host("h3", 8, 4096)),
			want: plan([]Placement{placed("w1", "h1", "h2"), placed("w2", "h1", "h3")},
				unplaced("w3", "h1", "anti-affinity group web: every eligible host already runs a member")),
		},
		{
			name: "anti-affinity: a member already on the target counts",
			in: input(h1,
				host("h1", 8, 16384, vm("w1", 1, 1024, anti("web"))),
				host("h2", 8, 32768, vm("w0", 1, 1024, anti("web"))),
				host("h3", 8, 4096)),
			want: ok(placed("w1", "h1", "h3")),
		},
		{
			name: "anti-affinity: a shut-off member on the target does not count",
			in: input(h1,
				host("h1", 8, 16384, vm("w1", 1, 1024, anti("web"))),
				host("h2", 8, 32768, shutoff(vm("w0", 1, 1024, anti("web")))),
				host("h3", 8, 4096)),
			want: ok(placed("w1", "h1", "h2")),
		},
		{
			name: "anti-affinity: the reason names the tags that narrowed the hosts",
			in: input(h1,
				host("h1", 8, 16384, needs(vm("w1", 1, 1024, anti("web")), "ssd")),
				tagged(host("h2", 8, 32768, vm("w0", 1, 1024, anti("web"))), "ssd"),
				host("h3", 8, 4096)),
			want: plan(nil, unplaced("w1", "h1", "anti-affinity group web: every eligible host with tags [ssd] already runs a member")),
		},

		// Host affinity.
		{
			name: "affinity: moving members land on one host",
			in: input(h1,
				host("h1", 8, 16384, vm("d1", 1, 2048, aff("db")), vm("d2", 1, 2048, aff("db"))),
				host("h2", 8, 8192),
				host("h3", 8, 8192)),
			want: ok(placed("d1", "h1", "h2"), placed("d2", "h1", "h2")),
		},
		{
			name: "affinity: moving members follow a member on a target",
			in: input(h1,
				host("h1", 8, 16384, vm("d1", 1, 2048, aff("db")), vm("d2", 1, 2048, aff("db"))),
				host("h2", 8, 32768),
				host("h3", 8, 8192, vm("d0", 1, 1024, aff("db")))),
			want: ok(placed("d1", "h1", "h3"), placed("d2", "h1", "h3")),
		},
		{
			name: "affinity: the group must fit together though each member fits alone",
			in: input(h1,
				host("h1", 8, 16384, vm("d1", 1, 4096, aff("db")), vm("d2", 1, 4096, aff("db"))),
				host("h2", 8, 6144),
				host("h3", 8, 6144)),
			want: plan(nil,
				unplaced("d1", "h1", "affinity group db (2 VMs) needs 2 vCPU / 8192 MiB; most free: h2 8 vCPU / 6144 MiB"),
				unplaced("d2", "h1", "affinity group db (2 VMs) needs 2 vCPU / 8192 MiB; most free: h2 8 vCPU / 6144 MiB")),
		},
		{
			name: "affinity: the member's host cannot take VMs",
			in: input(h1,
				host("h1", 8, 16384, vm("d1", 1, 2048, aff("db"))),
				host("h2", 8, 32768),
				with(host("h3", 8, 8192, vm("d0", 1, 1024, aff("db"))), func(h *CapacityHost) { h.ResourceState = "Disabled" })),
			want: plan(nil, unplaced("d1", "h1", "affinity group db runs on h3 (Disabled): its moving members must join it there, but no eligible target host can take them")),
		},
		{
			name: "affinity: the member's host is full",
			in: input(h1,
				host("h1", 8, 16384, vm("d1", 1, 2048, aff("db"))),
				host("h2", 8, 32768),
				host("h3", 8, 2048, vm("d0", 1, 1024, aff("db")))),
			want: plan(nil, unplaced("d1", "h1", "affinity group db runs on h3; needs 1 vCPU / 2048 MiB; most free: h3 7 vCPU / 1024 MiB")),
		},
		{
			name: "affinity and anti-affinity on the same members can never be met",
			in: input(h1,
				host("h1", 8, 16384, vm("d1", 1, 2048, aff("db"), anti("web")), vm("d2", 1, 2048, aff("db"), anti("web"))),
				host("h2", 8, 32768)),
			want: plan(nil,
				unplaced("d1", "h1", "anti-affinity group web keeps d1, d2 apart, but affinity group db keeps them on one host"),
				unplaced("d2", "h1", "anti-affinity group web keeps d1, d2 apart, but affinity group db keeps them on one host")),
		},

		// Eligible targets.
		{
			name: "no eligible target: every other host named with its state",
			in: input(h1,
				host("h1", 8, 16384, vm("a", 1, 1024)),
				with(host("h2", 8, 32768), func(h *CapacityHost) { h.ResourceState = "Disabled" }),
				with(host("h3", 8, 32768), func(h *CapacityHost) { h.Connection = "Disconnected" }),
				with(host("h4", 8, 32768), func(h *CapacityHost) { h.ResourceState = "Maintenance"; h.AgentState = "hostInMaintenance" })),
			want: plan(nil, unplaced("a", "h1", "no eligible target host in cluster c1 (h2: Disabled, h3: Disconnected, h4: Maintenance and hostInMaintenance)")),
		},
		{
			name: "no eligible target: the only other host is in another cluster",
			in: input(h1,
				host("h1", 8, 16384, vm("a", 1, 1024)),
				with(host("h2", 8, 32768), func(h *CapacityHost) { h.Cluster = "c2" })),
			want: plan(nil, unplaced("a", "h1", "no eligible target host in cluster c1 (no other host)")),
		},

		// Source VMs.
		{
			name: "shut-off VMs on the emptied host are not placed",
			in:   input(h1, host("h1", 8, 16384, vm("a", 1, 1024), shutoff(vm("b", 64, 1<<20))), host("h2", 8, 8192)),
			want: ok(placed("a", "h1", "h2")),
		},
		{
			name: "an empty host needs nothing",
			in:   input(h1, host("h1", 8, 16384), host("h2", 8, 8192)),
			want: ok(),
		},

		// Several hosts at once.
		{
			name: "two hosts: h1 alone fits",
			in:   input(h1, host("h1", 1, 4096, vm("a", 1, 4096)), host("h2", 1, 4096, vm("b", 1, 4096)), host("h3", 8, 6144)),
			want: ok(placed("a", "h1", "h3")),
		},
		{
			name: "two hosts: h2 alone fits",
			in:   input([]string{"h2"}, host("h1", 1, 4096, vm("a", 1, 4096)), host("h2", 1, 4096, vm("b", 1, 4096)), host("h3", 8, 6144)),
			want: ok(placed("b", "h2", "h3")),
		},
		{
			name: "two hosts: together they do not fit",
			in:   input([]string{"h1", "h2"}, host("h1", 1, 4096, vm("a", 1, 4096)), host("h2", 1, 4096, vm("b", 1, 4096)), host("h3", 8, 6144)),
			want: plan([]Placement{placed("a", "h1", "h3")},
				unplaced("b", "h2", "needs 1 vCPU / 4096 MiB; most free: h3 7 vCPU / 2048 MiB")),
		},
		{
			name: "two hosts: a host being emptied is no target, however roomy",
			in:   input([]string{"h1", "h2"}, host("h1", 8, 16384, vm("a", 1, 4096)), host("h2", 64, 65536), host("h3", 8, 2048)),
			want: plan(nil, unplaced("a", "h1", "needs 1 vCPU / 4096 MiB; most free: h3 8 vCPU / 2048 MiB")),
		},
		{
			name: "two hosts: the other emptied host is named when nothing is eligible",
			in:   input([]string{"h1", "h2"}, host("h1", 8, 16384, vm("a", 1, 1024)), host("h2", 64, 65536)),
			want: plan(nil, unplaced("a", "h1", "no eligible target host in cluster c1 (h2: being emptied)")),
		},
		{
			name: "two hosts: anti-affinity members from both sources spread",
			in: input([]string{"h1", "h2"},
				host("h1", 8, 16384, vm("w1", 1, 1024, anti("web"))),
				host("h2", 8, 16384, vm("w2", 1, 1024, anti("web"))),
				host("h3", 8, 32768),
				host("h4", 8, 4096)),
			want: ok(placed("w1", "h1", "h3"), placed("w2", "h2", "h4")),
		},
		{
			name: "two hosts: affinity members from both sources land together",
			in: input([]string{"h1", "h2"},
				host("h1", 8, 16384, vm("d1", 1, 2048, aff("db"))),
				host("h2", 8, 16384, vm("d2", 1, 2048, aff("db"))),
				host("h3", 8, 8192),
				host("h4", 8, 8192)),
			want: ok(placed("d1", "h1", "h3"), placed("d2", "h2", "h3")),
		},

		// Order.
		{
			name: "bigger memory first: the small VM would otherwise take the only big slot",
			in:   input(h1, host("h1", 8, 16384, vm("s", 1, 1024), vm("b", 1, 4096)), host("h2", 8, 4096), host("h3", 8, 2048)),
			want: ok(placed("b", "h1", "h2"), placed("s", "h1", "h3")),
		},
		{
			name: "an affinity group is sized as a whole: its total before a bigger single VM",
			in: input(h1,
				host("h1", 8, 16384, vm("d1", 1, 2048, aff("db")), vm("d2", 1, 2048, aff("db")), vm("s", 1, 3072)),
				host("h2", 8, 4096),
				host("h3", 8, 3072)),
			want: ok(placed("d1", "h1", "h2"), placed("d2", "h1", "h2"), placed("s", "h1", "h3")),
		},
		{
			name: "equal memory: more vCPU first",
			in:   input(h1, host("h1", 8, 16384, vm("a", 1, 1024), vm("b", 2, 1024)), host("h2", 2, 8192), host("h3", 1, 4096)),
			want: ok(placed("b", "h1", "h2"), placed("a", "h1", "h3")),
		},
		{
			name: "worst fit: the host with the most free memory wins",
			in:   input(h1, host("h1", 8, 16384, vm("a", 1, 1024)), host("h2", 64, 4096), host("h3", 1, 8192)),
			want: ok(placed("a", "h1", "h3")),
		},
		{
			name: "ties go to the first host name",
			in:   input(h1, host("h1", 8, 16384, vm("a", 1, 1024)), host("h3", 8, 8192), host("h2", 8, 8192)),
			want: ok(placed("a", "h1", "h2")),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := PlanCapacity(tc.in)
			if err != nil {
				t.Fatalf("PlanCapacity: %v", err)
			}
			if diff := cmp.Diff(tc.want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("plan mismatch (-want +got):\n%s", diff)
			}
			if got.OK() != (len(tc.want.Unplaced) == 0) {
				t.Errorf("OK() = %v with %d unplaced", got.OK(), len(got.Unplaced))
			}
		})
	}
}

// TestPlanCapacityIneligibleTargets gives every case a roomy host made ineligible and a small
// eligible one: if the rule is dropped, the VM lands on the roomy host.
func TestPlanCapacityIneligibleTargets(t *testing.T) {
	tests := []struct {
		name  string
		spoil func(*CapacityHost)
	}{
		{"Disabled", func(h *CapacityHost) { h.ResourceState = "Disabled" }},
		{"PrepareForMaintenance", func(h *CapacityHost) { h.ResourceState = "PrepareForMaintenance" }},
		{"ErrorInMaintenance", func(h *CapacityHost) { h.ResourceState = "ErrorInMaintenance" }},
		{"Maintenance", func(h *CapacityHost) { h.ResourceState = "Maintenance" }},
		{"Disconnected", func(h *CapacityHost) { h.Connection = "Disconnected" }},
		{"Down", func(h *CapacityHost) { h.Connection = "Down" }},
		{"hostInMaintenance", func(h *CapacityHost) { h.AgentState = "hostInMaintenance" }},
		{"other cluster", func(h *CapacityHost) { h.Cluster = "c2" }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := input(h1,
				host("h1", 8, 16384, vm("a", 1, 2048)),
				with(host("h2", 64, 65536), tc.spoil),
				host("h3", 1, 1024))
			got, err := PlanCapacity(in)
			if err != nil {
				t.Fatalf("PlanCapacity: %v", err)
			}
			want := plan(nil, unplaced("a", "h1", "needs 1 vCPU / 2048 MiB; most free: h3 1 vCPU / 1024 MiB"))
			if diff := cmp.Diff(want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("plan mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// TestPlanCapacityDeterministic checks that the plan depends on the values only: not on the run,
// not on the order hosts and VMs are listed in, and that the input is left untouched.
func TestPlanCapacityDeterministic(t *testing.T) {
	build := func() CapacityInput {
		return CapacityInput{
			Hosts: []CapacityHost{
				host("h1", 16, 32768,
					vm("a", 2, 2048), vm("b", 2, 2048), vm("c", 4, 4096, anti("web")), vm("d", 4, 4096, anti("web")),
					vm("e", 1, 1024, aff("db")), vm("f", 1, 1024, aff("db")), needs(vm("g", 1, 512), "ssd"), vm("z", 64, 1<<20)),
				host("h2", 16, 32768, vm("x", 2, 2048, anti("web")), vm("y", 1, 1024, aff("db"))),
				host("h3", 8, 8192),
				tagged(host("h4", 8, 8192), "ssd"),
				host("h5", 8, 8192),
				with(host("h6", 8, 8192), func(h *CapacityHost) { h.Connection = "Down" }),
			},
			Empty:     []string{"h1", "h2"},
			CPUFactor: 1.5,
			MemFactor: 1.2,
		}
	}
	first, err := PlanCapacity(build())
	if err != nil {
		t.Fatalf("PlanCapacity: %v", err)
	}
	if len(first.Placements) == 0 || len(first.Unplaced) == 0 {
		t.Fatalf("want a plan with both placements and unplaced VMs to compare, got %+v", first)
	}

	in := build()
	second, err := PlanCapacity(in)
	if err != nil {
		t.Fatalf("PlanCapacity: %v", err)
	}
	if diff := cmp.Diff(first, second); diff != "" {
		t.Errorf("second run differs (-first +second):\n%s", diff)
	}
	if diff := cmp.Diff(build(), in); diff != "" {
		t.Errorf("PlanCapacity changed its input (-before +after):\n%s", diff)
	}

	shuffled := build()
	slices.Reverse(shuffled.Hosts)
	for i := range shuffled.Hosts {
		slices.Reverse(shuffled.Hosts[i].VMs)
	}
	slices.Reverse(shuffled.Empty)
	third, err := PlanCapacity(shuffled)
	if err != nil {
		t.Fatalf("PlanCapacity: %v", err)
	}
	if diff := cmp.Diff(first, third); diff != "" {
		t.Errorf("reordered input gives another plan (-first +reordered):\n%s", diff)
	}
}

func TestPlanCapacityInvalidInput(t *testing.T) {
	base := func() CapacityInput {
		return input(h1, host("h1", 8, 16384, vm("a", 1, 1024)), host("h2", 8, 16384))
	}
	tests := []struct {
		name    string
		change  func(*CapacityInput)
		wantErr string
	}{
		{"zero cpu factor", func(in *CapacityInput) { in.CPUFactor = 0 }, "cpu.overprovisioning.factor must be a positive number, got 0"},
		{"negative mem factor", func(in *CapacityInput) { in.MemFactor = -1 }, "mem.overprovisioning.factor must be a positive number, got -1"},
		{"NaN factor", func(in *CapacityInput) { in.CPUFactor = math.NaN() }, "cpu.overprovisioning.factor must be a positive number"},
		{"infinite factor", func(in *CapacityInput) { in.MemFactor = math.Inf(1) }, "mem.overprovisioning.factor must be a positive number"},
		{"nothing to empty", func(in *CapacityInput) { in.Empty = nil }, "no host to empty"},
		{"unknown host", func(in *CapacityInput) { in.Empty = []string{"h9"} }, `unknown host "h9" to empty`},
		{"hosts of different clusters", func(in *CapacityInput) {
			in.Hosts[1].Cluster = "c2"
			in.Empty = []string{"h1", "h2"}
		}, "hosts to empty are in different clusters (h1 in c1, h2 in c2)"},
		{"host listed twice", func(in *CapacityInput) { in.Hosts = append(in.Hosts, host("h2", 1, 1)) }, "host h2 is listed twice"},
		{"host without name", func(in *CapacityInput) { in.Hosts = append(in.Hosts, host("", 1, 1)) }, "host #3 has no name"},
		{"negative cpus", func(in *CapacityInput) { in.Hosts[1].CPUs = -1 }, "host h2: negative CPU count -1"},
		{"negative vcpus", func(in *CapacityInput) { in.Hosts[0].VMs[0].VCPUs = -2 }, "vm a on host h1: negative vCPU count -2"},
		{"unknown group type", func(in *CapacityInput) {
			in.Hosts[0].VMs[0].Groups = []AffinityGroup{{Name: "web", Type: "anti-affinity"}}
		}, `group web has unknown type "anti-affinity"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := base()
			tc.change(&in)
			_, err := PlanCapacity(in)
			if err == nil {
				t.Fatalf("PlanCapacity succeeded, want an error containing %q", tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error = %q, want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

func TestPlanCapacityDuplicateEmptyName(t *testing.T) {
	// Naming a host twice must not plan its VMs twice.
	got, err := PlanCapacity(input([]string{"h1", "h1"}, host("h1", 8, 16384, vm("a", 1, 1024)), host("h2", 8, 16384)))
	if err != nil {
		t.Fatalf("PlanCapacity: %v", err)
	}
	if diff := cmp.Diff(ok(placed("a", "h1", "h2")), got, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("plan mismatch (-want +got):\n%s", diff)
	}
}

func TestPlanOK(t *testing.T) {
	if !(Plan{}).OK() {
		t.Error("empty plan: OK() = false, want true")
	}
	if !ok(placed("a", "h1", "h2")).OK() {
		t.Error("all placed: OK() = false, want true")
	}
	if plan(nil, unplaced("a", "h1", "no room")).OK() {
		t.Error("one unplaced: OK() = true, want false")
	}
}

// A preferred target (a host rolling maintenance already updated) is filled before a roomier
// one, as long as the VM fits there.
func TestPlanCapacityPrefer(t *testing.T) {
	host := func(name string, cpus int, mem uint64, vms ...CapacityVM) CapacityHost {
		return CapacityHost{Name: name, Cluster: "c1", ResourceState: "Enabled", Connection: "Up", AgentState: "Up", CPUs: cpus, MemoryMiB: mem, VMs: vms}
	}
	vm := func(name string) CapacityVM {
		return CapacityVM{Name: name, State: "running", VCPUs: 1, MemoryMiB: 1024}
	}
	hosts := []CapacityHost{host("h1", 8, 8192, vm("a"), vm("b")), host("h2", 8, 4096), host("h3", 8, 16384)}
	plan, err := PlanCapacity(CapacityInput{Hosts: hosts, Empty: []string{"h1"}, CPUFactor: 1, MemFactor: 1, Prefer: []string{"h2"}})
	if err != nil || !plan.OK() {
		t.Fatal(plan, err)
	}
	for _, p := range plan.Placements {
		if p.To != "h2" {
			t.Errorf("%s -> %s, want the preferred h2", p.VM, p.To)
		}
	}
	plan, _ = PlanCapacity(CapacityInput{Hosts: hosts, Empty: []string{"h1"}, CPUFactor: 1, MemFactor: 1})
	for _, p := range plan.Placements {
		if p.To != "h3" {
			t.Errorf("without a preference %s -> %s, want the roomiest h3", p.VM, p.To)
		}
	}
	// A preferred host that is full is passed over.
	hosts[1].CPUs = 1
	plan, _ = PlanCapacity(CapacityInput{Hosts: hosts, Empty: []string{"h1"}, CPUFactor: 1, MemFactor: 1, Prefer: []string{"h2"}})
	got := map[string]int{}
	for _, p := range plan.Placements {
		got[p.To]++
	}
	if got["h2"] != 1 || got["h3"] != 1 {
		t.Errorf("placements %v, want one on the preferred h2 (room for one) and one on h3", got)
	}
}
