package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kiln-dev/kiln/imagecache"
)

// TestImageCacheCarriesInstaller: the image cache of an ISO whose schematic
// asks for one holds the schematic's installer under the reference the
// air-gap patch installs from, with the digest a pull from kiln's /v2 gives,
// and its signature; served by Talos's registryd rules (imagecache.Handler)
// with containerd's ns parameter, that reference answers the installer. A
// HEAD builds neither the ISO nor the installer; --no-installer-in-cache
// leaves it out.
func TestImageCacheCarriesInstaller(t *testing.T) {
	if _, err := exec.LookPath("xorriso"); err != nil {
		t.Skip("xorriso not installed (make test-debs)")
	}

	ts := startServer(t, Config{Demo: true})
	id := createSchematic(t, ts, "customization: {imageCache: {kubernetes: true}}")
	iso := "/image/" + id + "/v1.13.0/metal-amd64.iso"

	if resp, _ := ts.do(t, "HEAD", iso, ""); resp.StatusCode != 200 || resp.Header.Get("X-Kiln-Cache") != "miss" {
		t.Fatalf("HEAD of the unbuilt ISO = %d %v", resp.StatusCode, resp.Header)
	}

	if _, body := ts.do(t, "GET", "/v2/_catalog", ""); strings.Contains(body, "installer/"+id) {
		t.Fatalf("a HEAD built the installer: catalog %s", body)
	}

	// The patch names the installer the node installs.
	_, patch := ts.do(t, "GET", "/config/"+id+"/v1.13.0/airgap.yaml", "")

	m := regexp.MustCompile(`image: (\S+/metal-installer/` + id + `:v1\.13\.0)\n`).FindStringSubmatch(patch)
	if m == nil {
		t.Fatalf("no install image in the patch:\n%s", patch)
	}

	installImage := m[1]
	dir := extractISOCache(t, ts, iso)

	// What a pull from kiln gives (crane digest).
	ref, err := name.NewTag(installImage, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}

	desc, err := remote.Head(ref)
	if err != nil {
		t.Fatalf("pull %s: %v", ref, err)
	}

	checkCachedInstaller(t, dir, ref, desc.Digest)

	// A node's registryd, asked through the registry mirror for the install
	// image's host (containerd sends ?ns=<host>), answers the installer.
	reg := httptest.NewServer(imagecache.Handler(dir))
	defer reg.Close()

	resp, err := http.Get(reg.URL + "/v2/" + ref.RepositoryStr() + "/manifests/" + ref.TagStr() + "?ns=" + ref.RegistryStr())
	if err != nil {
		t.Fatal(err)
	}

	resp.Body.Close()

	if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != desc.Digest.String() {
		t.Fatalf("the cache served %s: %d, digest %q, want %s", installImage, resp.StatusCode, resp.Header.Get("Docker-Content-Digest"), desc.Digest)
	}

	// The same tag pulled whole from the cache, linux/amd64.
	cached, err := name.NewTag(strings.TrimPrefix(reg.URL, "http://")+"/"+ref.RepositoryStr()+":"+ref.TagStr(), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}

	img, err := remote.Image(cached, remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}))
	if err != nil {
		t.Fatalf("pull %s from the cache: %v", cached, err)
	}

	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}

	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}

		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Fatalf("layer of the cached installer: %v", err)
		}

		rc.Close()
	}

	// The disk image's IMAGECACHE partition holds the same cache.
	if _, err := exec.LookPath("debugfs"); err == nil {
		checkCachedInstaller(t, extractDiskCache(t, ts, "/image/"+id+"/v1.13.0/metal-amd64.raw"), ref, desc.Digest)
	} else {
		t.Log("debugfs not installed: the disk's IMAGECACHE is not read back")
	}

	// With --auth-reads, kiln reads its own registry in process: the cache
	// still gets the installer.
	t.Run("auth-reads", func(t *testing.T) {
		ts := startServer(t, Config{Demo: true, AuthReads: true})
		id := createSchematic(t, ts, "customization: {imageCache: {kubernetes: true}}")
		dir := extractISOCache(t, ts, "/image/"+id+"/v1.13.0/metal-amd64.iso")

		if matches, _ := filepath.Glob(filepath.Join(dir, "manifests", "*", "metal-installer", id, "reference", "v1.13.0")); len(matches) != 1 {
			t.Errorf("--auth-reads: the cache holds no installer tag (%v)", matches)
		}
	})

	t.Run("opt-out", func(t *testing.T) {
		ts := startServer(t, Config{Demo: true, NoInstallerInCache: true})
		id := createSchematic(t, ts, "customization: {imageCache: {kubernetes: true}}")
		dir := extractISOCache(t, ts, "/image/"+id+"/v1.13.0/metal-amd64.iso")

		if matches, _ := filepath.Glob(filepath.Join(dir, "manifests", "*", "metal-installer")); len(matches) != 0 {
			t.Errorf("--no-installer-in-cache: the cache holds %v", matches)
		}

		if _, body := ts.do(t, "GET", "/v2/_catalog", ""); strings.Contains(body, "installer/"+id) {
			t.Errorf("--no-installer-in-cache built the installer: catalog %s", body)
		}
	})
}

