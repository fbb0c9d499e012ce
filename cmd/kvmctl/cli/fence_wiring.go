package cli

import (
	"github.com/kvmctl/kvmctl/pkg/cmdutil"
	"github.com/kvmctl/kvmctl/pkg/fence"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// bmcDriver opens the driver of a host's effective BMC settings.
func bmcDriver(b state.BMC, host string) (fence.Driver, error) {
	return fence.Open(b, host, fence.Options{})
}

// notifier sends the fence path's notices through the configured channels.
func notifier(f *cmdutil.Factory) fence.Notifier { return fenceNotifier(f) }
