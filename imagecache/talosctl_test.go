//go:build talosctl

package imagecache

// Compares kiln's cache with the one Talos' own code writes. TALOSCTL is a
// binary taking `images cache-create` flags: talosctl itself, or (as built
// here, since talosctl's full dependency set is not on the module proxy) a
// thin main around github.com/siderolabs/talos@v1.13.9 pkg/imager/cache.Generate,
// the function `talosctl images cache-create` calls.
//
//	TALOSCTL=/path/to/talosctl go test -tags talosctl -run Talosctl ./imagecache/

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func talosctl(t *testing.T, refs []string, out string, args ...string) {
	t.Helper()

	bin := os.Getenv("TALOSCTL")
	if bin == "" {
		t.Skip("TALOSCTL not set")
	}

	cmd := exec.Command(bin, append([]string{"images", "cache-create", "--insecure", "--images", strings.Join(refs, ","), "--image-cache-path", out}, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir(), "DOCKER_CONFIG="+t.TempDir())

	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("talosctl: %v\n%s", err, b)
	}
}

// directRefs names everything at the fixture's host:port, which talosctl
// fetches directly: an index, a single image digest-pinned with its tag, a
// digest-only reference, and a host:port-named index.
func (f *fixture) directRefs() []string {
	pause := f.digests["registry.k8s.io/pause:3.10"].String()

	return []string{
		f.host + "/siderolabs/kubelet:v1.36.0",
		f.host + "/registry.k8s.io/pause:3.10@" + pause,
		f.host + "/docker.io/library/busybox@" + f.digests["docker.io/library/busybox:1.37"].String(),
		f.host + "/direct/app:v1",
	}
}

func TestTalosctlFlat(t *testing.T) {
	f := newFixture(t, 4096, 2)

	for _, platforms := range [][]string{{"linux/amd64"}, {"linux/arm64", "linux/amd64"}, {"all"}} {
		t.Run(strings.Join(platforms, ","), func(t *testing.T) {
			refs := f.directRefs()
			if platforms[0] == "linux/arm64" {
				refs = refs[2:] // pause is amd64 only; kiln refuses it for arm64
			}

			theirs := filepath.Join(t.TempDir(), "talosctl")
			args := []string{"--layout", "flat"}
			for _, p := range platforms {
				args = append(args, "--platform", p)
			}

			talosctl(t, refs, theirs, args...)

			opts := Options{Platforms: platforms, Layout: Flat, Signatures: true, Logger: quiet()}
			p, err := NewPlan(t.Context(), refs, DirectResolver{}, nil, opts)
			if err != nil {
				t.Fatal(err)
			}

			ours := filepath.Join(t.TempDir(), "kiln")
			if _, err := Write(t.Context(), p, ours, opts); err != nil {
				t.Fatal(err)
			}

			got, want := readTree(t, ours), readTree(t, theirs)
			diffTrees(t, got, want)
			t.Logf("%d files compared", len(want))
		})
	}
}

func TestTalosctlOCI(t *testing.T) {
	f := newFixture(t, 4096, 2)
	refs := f.directRefs()

	theirs := filepath.Join(t.TempDir(), "talosctl")
	talosctl(t, refs, theirs, "--layout", "oci", "--platform", "linux/amd64")

	opts := Options{Platforms: []string{"linux/amd64"}, Layout: OCI, Signatures: true, Logger: quiet()}
	p, err := NewPlan(t.Context(), refs, DirectResolver{}, nil, opts)
	if err != nil {
		t.Fatal(err)
	}

	ours := filepath.Join(t.TempDir(), "kiln")
	if _, err := Write(t.Context(), p, ours, opts); err != nil {
		t.Fatal(err)
	}

	type parsed struct {
		index  map[string]any
		desc   map[string]any
		config map[string]any
		man    map[string]any
		tar    []string // name mode type size sha
		files  map[string][]byte
	}

	parse := func(dir string) parsed {
		var p parsed
		files := readTree(t, dir)
		p.files = files

		if err := json.Unmarshal(files["index.json"], &p.index); err != nil {
			t.Fatal(err)
		}

		p.desc = p.index["manifests"].([]any)[0].(map[string]any)
		dig := strings.TrimPrefix(p.desc["digest"].(string), "sha256:")
		json.Unmarshal(files["blobs/sha256/"+dig], &p.man) //nolint:errcheck
		cfg := p.man["config"].(map[string]any)["digest"].(string)
		json.Unmarshal(files["blobs/sha256/"+strings.TrimPrefix(cfg, "sha256:")], &p.config) //nolint:errcheck
		layer := p.man["layers"].([]any)[0].(map[string]any)["digest"].(string)

		zr, err := gzip.NewReader(bytes.NewReader(files["blobs/sha256/"+strings.TrimPrefix(layer, "sha256:")]))
		if err != nil {
			t.Fatal(err)
		}

		tr := tar.NewReader(zr)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}

			if err != nil {
				t.Fatal(err)
			}

			b, _ := io.ReadAll(tr)
			p.tar = append(p.tar, strings.Join([]string{h.Name, string(rune('0' + h.Mode%8)), string(h.Typeflag), sha(b), h.Format.String(), h.ModTime.String(), h.Uname}, " "))
		}

		return p
	}

	g, w := parse(ours), parse(theirs)

	keys := func(m map[string]any) string {
		var ks []string
		for k := range m {
			ks = append(ks, k)
		}

		return strings.Join(sortStrings(ks), ",")
	}

	if keys(g.index) != keys(w.index) || keys(g.desc) != keys(w.desc) {
		t.Errorf("index.json keys: kiln %s / %s, talosctl %s / %s", keys(g.index), keys(g.desc), keys(w.index), keys(w.desc))
	}

	if gj, wj := jsonOf(g.desc["platform"]), jsonOf(w.desc["platform"]); gj != wj {
		t.Errorf("platform: kiln %s talosctl %s", gj, wj)
	}

	if string(g.files["oci-layout"]) != string(w.files["oci-layout"]) {
		t.Errorf("oci-layout: %s vs %s", g.files["oci-layout"], w.files["oci-layout"])
	}

	delete(g.config, "created")
	delete(w.config, "created")

	for _, m := range []map[string]any{g.config, w.config} {
		if h, ok := m["history"].([]any); ok {
			for _, e := range h {
				delete(e.(map[string]any), "created")
			}
		}

		if r, ok := m["rootfs"].(map[string]any); ok {
			delete(r, "diff_ids") // differ only if the tars differ, checked below
		}
	}

	if jsonOf(g.config) != jsonOf(w.config) {
		t.Errorf("config (without created):\nkiln     %s\ntalosctl %s", jsonOf(g.config), jsonOf(w.config))
	}

	if keys(g.man) != keys(w.man) {
		t.Errorf("manifest keys: %s vs %s", keys(g.man), keys(w.man))
	}

	if strings.Join(g.tar, "\n") != strings.Join(w.tar, "\n") {
		t.Errorf("layer tar differs:\nkiln:\n%s\ntalosctl:\n%s", strings.Join(g.tar, "\n"), strings.Join(w.tar, "\n"))
	}

	t.Logf("%d tar entries compared", len(w.tar))
}

func jsonOf(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func sortStrings(s []string) []string {
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}

	return s
}
