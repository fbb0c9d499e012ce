// Package agent is kvmagent: its configuration (agent.properties), its HTTPS server with mutual
// TLS, the status it reports about its host, and its heartbeat writer.
//
// Layout, so that later issues know where to plug in:
//
//	config.go     agent.properties: keys, defaults, checks
//	agent.go      Agent: construction, Serve, graceful shutdown
//	routes.go     the route table (one line per endpoint, each with its timeout) and middleware
//	http.go       JSON request decoding with limits, JSON answers and errors
//	status.go     GET /v1/status, GET /v1/healthz, GET /v1/health (answered from memory)
//	state.go      the agent state machine (Up, hostInMaintenance), persisted in state.dir
//	maintenance.go GET/POST/DELETE /v1/maintenance
//	vms.go        /v1/vms: definition, define and start, start, remove, migrate
//	heartbeat.go  the heartbeat writer: hb-<host> in heartbeat.dir, each write under a deadline
//	activity.go   POST /v1/activity-check: a neighbour reads a suspect's heartbeat and disks
//	storageio.go  calls to the shared storage, each in its own goroutine under a deadline
//
// The hooks endpoints (/v1/hooks, /v1/stages) and maintenance (/v1/maintenance) are added to
// the route table in routes.go by their own issues.
package agent
