//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/imagecache"
	"github.com/kiln-dev/kiln/internal/testfixture"
)

// TestContainerdPull: the real containerd (Debian's package, a daemon of
// the test's own: its own root, state and socket, no CRI plugin) pulls
// kiln's installer with ctr, as a node's containerd does:
//
//   - by kiln's address, plain HTTP, the first pull building it;
//   - by the install image of kiln's air-gap patch, whose host (kiln's
//     --external-url, a name nothing resolves) reaches kiln only through
//     the registry mirror the patch configures for it, written as
//     containerd's hosts.toml; containerd then sends ?ns=<host>, as to a
//     node's registryd.
//
// Each pull has the digest crane reads from kiln, and the unpacked
// linux/amd64 snapshot, mounted, holds usr/install/amd64/vmlinuz.efi and
// systemd-boot.efi.
func TestContainerdPull(t *testing.T) {
	crane := binary(t, "CRANE")
	sock := startContainerd(t)

	const external = "kiln.example:8080"

	k := startKiln(t, nil, "--data-dir", t.TempDir(), "--demo", "--external-url", "http://"+external)
	client := &http.Client{Timeout: 5 * time.Minute}

	if code, _, body := httpDo(t, client, "POST", "http://"+k.addr+"/schematics", "{}"); code != 201 || !strings.Contains(body, emptyID) {
		t.Fatalf("POST /schematics = %d %s", code, body)
	}

	ref := k.addr + "/metal-installer/" + emptyID + ":v1.13.0"
	ctr := func(args ...string) string {
		return runLong(t, "ctr", append([]string{"-a", sock, "-n", "kiln"}, args...)...)
	}

	start := time.Now()
	ctr("images", "pull", "--plain-http", "--platform", "linux/amd64", ref)
	t.Logf("ctr images pull %s (first pull, built): %v", ref, time.Since(start).Round(time.Millisecond))

	digest := strings.TrimSpace(run(t, crane, "digest", ref))
	checkContainerdImage(t, ctr, ref, digest)

	// The install image of the patch, through the mirror the patch gives
	// kiln's own host.
	code, _, patch := httpDo(t, client, "GET", "http://"+k.addr+"/config/"+emptyID+"/v1.13.0/airgap.yaml", "")
	if code != 200 {
		t.Fatalf("GET airgap.yaml = %d %s", code, patch)
	}

	m := regexp.MustCompile(`(?m)^\s+image: (` + regexp.QuoteMeta(external) + `/metal-installer/` + emptyID + `:v1\.13\.0)$`).FindStringSubmatch(patch)
	if m == nil {
		t.Fatalf("the patch installs no %s/metal-installer/%s:v1.13.0:\n%s", external, emptyID, patch)
	}

	if !strings.Contains(patch, "http://"+external) {
		t.Fatalf("the patch has no mirror endpoint http://%s for kiln's host:\n%s", external, patch)
	}

	// Nodes reach kiln as --external-url says; here that name resolves to
	// nothing, so the mirror's endpoint is kiln's real address.
	hosts := t.TempDir()
	if err := os.MkdirAll(filepath.Join(hosts, external), 0o755); err != nil {
		t.Fatal(err)
	}

	toml := fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", "https://"+external, "http://"+k.addr)
	if err := os.WriteFile(filepath.Join(hosts, external, "hosts.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}

	ctr("images", "rm", "--sync", ref)
	ctr("images", "pull", "--hosts-dir", hosts, "--platform", "linux/amd64", m[1])
	checkContainerdImage(t, ctr, m[1], digest)

}

// checkContainerdImage checks that containerd holds ref at digest and that
// its unpacked linux/amd64 file system has the installer's boot files.
func checkContainerdImage(t *testing.T, ctr func(...string) string, ref, digest string) {
	t.Helper()

	list := ctr("images", "ls")
	line := ""

	for _, l := range strings.Split(list, "\n") {
		if f := strings.Fields(l); len(f) > 2 && f[0] == ref {
			line = l

			if f[2] != digest {
				t.Errorf("containerd has %s at %s, crane digest says %s", ref, f[2], digest)
			}
		}
	}

	if line == "" {
		t.Fatalf("ctr images ls lacks %s:\n%s", ref, list)
	}

	t.Logf("containerd: %s", strings.Join(strings.Fields(line), " "))

	target := t.TempDir()
	ctr("images", "mount", "--platform", "linux/amd64", ref, target)

	defer ctr("images", "unmount", "--rm", target)

	for _, f := range []string{"usr/install/amd64/vmlinuz.efi", "usr/install/amd64/systemd-boot.efi"} {
		if fi, err := os.Stat(filepath.Join(target, f)); err != nil || fi.Size() == 0 {
			t.Errorf("the unpacked %s lacks %s: %v", ref, f, err)
		}
	}
}

// startContainerd runs containerd for the test alone: root, state and
// socket under a temporary directory, the CRI plugin off (nothing here runs
// pods), and returns its socket. It needs root, as containerd does.
func startContainerd(t *testing.T) string {
	t.Helper()

	bin, err := exec.LookPath("containerd")
	if err != nil {
		if os.Getenv("KILN_REQUIRE_FIXTURES") != "" {
			t.Fatal("containerd is not installed (make e2e-debs)")
		}

		t.Skip("containerd is not installed (make e2e-debs)")
	}

	if os.Geteuid() != 0 {
		if os.Getenv("KILN_REQUIRE_FIXTURES") != "" {
			t.Fatal("containerd needs root")
		}

		t.Skip("containerd needs root")
	}

	// Short: a unix socket path holds at most 108 bytes.
	dir, err := os.MkdirTemp("", "kiln-ctd-")
	if err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() { os.RemoveAll(dir) })

	sock := filepath.Join(dir, "containerd.sock")
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = %q

[ttrpc]
  address = %q

[debug]
  address = ""
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, sock+".ttrpc")

	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}

	logFile, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		t.Fatal(err)
	}

	defer logFile.Close()

	logs := func() string { b, _ := os.ReadFile(logFile.Name()); return string(b) }
	cmd := exec.Command(bin, "--config", filepath.Join(dir, "config.toml"))
	cmd.Stdout, cmd.Stderr = logFile, logFile

	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}

	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()

	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM) //nolint:errcheck // it may be gone

		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill() //nolint:errcheck // it may be gone
			<-done
		}

		if t.Failed() {
			t.Logf("containerd log:\n%s", tail(logs(), 4000))
		}
	})

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	for {
		if err := exec.CommandContext(ctx, "ctr", "-a", sock, "version").Run(); err == nil {
			return sock
		}

		select {
		case err := <-done:
			t.Fatalf("containerd exited: %v\n%s", err, tail(logs(), 4000))
		case <-ctx.Done():
			t.Fatalf("containerd did not answer on %s:\n%s", sock, tail(logs(), 4000))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// TestContainerdPullFromImageCache: a node with no registry installs from
// its boot medium. The ISO of a schematic with an image cache is built by
// the real kiln (--external-url http://kiln.example:8080, the host of the
// air-gap patch's install image); its /imagecache tree, read back with
// xorriso, is served by the rules of Talos's registryd
// (imagecache.Handler), kiln is stopped, and containerd, given that
// registry as the mirror of kiln's host (as Talos puts registryd first for
// every host), pulls the patch's install image: the digest kiln served
// before it stopped, and the unpacked installer has its boot files.
func TestContainerdPullFromImageCache(t *testing.T) {
	crane := binary(t, "CRANE")
	testfixture.RequireTool(t, "xorriso")
	sock := startContainerd(t)

	const external = "kiln.example:8080"

	k := startKiln(t, nil, "--data-dir", t.TempDir(), "--demo", "--external-url", "http://"+external)
	client := &http.Client{Timeout: 10 * time.Minute}

	code, _, body := httpDo(t, client, "POST", "http://"+k.addr+"/schematics", "customization:\n  imageCache:\n    kubernetes: true\n")
	if code != 201 {
		t.Fatalf("POST /schematics = %d %s", code, body)
	}

	var created struct{ ID string }
	if err := json.Unmarshal([]byte(body), &created); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	iso := filepath.Join(dir, "metal-amd64.iso")
	start := time.Now()
	download(t, client, "http://"+k.addr+"/image/"+created.ID+"/v1.13.0/metal-amd64.iso", iso)
	t.Logf("ISO with the image cache (and the installer, built first): %v", time.Since(start).Round(time.Millisecond))

	_, _, patch := httpDo(t, client, "GET", "http://"+k.addr+"/config/"+created.ID+"/v1.13.0/airgap.yaml", "")

	m := regexp.MustCompile(`(?m)^\s+image: (` + regexp.QuoteMeta(external) + `/metal-installer/` + created.ID + `:v1\.13\.0)$`).FindStringSubmatch(patch)
	if m == nil {
		t.Fatalf("the patch installs no %s/metal-installer/%s:v1.13.0:\n%s", external, created.ID, patch)
	}

	digest := strings.TrimSpace(run(t, crane, "digest", k.addr+"/metal-installer/"+created.ID+":v1.13.0"))
	k.stop(t)

	tree := filepath.Join(dir, "imagecache")
	run(t, "xorriso", "-osirrox", "on", "-indev", iso, "-extract", "/imagecache", tree)

	// containerd names the image's host in ?ns= on every request to a
	// mirror; registryd takes the tree's directory from it.
	cache := imagecache.Handler(tree)

	var mu sync.Mutex

	ns := map[string]int{}
	registryd := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/manifests/") {
			mu.Lock()
			ns[r.URL.Query().Get("ns")]++
			mu.Unlock()
		}

		cache.ServeHTTP(w, r)
	}))
	defer registryd.Close()

	hosts := t.TempDir()
	if err := os.MkdirAll(filepath.Join(hosts, external), 0o755); err != nil {
		t.Fatal(err)
	}

	toml := fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", "https://"+external, registryd.URL)
	if err := os.WriteFile(filepath.Join(hosts, external, "hosts.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}

	ctr := func(args ...string) string {
		return runLong(t, "ctr", append([]string{"-a", sock, "-n", "kiln"}, args...)...)
	}
	ctr("images", "pull", "--hosts-dir", hosts, "--platform", "linux/amd64", m[1])
	checkContainerdImage(t, ctr, m[1], digest)

	mu.Lock()
	defer mu.Unlock()

	if len(ns) != 1 || ns[external] == 0 {
		t.Errorf("manifest requests to the cache by ns: %v, want all with ns=%s", ns, external)
	}
}
