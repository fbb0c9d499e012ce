package api

import (
	"net/url"
	"time"
)

// PathVMs is the collection of the host's VMs: POST defines and starts one; PathVM(name) and
// its sub-paths address one VM.
const PathVMs = "/" + Version + "/vms"

// PathVM is the path of the VM name, escaped so that any libvirt name fits in one segment.
func PathVM(name string) string { return PathVMs + "/" + url.PathEscape(name) }

// MaxMigrateTimeout is the longest an agent works on one live migration: its handler timeout
// for POST /v1/vms/{name}/migrate, and the bound on MigrateRequest.TimeoutS.
const MaxMigrateTimeout = 30 * time.Minute

// Maintenance is the answer to GET, POST and DELETE /v1/maintenance: the agent's state after the
// call.
type Maintenance struct {
	AgentState string `json:"agent_state"`
	// Since is when the host entered maintenance; zero when it is not in maintenance.
	Since time.Time `json:"since,omitzero"`
}

// MigrateRequest asks an agent to live-migrate one of its VMs (POST /v1/vms/{name}/migrate).
type MigrateRequest struct {
	// DestURI is the libvirt URI of the target host, exactly as MigrationURI builds it, e.g.
	// qemu+tls://10.0.0.12/system; the agent refuses any other.
	DestURI       string `json:"dest_uri"`
	BandwidthMiBs uint64 `json:"bandwidth_mibs,omitempty"`
	// TimeoutS aborts the migration after this many seconds; 0 means MaxMigrateTimeout, more
	// than that is refused.
	TimeoutS int `json:"timeout_s,omitempty"`
}

// DefineVMRequest asks an agent to define and start a VM from its libvirt XML (POST /v1/vms).
type DefineVMRequest struct {
	XML string `json:"xml"`
}

// VMXML is the answer to GET /v1/vms/{name}/xml.
type VMXML struct {
	Name string `json:"name"`
	XML  string `json:"xml"`
}
