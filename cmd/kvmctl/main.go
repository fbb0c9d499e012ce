// Command kvmctl is the operator CLI of a KVM fleet: inventory, maintenance mode, rolling
// maintenance and host HA, driving a kvmagent on every host over mutual TLS.
package main

import (
	"os"

	"github.com/kvmctl/kvmctl/cmd/kvmctl/cli"
	"github.com/kvmctl/kvmctl/pkg/iostreams"
)

func main() {
	os.Exit(cli.Run(os.Args[1:], iostreams.System()))
}
