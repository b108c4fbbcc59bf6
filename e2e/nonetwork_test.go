//go:build integration

package e2e

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestNoNetwork runs kiln in a network namespace of its own, with nothing
// but loopback: seeding, serving and verifying signatures need no network.
func TestNoNetwork(t *testing.T) {
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Fatalf("unshare (util-linux) is required: %v", err)
	}

	script := `set -e
ip link set lo up 2>/dev/null || true
"$KILN" serve --listen 127.0.0.1:18999 --data-dir "$DATA" --demo --log-format json 2>"$DATA/kiln.log" &
for i in $(seq 1 120); do curl -sf http://127.0.0.1:18999/readyz >/dev/null && break; sleep 0.25; done
curl -sSf http://127.0.0.1:18999/version/v1.13.0/overlays/official
kill %1; wait %1 || true
grep -c '"signature verified"' "$DATA/kiln.log"
`

	cmd := exec.Command("unshare", "--net", "--", "bash", "-c", script)
	cmd.Env = append(os.Environ(), "KILN="+binary(t, "KILN_BIN"), "DATA="+t.TempDir())

	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("kiln in an empty network namespace: %v\n%s", err, out)
	}

	if !strings.Contains(string(out), `"name":"rpi_generic"`) {
		t.Fatalf("no overlays listed without network:\n%s", out)
	}
}
