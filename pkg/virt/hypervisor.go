package virt

import (
	"errors"
	"time"
)

// Hypervisor is what the agent needs from the virtualisation layer of its
// host. Implementations must be safe for concurrent use.
type Hypervisor interface {
	// NodeInfo reports the host's total CPUs and memory.
	NodeInfo() (Capacity, error)
	// ListVMs lists every VM defined or running on the host, sorted by name.
	ListVMs() ([]VM, error)
	// DomainXML returns the persistent definition of a VM, suitable for
	// DefineAndStart on another host.
	DomainXML(name string) (string, error)
	// DefineAndStart defines a VM from its domain XML and starts it. check runs on the
	// hypervisor's own reading of the definition (its inactive XML) before the VM starts: if it
	// refuses, the definition is removed again (or the one it replaced is put back) and the
	// refusal returned. A nil check is refused: nothing is defined unchecked.
	DefineAndStart(xml string, check DomainCheck) error
	// Start starts a defined VM.
	Start(name string) error
	// Destroy powers a VM off at once; a VM that is already off is not an error.
	Destroy(name string) error
	// Undefine removes the definition of a VM that is not running.
	Undefine(name string) error
	// Migrate live-migrates a VM to the libvirt URI destURI.
	Migrate(name, destURI string, opts MigrateOptions) error
	// Close releases the connection.
	Close() error
}

// DomainCheck checks a domain definition as the hypervisor read it (see CheckDomain).
type DomainCheck func(domainXML string) error

// errNoCheck refuses a define without a DomainCheck.
var errNoCheck = errors.New("no domain check given: nothing is defined unchecked")

// Capacity is a host's size, or the part of it that VMs use.
type Capacity struct {
	CPUs      int
	MemoryMiB uint64
}

// VM is one libvirt domain as kvmctl sees it.
type VM struct {
	Name      string
	UUID      string
	State     State
	VCPUs     int
	MemoryMiB uint64
	// Disks are the source paths of the VM's file and block disks; the HA
	// activity check looks at their modification times.
	Disks []string
	// RequiredTags are host tags the VM may only run on.
	RequiredTags   []string
	AffinityGroups []AffinityGroup
}

// AffinityGroup is a named placement rule shared by several VMs.
type AffinityGroup struct {
	Name string
	Type string // GroupHostAffinity or GroupHostAntiAffinity
}

// Affinity group types, with CloudStack's names.
const (
	GroupHostAffinity     = "host-affinity"
	GroupHostAntiAffinity = "host-anti-affinity"
)

// State is a VM's run state, libvirt's virDomainState in lower case.
type State string

// The VM states libvirt reports.
const (
	StateNoState     State = "nostate"
	StateRunning     State = "running"
	StateBlocked     State = "blocked"
	StatePaused      State = "paused"
	StateShutdown    State = "shutdown" // shutting down
	StateShutoff     State = "shutoff"
	StateCrashed     State = "crashed"
	StatePMSuspended State = "pmsuspended"
)

// Active reports whether the VM holds host resources (anything but shutoff
// and nostate); a paused VM still holds its memory and vCPUs.
func (s State) Active() bool {
	return s != StateShutoff && s != StateNoState && s != ""
}

// MigrateOptions tune a live migration.
type MigrateOptions struct {
	// BandwidthMiBs caps the migration stream in MiB/s; 0 means libvirt's default.
	BandwidthMiBs uint64
	// Timeout aborts the migration job when it runs longer; 0 means no limit.
	Timeout time.Duration
}

// Errors callers can test with errors.Is.
var (
	// ErrVMNotFound means no VM of that name is defined on the host.
	ErrVMNotFound = errors.New("vm not found")
	// ErrVMRunning means the operation needs the VM to be off, or would
	// replace the definition of a running VM.
	ErrVMRunning = errors.New("vm is running")
	// ErrMigrationUnsupported means the hypervisor cannot live-migrate
	// (libvirt's test driver); move the VM with Transfer instead.
	ErrMigrationUnsupported = errors.New("live migration is not supported by this hypervisor")
	// ErrMigrationTimeout means a migration ran past MigrateOptions.Timeout and was aborted.
	ErrMigrationTimeout = errors.New("migration timed out")
)

// Allocation sums the vCPUs and memory of the running VMs, i.e. what a host
// has committed. Paused VMs count too: they keep their memory.
func Allocation(vms []VM) Capacity {
	var c Capacity
	for _, vm := range vms {
		if !vm.State.Active() {
			continue
		}
		c.CPUs += vm.VCPUs
		c.MemoryMiB += vm.MemoryMiB
	}
	return c
}
