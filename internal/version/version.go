// Package version reports kiln's own version.
package version

import "runtime/debug"

// tag is set at link time (-ldflags "-X .../internal/version.tag=v0.1.0").
var tag string

// Version is the link-time tag, else the module version, else "dev".
func Version() string {
	if tag != "" {
		return tag
	}

	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}

	return "dev"
}
