//go:build e2e

package e2e

import (
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDemoRelease: the demo release is seeded, listed on every surface, read
// by crane and verified by the real cosign CLI through kiln's own /v2/.
func TestDemoRelease(t *testing.T) {
	dir := t.TempDir()
	k := startKiln(t, nil, "--data-dir", dir, "--demo")
	client := &http.Client{Timeout: 30 * time.Second}

	code, _, body := httpDo(t, client, "GET", "http://"+k.addr+"/versions", "")
	if code != 200 || body != `["v1.12.0","v1.13.0"]`+"\n" {
		t.Fatalf("/versions = %d %q", code, body)
	}

	code, _, body = httpDo(t, client, "GET", "http://"+k.addr+"/version/v1.13.0/extensions/official", "")

	var exts []struct{ Name, Ref, Digest string }
	if err := json.Unmarshal([]byte(body), &exts); err != nil || code != 200 || len(exts) < 3 {
		t.Fatalf("extensions = %d %s", code, body)
	}

	crane := binary(t, "CRANE")

	// Every catalog ref is pullable from kiln, at the catalog's digest.
	for _, e := range exts {
		if got := strings.TrimSpace(run(t, crane, "digest", e.Ref)); got != e.Digest {
			t.Errorf("crane digest %s = %s, want %s", e.Ref, got, e.Digest)
		}
	}

	imager := k.addr + "/kiln-demo/siderolabs/imager:v1.13.0"
	if files := run(t, crane, "export", imager, "-"); !strings.Contains(files, "usr/install/amd64/vmlinuz") {
		t.Errorf("crane export %s lacks the boot assets", imager)
	}

	cosign := exec.Command(binary(t, "COSIGN"), "verify", "--key", filepath.Join(dir, "demo", "cosign.pub"), "--insecure-ignore-tlog", imager)
	cosign.Env = append(os.Environ(), "HOME="+t.TempDir())

	if out, err := cosign.CombinedOutput(); err != nil || !strings.Contains(string(out), "The signatures were verified against the specified public key") {
		t.Fatalf("cosign verify: %v\n%s", err, out)
	}
}
