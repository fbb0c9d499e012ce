package state

import (
	"errors"
	"time"
)

// Resource states of clusters and hosts, CloudStack's names.
const (
	Enabled               = "Enabled"
	Disabled              = "Disabled"
	PrepareForMaintenance = "PrepareForMaintenance"
	ErrorInMaintenance    = "ErrorInMaintenance"
	Maintenance           = "Maintenance"
)

// Zone is the largest unit of the inventory: a data centre or a site.
type Zone struct {
	Name    string  `json:"name"`
	Unknown Unknown `json:"-"`
}

// Pod is a rack or a row inside a zone.
type Pod struct {
	Name    string  `json:"name"`
	Zone    string  `json:"zone"`
	Unknown Unknown `json:"-"`
}

// Cluster is a set of hosts that share storage and between which VMs can move.
type Cluster struct {
	Name          string  `json:"name"`
	Pod           string  `json:"pod"`
	Zone          string  `json:"zone"`
	ResourceState string  `json:"resource_state"`
	Unknown       Unknown `json:"-"`
}

// SSH says how kvmctl reaches a host's shell when its agent must be restarted.
type SSH struct {
	User           string `json:"user,omitempty" yaml:"user,omitempty"`
	Port           int    `json:"port,omitempty" yaml:"port,omitempty"`
	KeyFile        string `json:"key_file,omitempty" yaml:"key_file,omitempty"`
	KnownHostsFile string `json:"known_hosts_file,omitempty" yaml:"known_hosts_file,omitempty"`
}

// IsZero reports whether no SSH field is set.
func (s SSH) IsZero() bool { return s == SSH{} }

// Host is a KVM host running kvmagent at Address (host:port).
type Host struct {
	Name    string   `json:"name"`
	Zone    string   `json:"zone"`
	Pod     string   `json:"pod"`
	Cluster string   `json:"cluster"`
	Address string   `json:"address"`
	Tags    []string `json:"tags"`
	SSH     SSH      `json:"ssh"`
	// RestartCommand restarts the agent over SSH; empty means `systemctl restart kvmagent`.
	RestartCommand string `json:"restart_command,omitempty"`
	ResourceState  string `json:"resource_state"`
	// StateReason says why the host is in ErrorInMaintenance (or what last changed its state).
	StateReason string `json:"state_reason,omitempty"`
	// Lab marks a host that `kvmctl lab up` created: its agent runs libvirt's test driver, which
	// cannot migrate, so kvmctl moves its VMs by a transfer through the two agents. Only kvmctl
	// sets it, never a host's own report: a transfer carries a definition from one host to another.
	Lab bool `json:"lab,omitempty"`
	// Unknown keeps fields a newer kvmctl wrote.
	Unknown Unknown `json:"-"`
}

// GetZone returns the zone called name, or ErrNotFound.
func GetZone(tx Tx, name string) (Zone, error) {
	var z Zone
	return z, GetJSON(tx, BucketZones, name, &z)
}

// GetPod returns the pod called name, or ErrNotFound.
func GetPod(tx Tx, name string) (Pod, error) {
	var p Pod
	return p, GetJSON(tx, BucketPods, name, &p)
}

// GetCluster returns the cluster called name, or ErrNotFound.
func GetCluster(tx Tx, name string) (Cluster, error) {
	var c Cluster
	return c, GetJSON(tx, BucketClusters, name, &c)
}

// GetHost returns the host called name, or ErrNotFound.
func GetHost(tx Tx, name string) (Host, error) {
	var h Host
	err := GetJSON(tx, BucketHosts, name, &h)
	if h.Tags == nil {
		h.Tags = []string{}
	}
	return h, err
}

// Zones lists every zone by name.
func Zones(tx Tx) ([]Zone, error) { return ListJSON[Zone](tx, BucketZones) }

// Pods lists every pod by name.
func Pods(tx Tx) ([]Pod, error) { return ListJSON[Pod](tx, BucketPods) }

// Clusters lists every cluster by name.
func Clusters(tx Tx) ([]Cluster, error) { return ListJSON[Cluster](tx, BucketClusters) }

// Hosts lists every host by name.
func Hosts(tx Tx) ([]Host, error) {
	hs, err := ListJSON[Host](tx, BucketHosts)
	for i := range hs {
		if hs[i].Tags == nil {
			hs[i].Tags = []string{}
		}
	}
	return hs, err
}

// PutZone writes z.
func PutZone(tx Tx, z Zone) error { return PutJSON(tx, BucketZones, z.Name, z) }

// PutPod writes p.
func PutPod(tx Tx, p Pod) error { return PutJSON(tx, BucketPods, p.Name, p) }

// PutCluster writes c.
func PutCluster(tx Tx, c Cluster) error { return PutJSON(tx, BucketClusters, c.Name, c) }

