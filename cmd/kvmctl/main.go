// Command kvmctl is the operator CLI of a KVM fleet: inventory, maintenance mode, rolling
// maintenance and host HA, driving a kvmagent on every host over mutual TLS.
package main

import (
	"os"
	"os/signal"
	"syscall"

	"github.com/kvmctl/kvmctl/cmd/kvmctl/cli"
	"github.com/kvmctl/kvmctl/pkg/iostreams"
)

func main() {
	// `kvmctl rolling start --events | head` must not kill a run half-way when head exits: a
	// write to a closed pipe then fails (and is dropped) instead of ending the process.
	signal.Ignore(syscall.SIGPIPE)
	os.Exit(cli.Run(os.Args[1:], iostreams.System()))
}
