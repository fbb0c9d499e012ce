// Command kvmagent runs on every KVM host of a kvmctl fleet: an HTTPS server with mutual TLS that
// reports the host's status, runs its rolling-maintenance stage scripts and writes its heartbeat.
package main

import (
	"os"

	"github.com/kvmctl/kvmctl/cmd/kvmagent/agentcli"
)

func main() {
	os.Exit(agentcli.Run(os.Args[1:], os.Stdout, os.Stderr))
}
