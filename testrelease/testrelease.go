// Package testrelease is the name kiln's tests give the synthetic Talos
// release: the generator itself is production code in package demo (kiln
// serve --demo seeds it), so that the kiln binary carries no test kit;
// this package only keeps the tests' spelling, testrelease.Push and
// testrelease.Options, pointing at it. Use it from tests only.
package testrelease

import (
	"context"

	"github.com/kiln-dev/kiln/demo"
)

// Options, Release and Push are demo's: see demo.Push.
type (
	Options = demo.Options
	Release = demo.Release
)

// Push generates a synthetic release and pushes it (demo.Push).
func Push(ctx context.Context, opts Options) (*Release, error) { return demo.Push(ctx, opts) }

// Constants of the synthetic release that tests check against.
const (
	DefaultKernelVersion = demo.DefaultKernelVersion
	GvisorBinaryLabel    = demo.GvisorBinaryLabel
	GvisorConfigLabel    = demo.GvisorConfigLabel
)
