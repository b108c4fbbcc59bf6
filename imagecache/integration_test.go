//go:build integration

package imagecache

// Against Debian's distribution registry (DOCKER_REGISTRY, else
// docker-registry on PATH) and crane (CRANE, else _tools/bin/crane):
//
//	go test -tags integration -run Integration ./imagecache/

import (
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/testfixture"
)

// serve runs Handler(dir) on 127.0.0.1 and returns host:port.
func serve(t testing.TB, dir string) string {
	t.Helper()

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}

	srv := &http.Server{Handler: Handler(dir), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l) //nolint:errcheck // closed below

	t.Cleanup(func() { srv.Close() })

	return l.Addr().String()
}

func crane(t *testing.T, args ...string) string {
	t.Helper()

	cmd := exec.Command(testfixture.Crane(t), append(args, "--insecure")...)
	cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+t.TempDir())

	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}

		t.Fatalf("crane %v: %v\n%s", args, err, stderr)
	}

	return strings.TrimSpace(string(out))
}

// TestIntegrationCranePullsBack: a cache built from docker-registry (as
// kiln's mirror) is served by Handler, and crane pulls every image back
// with the digests of the sources, every platform and blob validating.
func TestIntegrationCranePullsBack(t *testing.T) {
	f := newFixtureAt(t, startRegistry(t, testfixture.DockerRegistry(t)), 64<<10, 2)

	opts := Options{Platforms: []string{"all"}, Layout: Flat, Signatures: true, Logger: quiet()}
	p := f.plan(t, opts)

	out := filepath.Join(t.TempDir(), "cache")
	if _, err := Write(t.Context(), p, out, opts); err != nil {
		t.Fatal(err)
	}

	host := serve(t, out)

	for _, c := range []struct{ path, src string }{
		{"siderolabs/kubelet:v1.36.0", "ghcr.io/siderolabs/kubelet:v1.36.0"},
		{"pause:3.10", "registry.k8s.io/pause:3.10"},
		{"registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"},
		{"library/busybox:1.37", "docker.io/library/busybox:1.37"},
		{"direct/app:v1", f.host + "/direct/app:v1"},
	} {
		ref := host + "/" + c.path
		if got, want := crane(t, "digest", ref), f.digests[c.src].String(); got != want {
			t.Errorf("%s: digest %s, source %s", ref, got, want)
		}

		crane(t, "validate", "--remote", ref)
		crane(t, "pull", "--format", "oci", ref, filepath.Join(t.TempDir(), "pulled"))

		// The signature tag, when the source has one.
		d := f.digests[c.src]
		if !strings.Contains(c.src, "busybox") {
			repo, _, _ := strings.Cut(c.path, ":")
			tag := ":sha256-" + d.Hex + ".sig"
			src := c.src[:strings.LastIndex(c.src, ":")]
			if !strings.HasPrefix(c.src, f.host) {
				src = f.host + "/" + strings.TrimPrefix(src, "ghcr.io/")
			}

			if got, want := crane(t, "digest", host+"/"+repo+tag), crane(t, "digest", src+tag); got != want {
				t.Errorf("%s signature: digest %s, source %s", ref, got, want)
			}

			crane(t, "blob", host+"/"+repo+"@"+sigLayer(t, crane(t, "manifest", host+"/"+repo+tag)))
		}
	}

	// Each platform of an index separately.
	for _, pf := range []string{"linux/amd64", "linux/arm64"} {
		crane(t, "validate", "--platform", pf, "--remote", host+"/direct/app:v1")
	}
}

func sigLayer(t *testing.T, manifest string) string {
	t.Helper()

	var m struct {
		Layers []struct{ Digest string } `json:"layers"`
	}

	if err := json.Unmarshal([]byte(manifest), &m); err != nil || len(m.Layers) == 0 {
		t.Fatalf("signature manifest %s: %v", manifest, err)
	}

	return m.Layers[0].Digest
}
