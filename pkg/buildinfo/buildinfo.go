// Package buildinfo carries the version stamped into both binaries at link time.
package buildinfo

import "runtime/debug"

// Version is set with -ldflags "-X github.com/kvmctl/kvmctl/pkg/buildinfo.Version=..." by make.
var Version = ""

// String returns the version, falling back to the module version for `go install` builds.
func String() string {
	if Version != "" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}
