package imagecache

import (
	"testing"

	"github.com/kiln-dev/kiln/internal/testfixture"
)

// startRegistry runs docker-registry (bin) for the test.
func startRegistry(t testing.TB, bin string) string {
	t.Helper()

	return testfixture.StartRegistry(t, bin)
}