// extractISOCache builds the ISO at path and returns its /imagecache tree,
// as xorriso reads it.
func extractISOCache(t *testing.T, ts *testServer, path string) string {
	t.Helper()

	tmp := t.TempDir()
	iso := filepath.Join(tmp, "metal.iso")
	download(t, ts, path, iso)

	dir := filepath.Join(tmp, "imagecache")
	if out, err := exec.Command("xorriso", "-osirrox", "on", "-indev", iso, "-extract", "/imagecache", dir).CombinedOutput(); err != nil {
		t.Fatalf("xorriso -extract /imagecache: %v\n%s", err, out)
	}

	return dir
}

// extractDiskCache builds the disk at path and returns the tree of its
// IMAGECACHE partition, as sgdisk finds it and debugfs reads it.
func extractDiskCache(t *testing.T, ts *testServer, path string) string {
	t.Helper()

	tmp := t.TempDir()
	disk := filepath.Join(tmp, "disk.raw")
	download(t, ts, path, disk)

	out, err := exec.Command("sgdisk", "-p", disk).CombinedOutput()
	if err != nil {
		t.Fatalf("sgdisk -p: %v\n%s", err, out)
	}

	var start int64 = -1

	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) >= 7 && f[len(f)-1] == "IMAGECACHE" {
			if _, err := fmt.Sscan(f[1], &start); err != nil {
				t.Fatal(err)
			}
		}
	}

	if start < 0 {
		t.Fatalf("no IMAGECACHE partition:\n%s", out)
	}

	dir := filepath.Join(tmp, "imagecache")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}

	if out, err := exec.Command("debugfs", "-R", "rdump / "+dir, fmt.Sprintf("%s?offset=%d", disk, start*512)).CombinedOutput(); err != nil {
		t.Fatalf("debugfs rdump: %v\n%s", err, out)
	}

	return dir
}

// download GETs path from ts into dst.
func download(t *testing.T, ts *testServer, path, dst string) {
	t.Helper()

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()

	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+ts.addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}

	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()

	if resp.StatusCode != 200 {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s = %d %s", path, resp.StatusCode, body)
	}

	f, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	if _, err := io.Copy(f, resp.Body); err != nil {
		t.Fatal(err)
	}
}

// checkCachedInstaller checks that the flat cache tree dir holds ref's tag
// as digest d, by digest, with kiln's signature tag, and every blob of its
// linux/amd64 image.
func checkCachedInstaller(t *testing.T, dir string, ref name.Tag, d v1.Hash) {
	t.Helper()

	host := ref.RegistryStr()
	if i := strings.LastIndex(host, ":"); i > 0 {
		host = host[:i] + "_" + host[i+1:] + "_" // talosctl's and registryd's spelling of host:port
	}

	repo := filepath.Join(dir, "manifests", host, ref.RepositoryStr())

	tagged, err := os.ReadFile(filepath.Join(repo, "reference", ref.TagStr()))
	if err != nil {
		t.Fatalf("the cache has no %s: %v", ref, err)
	}

	if sum := sha256.Sum256(tagged); "sha256:"+hex.EncodeToString(sum[:]) != d.String() {
		t.Fatalf("the cache's %s is sha256:%x, kiln serves %s", ref, sum, d)
	}

	for _, f := range []string{
		filepath.Join(repo, "digest", "sha256-"+d.Hex),
		filepath.Join(repo, "reference", "sha256-"+d.Hex+".sig"),
	} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("the cache lacks %s: %v", strings.TrimPrefix(f, dir), err)
		}
	}

	idx, err := v1.ParseIndexManifest(strings.NewReader(string(tagged)))
	if err != nil {
		t.Fatal(err)
	}

	for _, c := range idx.Manifests {
		if c.Platform == nil || c.Platform.Architecture != "amd64" {
			continue
		}

		raw, err := os.ReadFile(filepath.Join(repo, "digest", "sha256-"+c.Digest.Hex))
		if err != nil {
			t.Fatalf("the cache lacks the linux/amd64 installer: %v", err)
		}

		m, err := v1.ParseManifest(strings.NewReader(string(raw)))
		if err != nil {
			t.Fatal(err)
		}

		for _, b := range append([]v1.Descriptor{m.Config}, m.Layers...) {
			if fi, err := os.Stat(filepath.Join(dir, "blob", "sha256-"+b.Digest.Hex)); err != nil || fi.Size() != b.Size {
				t.Errorf("blob %s of the installer: %v", b.Digest, err)
			}
		}

		return
	}

	t.Error("the cached installer index has no linux/amd64 image")
}
