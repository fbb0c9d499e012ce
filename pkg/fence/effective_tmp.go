package fence

import "github.com/kvmctl/kvmctl/pkg/state"

// Effective merges a host's BMC settings over its cluster's, field by field (seed 002), and says
// where each field came from. (Placeholder until the settings work lands; same signature.)
func Effective(cluster, host state.BMC) (state.BMC, map[string]string) {
	out, src := cluster, map[string]string{}
	pick := func(name string, h, c any, set func()) {
		switch {
		case h != nil:
			set()
			src[name] = "host"
		case c != nil:
			src[name] = "cluster"
		}
	}
	nz := func(s string) any {
		if s == "" {
			return nil
		}
		return s
	}
	pick("driver", nz(host.Driver), nz(cluster.Driver), func() { out.Driver = host.Driver })
	pick("address", nz(host.Address), nz(cluster.Address), func() { out.Address = host.Address })
	pick("username", nz(host.Username), nz(cluster.Username), func() { out.Username = host.Username })
	pick("password", nz(host.Password), nz(cluster.Password), func() { out.Password = host.Password })
	pick("interface", nz(host.Interface), nz(cluster.Interface), func() { out.Interface = host.Interface })
	pick("action", nz(host.Action), nz(cluster.Action), func() { out.Action = host.Action })
	pick("exec", nz(host.Exec), nz(cluster.Exec), func() { out.Exec = host.Exec })
	if host.Port != 0 {
		out.Port, src["port"] = host.Port, "host"
	} else if cluster.Port != 0 {
		src["port"] = "cluster"
	}
	return out, src
}
