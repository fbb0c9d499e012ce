package inventory

import (
	"slices"
	"sort"
	"strings"

	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// Scope names part of the inventory by one kind: zones, pods, clusters or hosts, as
// CloudStack's startRollingMaintenance takes exactly one of zoneids, podids, clusterids, hostids.
type Scope struct {
	Zones    []string `json:"zones,omitempty"`
	Pods     []string `json:"pods,omitempty"`
	Clusters []string `json:"clusters,omitempty"`
	Hosts    []string `json:"hosts,omitempty"`
}

// Resolve returns the hosts of s in the natural order (cluster by cluster, names as people
// count: h2 before h10) and their clusters in that order. Every problem is a refusal: no kind or
// two kinds, an unknown name, an empty scope.
func Resolve(tx state.Tx, s Scope) ([]state.Host, []string, error) {
	kinds := 0
	for _, l := range [][]string{s.Zones, s.Pods, s.Clusters, s.Hosts} {
		if len(l) > 0 {
			kinds++
		}
	}
	if kinds != 1 {
		return nil, nil, errs.Refusedf("give exactly one of --zone, --pod, --cluster or --host")
	}
	hosts, err := state.Hosts(tx)
	if err != nil {
		return nil, nil, err
	}
	var (
		kind  string
		ids   []string
		known []string
		field func(state.Host) string
	)
	switch {
	case len(s.Zones) > 0:
		zs, err := state.Zones(tx)
		if err != nil {
			return nil, nil, err
		}
		kind, ids, field = "zone", s.Zones, func(h state.Host) string { return h.Zone }
		for _, z := range zs {
			known = append(known, z.Name)
		}
	case len(s.Pods) > 0:
		ps, err := state.Pods(tx)
		if err != nil {
			return nil, nil, err
		}
		kind, ids, field = "pod", s.Pods, func(h state.Host) string { return h.Pod }
		for _, p := range ps {
			known = append(known, p.Name)
		}
	case len(s.Clusters) > 0:
		cs, err := state.Clusters(tx)
		if err != nil {
			return nil, nil, err
		}
		kind, ids, field = "cluster", s.Clusters, func(h state.Host) string { return h.Cluster }
		for _, c := range cs {
			known = append(known, c.Name)
		}
	default:
		kind, ids, field = "host", s.Hosts, func(h state.Host) string { return h.Name }
		for _, h := range hosts {
			known = append(known, h.Name)
		}
	}
	var missing []string
	for _, id := range ids {
		if !slices.Contains(known, id) {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		return nil, nil, errs.Refusedf("unknown %s %s: `kvmctl %s list` shows them", kind, strings.Join(missing, ", "), kind)
	}
	var picked []state.Host
	for _, h := range hosts {
		if slices.Contains(ids, field(h)) {
			picked = append(picked, h)
		}
	}
	if len(picked) == 0 {
		return nil, nil, errs.Refusedf("the scope has no hosts")
	}
	SortHosts(picked)
	var clusters []string
	for _, h := range picked {
		if len(clusters) == 0 || clusters[len(clusters)-1] != h.Cluster {
			clusters = append(clusters, h.Cluster)
		}
	}
	return picked, clusters, nil
}

// SortHosts puts hosts in the natural order runs take them: cluster by cluster, each in natural
// name order (h2 before h10). `host list` shows them in the same order.
func SortHosts(hosts []state.Host) {
	sort.SliceStable(hosts, func(i, j int) bool {
		if hosts[i].Cluster != hosts[j].Cluster {
			return NaturalLess(hosts[i].Cluster, hosts[j].Cluster)
		}
		return NaturalLess(hosts[i].Name, hosts[j].Name)
	})
}

// NaturalLess orders names with numbers as people do: h2 before h10.
func NaturalLess(a, b string) bool {
	for a != "" && b != "" {
		da, db := digitsPrefix(a), digitsPrefix(b)
		if da != "" && db != "" {
			na, nb := strings.TrimLeft(da, "0"), strings.TrimLeft(db, "0")
			if len(na) != len(nb) {
				return len(na) < len(nb)
			}
			if na != nb {
				return na < nb
			}
			a, b = a[len(da):], b[len(db):]
			continue
		}
		if a[0] != b[0] {
			return a[0] < b[0]
		}
		a, b = a[1:], b[1:]
	}
	return len(a) < len(b)
}

func digitsPrefix(s string) string {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return s[:i]
}
