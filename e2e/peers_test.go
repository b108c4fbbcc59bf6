//go:build e2e

package e2e

import (
	"testing"

	"github.com/kiln-dev/kiln/internal/testfixture"
)

// startRegistry runs Debian's registry (DOCKER_REGISTRY) for the test.
func startRegistry(t *testing.T) string {
	t.Helper()

	return testfixture.StartRegistry(t, binary(t, "DOCKER_REGISTRY"))
}
