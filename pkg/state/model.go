package state

import "errors"

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
	Name string `json:"name"`
}

// Pod is a rack or a row inside a zone.
type Pod struct {
	Name string `json:"name"`
	Zone string `json:"zone"`
}

// Cluster is a set of hosts that share storage and between which VMs can move.
type Cluster struct {
	Name          string `json:"name"`
	Pod           string `json:"pod"`
	Zone          string `json:"zone"`
	ResourceState string `json:"resource_state"`
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
	Name          string   `json:"name"`
	Zone          string   `json:"zone"`
	Pod           string   `json:"pod"`
	Cluster       string   `json:"cluster"`
	Address       string   `json:"address"`
	Tags          []string `json:"tags"`
	SSH           SSH      `json:"ssh"`
	ResourceState string   `json:"resource_state"`
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
