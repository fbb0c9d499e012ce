// Package inventory holds the rules of kvmctl's inventory: what a valid name and address are,
// which zone, pod, cluster and host may be added or removed, and the YAML form that
// `inventory apply` reads and `inventory export` writes. The records themselves live in pkg/state.
package inventory

import (
	"fmt"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/safetext"
	"github.com/kvmctl/kvmctl/pkg/state"
)

var namePattern = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$`)

// ValidName checks a zone, pod, cluster, host or tag name: 1 to 63 letters, digits, '.', '_'
// or '-', starting and ending with a letter or digit, so it is safe in file names and SANs.
func ValidName(kind, name string) error {
	if err := safetext.Check(kind+" name", name); err != nil {
		return err
	}
	if !namePattern.MatchString(name) {
		return fmt.Errorf("invalid %s name %q: use 1-63 letters, digits, '.', '_' or '-', starting and ending with a letter or digit", kind, name)
	}
	return nil
}

var dnsName = regexp.MustCompile(`^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$`)

// ValidAddress checks an agent address: host:port, the host an IP address or a DNS name, the
// port a plain number from 1 to 65535 (no sign, no leading zero, so one endpoint has one
// spelling and duplicate addresses are caught).
func ValidAddress(addr string) error {
	return ValidHostPort("address", addr, "host:port of the host's kvmagent, e.g. 10.0.0.11:9250")
}

// ValidHostPort checks any host:port an operator gives (an agent, a mail server, a trap
// receiver) by ValidAddress's rule; what names the value in the refusal and want says what to
// give instead of a value that is not host:port.
func ValidHostPort(what, addr, want string) error {
	if err := safetext.Check(what, addr); err != nil {
		return err
	}
	h, p, err := net.SplitHostPort(addr)
	if err != nil || h == "" {
		return fmt.Errorf("invalid %s %q: want %s", what, addr, want)
	}
	if net.ParseIP(h) == nil && (len(h) > 253 || !dnsName.MatchString(h)) {
		return fmt.Errorf("invalid %s %q: %q is neither an IP address nor a DNS name", what, addr, h)
	}
	n, err := strconv.Atoi(p)
	if err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != p {
		return fmt.Errorf("invalid %s %q: the port must be a number from 1 to 65535", what, addr)
	}
	return nil
}

// ValidSSH checks the SSH fields that are set.
func ValidSSH(s state.SSH) error {
	if s.Port != 0 && (s.Port < 1 || s.Port > 65535) {
		return fmt.Errorf("invalid ssh port %d: use 1 to 65535", s.Port)
	}
	for _, f := range []struct{ what, value string }{
		{"ssh user", s.User}, {"ssh key file", s.KeyFile}, {"ssh known hosts file", s.KnownHostsFile},
	} {
		if err := safetext.Check(f.what, f.value); err != nil {
			return err
		}
	}
	if strings.ContainsAny(s.User, " :@/") {
		return fmt.Errorf("invalid ssh user %q", s.User)
	}
	return nil
}

// ValidHost checks every field of h that an operator gives.
func ValidHost(h state.Host) error {
	if err := ValidName("host", h.Name); err != nil {
		return err
	}
	if err := ValidAddress(h.Address); err != nil {
		return err
	}
	for _, t := range h.Tags {
		if err := ValidName("tag", t); err != nil {
			return err
		}
	}
	// Spaces separate its words; a control character would be taken differently by the
	// remote shell than shown here.
	if err := safetext.Check("restart command", h.RestartCommand); err != nil {
		return err
	}
	return ValidSSH(h.SSH)
}

// NormalizeTags sorts and dedupes tags, so that equal sets compare equal. It trims spaces
// only: a tab or another control character is left for ValidName to refuse, not dropped.
func NormalizeTags(tags []string) []string {
	out := []string{}
	for _, t := range tags {
		if t = strings.Trim(t, " "); t != "" && !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	slices.Sort(out)
	return out
}

// NotFound refuses a name that is not in the inventory and says how to list the real ones.
func NotFound(kind, name, plural string) error {
	return errs.Refusedf("no %s %q: `kvmctl %s list` shows the %s", kind, name, kind, plural)
}

// AddZone creates zone name.
func AddZone(tx state.Tx, name string) (state.Zone, error) {
	if err := ValidName("zone", name); err != nil {
		return state.Zone{}, errs.Refused(err)
	}
	if _, err := state.GetZone(tx, name); err == nil {
		return state.Zone{}, errs.Refusedf("zone %q exists", name)
	}
	z := state.Zone{Name: name}
	return z, state.PutZone(tx, z)
}

// AddPod creates pod name in zone.
func AddPod(tx state.Tx, name, zone string) (state.Pod, error) {
	if err := ValidName("pod", name); err != nil {
		return state.Pod{}, errs.Refused(err)
	}
	if _, err := state.GetPod(tx, name); err == nil {
		return state.Pod{}, errs.Refusedf("pod %q exists", name)
	}
	if _, err := state.GetZone(tx, zone); err != nil {
		return state.Pod{}, NotFound("zone", zone, "zones")
	}
	p := state.Pod{Name: name, Zone: zone}
	return p, state.PutPod(tx, p)
}

// AddCluster creates cluster name in pod, Enabled.
func AddCluster(tx state.Tx, name, pod string) (state.Cluster, error) {
	if err := ValidName("cluster", name); err != nil {
		return state.Cluster{}, errs.Refused(err)
	}
	if _, err := state.GetCluster(tx, name); err == nil {
		return state.Cluster{}, errs.Refusedf("cluster %q exists", name)
	}
	p, err := state.GetPod(tx, pod)
	if err != nil {
		return state.Cluster{}, NotFound("pod", pod, "pods")
	}
	c := state.Cluster{Name: name, Pod: p.Name, Zone: p.Zone, ResourceState: state.Enabled}
	return c, state.PutCluster(tx, c)
}

// AddHost creates host h in h.Cluster, Enabled; zone and pod come from the cluster.
func AddHost(tx state.Tx, h state.Host) (state.Host, error) {
	h.Tags = NormalizeTags(h.Tags)
	if err := ValidHost(h); err != nil {
		return state.Host{}, errs.Refused(err)
	}
	if _, err := state.GetHost(tx, h.Name); err == nil {
		return state.Host{}, errs.Refusedf("host %q exists: `kvmctl host rm %s` first to replace it", h.Name, h.Name)
	}
	c, err := state.GetCluster(tx, h.Cluster)
	if err != nil {
		return state.Host{}, NotFound("cluster", h.Cluster, "clusters")
	}
	if other, err := hostWithAddress(tx, h.Address, h.Name); err != nil {
		return state.Host{}, err
	} else if other != "" {
		return state.Host{}, errs.Refusedf("address %s is already host %s's", h.Address, other)
	}
	h.Zone, h.Pod, h.ResourceState = c.Zone, c.Pod, state.Enabled
	return h, state.PutHost(tx, h)
}

func hostWithAddress(tx state.Tx, addr, except string) (string, error) {
	hosts, err := state.Hosts(tx)
	if err != nil {
		return "", err
	}
	for _, h := range hosts {
		if h.Address == addr && h.Name != except {
			return h.Name, nil
		}
	}
	return "", nil
}

// UpdateHost applies change to host name and checks the result as AddHost would; the name,
// cluster and resource state are not the caller's to change here.
func UpdateHost(tx state.Tx, name string, change func(*state.Host)) (state.Host, error) {
	h, err := state.GetHost(tx, name)
	if err != nil {
		return state.Host{}, NotFound("host", name, "hosts")
	}
	want := h
	change(&want)
	want.Name, want.Cluster, want.Zone, want.Pod, want.ResourceState = h.Name, h.Cluster, h.Zone, h.Pod, h.ResourceState
	want.Tags = NormalizeTags(want.Tags)
	if err := ValidHost(want); err != nil {
		return state.Host{}, errs.Refused(err)
	}
	if other, err := hostWithAddress(tx, want.Address, want.Name); err != nil {
		return state.Host{}, err
	} else if other != "" {
		return state.Host{}, errs.Refusedf("address %s is already host %s's", want.Address, other)
	}
	return want, state.PutHost(tx, want)
}

// RemoveZone deletes an empty zone.
func RemoveZone(tx state.Tx, name string) error {
	if _, err := state.GetZone(tx, name); err != nil {
		return NotFound("zone", name, "zones")
	}
	pods, err := state.Pods(tx)
	if err != nil {
		return err
	}
	var in []string
	for _, p := range pods {
		if p.Zone == name {
			in = append(in, p.Name)
		}
	}
	if len(in) > 0 {
		return errs.Refusedf("zone %s has pods %s: remove them first", name, strings.Join(in, ", "))
	}
	return tx.Delete(state.BucketZones, name)
}

// RemovePod deletes an empty pod.
func RemovePod(tx state.Tx, name string) error {
	if _, err := state.GetPod(tx, name); err != nil {
		return NotFound("pod", name, "pods")
	}
	cs, err := state.Clusters(tx)
	if err != nil {
		return err
	}
	var in []string
	for _, c := range cs {
		if c.Pod == name {
			in = append(in, c.Name)
		}
	}
	if len(in) > 0 {
		return errs.Refusedf("pod %s has clusters %s: remove them first", name, strings.Join(in, ", "))
	}
	return tx.Delete(state.BucketPods, name)
}

// ClusterHosts lists the hosts of cluster name, by name.
func ClusterHosts(tx state.Tx, name string) ([]state.Host, error) {
	hosts, err := state.Hosts(tx)
	if err != nil {
		return nil, err
	}
	var in []state.Host
	for _, h := range hosts {
		if h.Cluster == name {
			in = append(in, h)
		}
	}
	return in, nil
}

// RemoveCluster deletes a cluster that has no hosts, and its BMC settings; otherwise it names
// the hosts.
func RemoveCluster(tx state.Tx, name string) error {
	if _, err := state.GetCluster(tx, name); err != nil {
		return NotFound("cluster", name, "clusters")
	}
	hosts, err := ClusterHosts(tx, name)
	if err != nil {
		return err
	}
	if len(hosts) > 0 {
		names := make([]string, len(hosts))
		for i, h := range hosts {
			names[i] = h.Name
		}
		return errs.Refusedf("cluster %s has hosts %s: remove them first (kvmctl host rm NAME)", name, strings.Join(names, ", "))
	}
	if err := removeBMC(tx, "cluster", name); err != nil {
		return err
	}
	return tx.Delete(state.BucketClusters, name)
}

// RemoveHost deletes a host that is not in maintenance, and its BMC settings and HA records.
func RemoveHost(tx state.Tx, name string) error {
	h, err := state.GetHost(tx, name)
	if err != nil {
		return NotFound("host", name, "hosts")
	}
	switch h.ResourceState {
	case state.PrepareForMaintenance, state.Maintenance:
		return errs.Refusedf("host %s is in %s: cancel maintenance first (kvmctl maintenance cancel %s)", name, h.ResourceState, name)
	}
	if err := tx.Delete(state.BucketHostStatus, name); err != nil {
		return err
	}
	if err := removeBMC(tx, "host", name); err != nil {
		return err
	}
	return tx.Delete(state.BucketHosts, name)
}

// SetClusterState enables or disables cluster name; it reports the state it had before.
func SetClusterState(tx state.Tx, name, to string) (before string, err error) {
	if to != state.Enabled && to != state.Disabled {
		return "", fmt.Errorf("cluster state %q: want Enabled or Disabled", to)
	}
	c, err := state.GetCluster(tx, name)
	if err != nil {
		return "", NotFound("cluster", name, "clusters")
	}
	before = c.ResourceState
	c.ResourceState = to
	return before, state.PutCluster(tx, c)
}
