package api

import "time"

// The HA endpoints (host HA issue). kvmctl's `ha watch` polls every HA host's health every second
// over kept-alive connections, and asks healthy neighbours of a host that stopped answering to
// read its heartbeat and its VMs' disks on the shared storage.
const (
	// PathHealth answers GET with a HealthReport: cheap (no libvirt call, no storage I/O in the
	// request), for a check every second.
	PathHealth = "/" + Version + "/health"
	// PathActivityCheck answers POST ActivityCheckRequest with an ActivityCheckResult.
	PathActivityCheck = "/" + Version + "/activity-check"
)

// HeartbeatRecord is the content of a host's heartbeat file `hb-<host>` on the shared storage,
// written (by rename) every heartbeat.interval. Seq grows by one with every write of one agent
// run; a neighbour compares the seq it reads with the one it read before, so that no two hosts'
// clocks are ever compared. WrittenAt is the writer's clock, for people.
type HeartbeatRecord struct {
	Host      string    `json:"host"`
	BootID    string    `json:"boot_id"`
	Seq       uint64    `json:"seq"`
	WrittenAt time.Time `json:"written_at"`
}

// HeartbeatFileName is the name of host's heartbeat file in the heartbeat directory.
func HeartbeatFileName(host string) string { return "hb-" + host }

// HealthReport is the answer to GET /v1/health.
type HealthReport struct {
	OK         bool       `json:"ok"`
	Host       string     `json:"host"`
	BootID     string     `json:"boot_id"`
	AgentState AgentState `json:"agent_state"`
	// Heartbeat is the agent's own heartbeat writer, as it last saw it; nil when the agent
	// writes no heartbeat.
	Heartbeat *HeartbeatHealth `json:"heartbeat,omitempty"`
}

// HeartbeatHealth says how the agent's heartbeat writes go.
type HeartbeatHealth struct {
	// File is the heartbeat file's path on this host; the shared storage is mounted at the same
	// path on every host of a cluster, so a neighbour reads the same path.
	File string `json:"file"`
	// Seq is the seq of the last write that succeeded (0 before the first).
	Seq uint64 `json:"seq"`
	// LastOK is when the last successful write ended (the agent's clock); nil before the first.
	LastOK *time.Time `json:"last_ok,omitempty"`
	// LastError is the last write's error, "" when it succeeded.
	LastError string `json:"last_error,omitempty"`
	// Stuck is set while a write has been running for longer than its deadline (a hung NFS
	// server): the agent abandoned it and writes no heartbeat until it returns.
	Stuck bool `json:"stuck,omitempty"`
}

// ActivityCheckRequest asks a neighbour to read a suspect host's heartbeat and VM disks. Only
// paths inside the neighbour's heartbeat directory (HeartbeatFile) and its vm.disk.dirs (Disks)
// are read; anything else is refused, not read.
type ActivityCheckRequest struct {
	// Host is the suspect host's name (the heartbeat's content must name it).
	Host          string   `json:"host"`
	HeartbeatFile string   `json:"heartbeat_file"`
	Disks         []string `json:"disks"`
}

// ActivityCheckResult is what the neighbour read, each read under its own deadline.
type ActivityCheckResult struct {
	// Checker is the neighbour that read.
	Checker   string          `json:"checker"`
	Heartbeat HeartbeatSample `json:"heartbeat"`
	Disks     []FileSample    `json:"disks"`
	// ReadAt is when the neighbour read (its clock), for people only.
	ReadAt time.Time `json:"read_at"`
}

// HeartbeatSample is a heartbeat file as a neighbour read it, with a fresh open (NFS
// close-to-open consistency). Error is set, and the rest empty, when it could not be read in time
// or did not parse or named another host.
type HeartbeatSample struct {
	Path  string          `json:"path"`
	Read  HeartbeatRecord `json:"record"`
	Error string          `json:"error,omitempty"`
}

// FileSample is one disk file's mtime and size, read through open+fstat (which beats NFS
// attribute caching) under a deadline. Error is set when it could not be read in time.
type FileSample struct {
	Path  string    `json:"path"`
	MTime time.Time `json:"mtime"`
	Size  int64     `json:"size"`
	Error string    `json:"error,omitempty"`
}