// PutHost writes h.
func PutHost(tx Tx, h Host) error { return PutJSON(tx, BucketHosts, h.Name, h) }

// IsNotFound reports whether err says a key was absent.
func IsNotFound(err error) bool { return errors.Is(err, ErrNotFound) }

// BucketHostStatus holds what kvmctl last learned from each host's agent, keyed by host name.
const BucketHostStatus = "host_status"

// Connection states of a host, as kvmctl sees its agent.
const (
	ConnUp           = "Up"
	ConnDisconnected = "Disconnected"
	ConnDown         = "Down"
)

// Resources are CPUs and memory, of a host's capacity or of what its VMs use.
type Resources struct {
	CPUs      int    `json:"cpus"`
	MemoryMiB uint64 `json:"memory_mib"`
}

// VMRecord is a VM as an agent last reported it.
type VMRecord struct {
	Name      string   `json:"name"`
	UUID      string   `json:"uuid"`
	State     string   `json:"state"`
	VCPUs     int      `json:"vcpus"`
	MemoryMiB uint64   `json:"memory_mib"`
	Disks     []string `json:"disks,omitempty"`
	Tags      []string `json:"tags,omitempty"`
	Groups    []Group  `json:"groups,omitempty"`
	// DefinitionHash is what the agent said of the VM's definition (BucketVMDefs keeps it).
	DefinitionHash string `json:"definition_hash,omitempty"`
}

// Group is a VM's affinity or anti-affinity group.
type Group struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

// HostStatus is the last answer (or silence) of a host's agent.
type HostStatus struct {
	Connection   string     `json:"connection,omitempty"`
	CheckedAt    time.Time  `json:"checked_at,omitzero"`
	LastSeen     time.Time  `json:"last_seen,omitzero"`
	LastError    string     `json:"last_error,omitempty"`
	AgentState   string     `json:"agent_state,omitempty"`
	AgentVersion string     `json:"agent_version,omitempty"`
	Hypervisor   string     `json:"hypervisor,omitempty"`
	BootID       string     `json:"boot_id,omitempty"`
	StartedAt    time.Time  `json:"agent_started_at,omitzero"`
	Capacity     Resources  `json:"capacity"`
	Allocation   Resources  `json:"allocation"`
	VMs          []VMRecord `json:"vms"`
	Unknown      Unknown    `json:"-"`
}

// GetHostStatus returns the stored status of host name; a host never checked has a zero one.
func GetHostStatus(tx Tx, name string) (HostStatus, error) {
	var s HostStatus
	err := GetJSON(tx, BucketHostStatus, name, &s)
	if IsNotFound(err) {
		err = nil
	}
	if s.VMs == nil {
		s.VMs = []VMRecord{}
	}
	return s, err
}

// PutHostStatus stores the status of host name.
func PutHostStatus(tx Tx, name string, s HostStatus) error {
	return PutJSON(tx, BucketHostStatus, name, s)
}

// The stored records keep the fields they do not know (see Unknown).

func (z *Zone) UnmarshalJSON(b []byte) (err error) {
	type plain Zone
	z.Unknown, err = UnmarshalKeeping(b, (*plain)(z))
	return err
}

func (z Zone) MarshalJSON() ([]byte, error) {
	type plain Zone
	return MarshalKeeping(plain(z), z.Unknown)
}

func (p *Pod) UnmarshalJSON(b []byte) (err error) {
	type plain Pod
	p.Unknown, err = UnmarshalKeeping(b, (*plain)(p))
	return err
}

func (p Pod) MarshalJSON() ([]byte, error) {
	type plain Pod
	return MarshalKeeping(plain(p), p.Unknown)
}

func (c *Cluster) UnmarshalJSON(b []byte) (err error) {
	type plain Cluster
	c.Unknown, err = UnmarshalKeeping(b, (*plain)(c))
	return err
}

func (c Cluster) MarshalJSON() ([]byte, error) {
	type plain Cluster
	return MarshalKeeping(plain(c), c.Unknown)
}

func (h *Host) UnmarshalJSON(b []byte) (err error) {
	type plain Host
	h.Unknown, err = UnmarshalKeeping(b, (*plain)(h))
	return err
}

func (h Host) MarshalJSON() ([]byte, error) {
	type plain Host
	return MarshalKeeping(plain(h), h.Unknown)
}

func (s *HostStatus) UnmarshalJSON(b []byte) (err error) {
	type plain HostStatus
	s.Unknown, err = UnmarshalKeeping(b, (*plain)(s))
	return err
}

func (s HostStatus) MarshalJSON() ([]byte, error) {
	type plain HostStatus
	return MarshalKeeping(plain(s), s.Unknown)
}
