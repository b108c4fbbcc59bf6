//go:build e2e

package e2e

import (
	"strings"
	"testing"
)

// TestCraneCatalog: the real crane lists the embedded registry's
// repositories, the demo release's among them.
func TestCraneCatalog(t *testing.T) {
	k := startKiln(t, nil, "--data-dir", t.TempDir(), "--demo")

	out := run(t, binary(t, "CRANE"), "catalog", "--insecure", k.addr)

	for _, repo := range []string{"kiln-demo/siderolabs/imager", "kiln-demo/siderolabs/installer-base", "kiln-demo/registry.k8s.io/kube-apiserver"} {
		if !strings.Contains("\n"+out, "\n"+repo+"\n") {
			t.Errorf("crane catalog does not list %s:\n%s", repo, out)
		}
	}

	k.stop(t)
}
