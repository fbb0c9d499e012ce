// Package api is the contract between kvmctl and kvmagent: versioned paths, the JSON wire types
// (snake_case), the error body and its codes, and the typed mutual-TLS client kvmctl uses.
//
// The agent imports this package for its types only; nothing here knows kvmctl's state or engines.
package api

import "time"

// Version is the path prefix of this API. A breaking change gets a new prefix, served beside the
// old one until every kvmctl has moved.
const Version = "v1"

// Paths of the agent's endpoints.
const (
	// PathStatus answers GET with a Status.
	PathStatus = "/" + Version + "/status"
	// PathHealthz answers GET with a Health; HA watchers poll it.
	PathHealthz = "/" + Version + "/healthz"

	// PathHooks lists the stage scripts of the host (hooks issue).
	PathHooks = "/" + Version + "/hooks"
	// PathStages starts and reports stage executions (hooks issue).
	PathStages = "/" + Version + "/stages"
	// PathMaintenance enters and cancels maintenance mode (maintenance issue).
	PathMaintenance = "/" + Version + "/maintenance"
)

// AgentState is the state of the agent on its host, as opposed to kvmctl's view of the host.
type AgentState string

// Agent states. The maintenance issue adds "hostInMaintenance" (connected, rejects every VM
// operation, still accepts status, stages and cancel).
const (
	AgentStateUp AgentState = "Up"
	// AgentStateInMaintenance: connected, refuses every VM operation, accepts status, stages
	// and cancel.
	AgentStateInMaintenance AgentState = "hostInMaintenance"
)

// Hypervisor kinds an agent reports in Status.Hypervisor (libvirt's driver name).
const (
	HypervisorQEMU = "qemu"
	// HypervisorTest is libvirt's test driver, used by the lab: it cannot migrate, so VMs move
	// between lab hosts by a transfer through the two agents.
	HypervisorTest = "test"
)

// Status is the answer to GET /v1/status: who the agent is, what its host can hold and what runs
// on it.
type Status struct {
	HostName     string `json:"host_name"`
	AgentVersion string `json:"agent_version"`
	// Hypervisor is libvirt's driver name ("qemu", or "test" in the lab).
	Hypervisor string `json:"hypervisor"`
	// BootID changes on every boot of the host; kvmctl compares it across a stage to see that the
	// host rebooted.
	BootID     string     `json:"boot_id"`
	StartedAt  time.Time  `json:"started_at"`
	AgentState AgentState `json:"agent_state"`
	// Capacity is the host's size as the hypervisor reports it.
	Capacity Resources `json:"capacity"`
	// Allocation sums the vCPUs and memory of the VMs that hold host resources (running or paused).
	Allocation Resources `json:"allocation"`
	VMs        []VM      `json:"vms"`
}

// Resources is an amount of CPUs and memory.
type Resources struct {
	CPUs      int    `json:"cpus"`
	MemoryMiB uint64 `json:"memory_mib"`
}

// VM is one VM defined or running on a host.
type VM struct {
	Name      string `json:"name"`
	UUID      string `json:"uuid"`
	State     string `json:"state"`
	VCPUs     int    `json:"vcpus"`
	MemoryMiB uint64 `json:"memory_mib"`
	// Disks are the source paths of the VM's disks; HA activity checks read their mtimes.
	Disks []string `json:"disks"`
	// Tags are host tags the VM requires.
	Tags   []string        `json:"tags"`
	Groups []AffinityGroup `json:"groups"`
	// DefinitionHash is the hex SHA-256 of the VM's definition as GET /v1/vms/{name}/xml answers
	// it: kvmctl fetches and keeps the definition when the hash changes, so that HA can start the
	// VM elsewhere from its own copy once the host is dead. "" from an agent that does not say.
	DefinitionHash string `json:"definition_hash,omitempty"`
}

// AffinityGroup is a named placement rule ("host-affinity" or "host-anti-affinity").
type AffinityGroup struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

// Health is the answer to GET /v1/healthz.
type Health struct {
	OK bool `json:"ok"`
}
