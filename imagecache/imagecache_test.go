package imagecache

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sys/unix"

	"github.com/kiln-dev/kiln/signing"
)

// readTree maps every file of dir (slash paths) to its bytes.
func readTree(t testing.TB, dir string) map[string][]byte {
	t.Helper()

	files := map[string][]byte{}

	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}

		rel, _ := filepath.Rel(dir, p)
		b, err := os.ReadFile(p)
		files[filepath.ToSlash(rel)] = b

		return err
	})
	if err != nil {
		t.Fatal(err)
	}

	return files
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256-" + hex.EncodeToString(s[:])
}

// expectTree computes, by the layout rules, the files talosctl writes for
// the fixture's refs and platforms, fetching from the registry with plain
// go-containerregistry calls.
func expectTree(t *testing.T, f *fixture, platforms []v1.Platform, all, sigs bool) map[string][]byte {
	t.Helper()

	want := map[string][]byte{}
	r := f.resolver()

	image := func(dir string, repo name.Repository, d v1.Hash) {
		desc, err := remote.Get(repo.Digest(d.String()))
		if err != nil {
			t.Fatal(err)
		}

		want[dir+"/digest/"+sha(desc.Manifest)] = desc.Manifest

		img, err := desc.Image()
		if err != nil {
			t.Fatal(err)
		}

		cfg, _ := img.RawConfigFile()
		want["blob/"+sha(cfg)] = cfg

		layers, _ := img.Layers()
		for _, l := range layers {
			rc, _ := l.Compressed()
			b, _ := io.ReadAll(rc)
			want["blob/"+sha(b)] = b
		}
	}

	for _, src := range f.refs() {
		var dir, tag string

		switch {
		case strings.HasPrefix(src, "ghcr.io/"):
			dir, tag = "manifests/ghcr.io/siderolabs/kubelet", "v1.36.0"
		case strings.HasPrefix(src, "registry.k8s.io/"):
			dir, tag = "manifests/registry.k8s.io/pause", "3.10"
		case strings.HasPrefix(src, "busybox"):
			dir, tag = "manifests/docker.io/library/busybox", "1.37"
		default:
			dir, tag = "manifests/"+strings.ReplaceAll(f.host, ":", "_")+"_/direct/app", "v1"
		}

		ref, _, _ := r.Resolve(src)
		desc, err := remote.Get(ref)
		if err != nil {
			t.Fatal(err)
		}

		want[dir+"/reference/"+tag] = desc.Manifest
		want[dir+"/digest/"+sha(desc.Manifest)] = desc.Manifest

		if sigs {
			sigTag := "sha256-" + desc.Digest.Hex + ".sig"
			if sd, err := remote.Get(ref.Context().Tag(sigTag)); err == nil {
				want[dir+"/reference/"+sigTag] = sd.Manifest
				image(dir, ref.Context(), sd.Digest)
			}
		}

		idx, err := desc.ImageIndex()
		if err != nil {
			image(dir, ref.Context(), desc.Digest)
			continue
		}

		im, _ := idx.IndexManifest()
		for _, c := range im.Manifests {
			take := all
			for _, p := range platforms {
				if c.Platform != nil && c.Platform.OS == p.OS && c.Platform.Architecture == p.Architecture {
					take = true
				}
			}

			if take {
				image(dir, ref.Context(), c.Digest)
			}
		}
	}

	return want
}

func diffTrees(t *testing.T, got, want map[string][]byte) {
	t.Helper()

	for p, w := range want {
		g, ok := got[p]
		if !ok {
			t.Errorf("missing %s", p)
		} else if !bytes.Equal(g, w) {
			t.Errorf("%s differs", p)
		}
	}

	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("unexpected %s", p)
		}
	}
}

func TestFlatTree(t *testing.T) {
	f := newFixture(t, 4096, 2)

	amd64 := v1.Platform{OS: "linux", Architecture: "amd64"}
	arm64 := v1.Platform{OS: "linux", Architecture: "arm64"}

	for _, tc := range []struct {
		name      string
		platforms []string
		want      []v1.Platform
		all       bool
		sigs      bool
	}{
		{"one", []string{"linux/amd64"}, []v1.Platform{amd64}, false, true},
		{"several", []string{"linux/amd64", "linux/arm64"}, []v1.Platform{amd64, arm64}, false, true},
		{"all", []string{"all"}, nil, true, true},
		{"nosigs", []string{"linux/amd64"}, []v1.Platform{amd64}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := Options{Platforms: tc.platforms, Layout: Flat, Signatures: tc.sigs, Logger: quiet()}
			if tc.name == "several" {
				// pause is linux/amd64 only: several platforms need an image that has them all.
				t.Skip("covered by TestSeveralPlatforms")
			}

			p := f.plan(t, opts)
			out := filepath.Join(t.TempDir(), "cache")

			st, err := Write(t.Context(), p, out, opts)
			if err != nil {
				t.Fatal(err)
			}

			got := readTree(t, out)
			diffTrees(t, got, expectTree(t, f, tc.want, tc.all, tc.sigs))

			if st.Blobs != countPrefix(got, "blob/") {
				t.Errorf("stats: %d blobs, tree has %d", st.Blobs, countPrefix(got, "blob/"))
			}

			// Shared layer is one file.
			if _, ok := got["blob/sha256-"+mustDigest(t, f.shared).Hex]; !ok {
				t.Error("shared layer missing")
			}

			if tc.sigs {
				d := f.digests["ghcr.io/siderolabs/kubelet:v1.36.0"]
				if _, ok := got["manifests/ghcr.io/siderolabs/kubelet/reference/sha256-"+d.Hex+".sig"]; !ok {
					t.Error("kubelet signature tag missing")
				}
			}

			// The digest-pinned input still writes its tag.
			if _, ok := got["manifests/registry.k8s.io/pause/reference/3.10"]; !ok {
				t.Error("pause reference/3.10 missing")
			}
		})
	}
}

func TestSeveralPlatforms(t *testing.T) {
	f := newFixture(t, 4096, 2)
	refs := []string{"ghcr.io/siderolabs/kubelet:v1.36.0", "busybox:1.37", f.host + "/direct/app:v1"}
	opts := Options{Platforms: []string{"linux/amd64", "linux/arm64"}, Layout: Flat, Signatures: true, Logger: quiet()}

	p, err := NewPlan(t.Context(), refs, f.resolver(), nil, opts)
	if err != nil {
		t.Fatal(err)
	}

	out := filepath.Join(t.TempDir(), "cache")
	if _, err := Write(t.Context(), p, out, opts); err != nil {
		t.Fatal(err)
	}

	got := readTree(t, out)

	// Each index: index + amd64 + arm64 manifests, no attestation.
	for _, dir := range []string{"manifests/ghcr.io/siderolabs/kubelet", "manifests/docker.io/library/busybox"} {
		n := countPrefix(got, dir+"/digest/")
		want := 3
		if strings.Contains(dir, "kubelet") {
			want = 4 // + signature manifest
		}

		if n != want {
			t.Errorf("%s: %d digest files, want %d", dir, n, want)
		}
	}

	if !slices.Equal(p.Images()[0:1], []Image{{Ref: refs[0], Source: p.Images()[0].Source, Digest: f.digests[refs[0]].String(), Platform: "linux/amd64,linux/arm64"}}) {
		t.Errorf("images: %+v", p.Images())
	}
}

func countPrefix(m map[string][]byte, prefix string) int {
	n := 0
	for p := range m {
		if strings.HasPrefix(p, prefix) {
			n++
		}
	}

	return n
}

func mustDigest(t testing.TB, l v1.Layer) v1.Hash {
	d, err := l.Digest()
	if err != nil {
		t.Fatal(err)
	}

	return d
}

// TestFailBeforeWrite: a missing image, a missing platform and a refused
// signature fail in NewPlan, naming the image; nothing is written.
func TestFailBeforeWrite(t *testing.T) {
	f := newFixture(t, 1024, 1)
	untrusted := errors.New("untrusted artifact")

	for _, tc := range []struct {
		name     string
		refs     []string
		platform []string
		v        signing.Checker
		is       error
		names    string
	}{
		{"missing image", []string{"ghcr.io/siderolabs/kubelet:v1.36.0", "ghcr.io/siderolabs/nope:v1"}, nil, nil, ErrNotFound, `"ghcr.io/siderolabs/nope:v1"`},
		{"missing tag", []string{"registry.k8s.io/pause:9.9"}, nil, nil, ErrNotFound, `"registry.k8s.io/pause:9.9"`},
		{"missing platform index", []string{"ghcr.io/siderolabs/kubelet:v1.36.0"}, []string{"linux/s390x"}, nil, ErrNotFound, "linux/s390x"},
		{"missing platform single", []string{"registry.k8s.io/pause:3.10"}, []string{"linux/arm64"}, nil, ErrNotFound, `"registry.k8s.io/pause:3.10": platform linux/arm64`},
		{"refused", []string{"ghcr.io/siderolabs/kubelet:v1.36.0", "busybox:1.37"}, nil, signing.CheckFunc(func(_ context.Context, d name.Digest) error {
			if strings.Contains(d.String(), "busybox") {
				return fmt.Errorf("%s: %w", d, untrusted)
			}
			return nil
		}), untrusted, `"busybox:1.37"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := DefaultOptions()
			opts.Logger = quiet()
			if tc.platform != nil {
				opts.Platforms = tc.platform
			}

			p, err := NewPlan(t.Context(), tc.refs, f.resolver(), tc.v, opts)
			if err == nil {
				t.Fatalf("no error, plan %+v", p.Images())
			}

			if !errors.Is(err, tc.is) {
				t.Errorf("error %v is not %v", err, tc.is)
			}

			if !strings.Contains(err.Error(), tc.names) {
				t.Errorf("error %q does not name %s", err, tc.names)
			}
		})
	}
}

// TestWriteAtomic: a blob that cannot be fetched, or whose bytes are not
// what the plan says, fails Write with an error naming it and leaves
// nothing behind; an existing non-empty output is refused.
func TestWriteAtomic(t *testing.T) {
	f := newFixture(t, 1024, 1)

	for _, layout := range []Layout{Flat, OCI} {
		t.Run(layout.String(), func(t *testing.T) {
			opts := Options{Layout: layout, Logger: quiet(), Signatures: true}
			p := f.plan(t, opts)

			parent := t.TempDir()
			out := filepath.Join(parent, "cache")

			var any *blobSource
			for _, b := range p.blobs {
				if _, ok := p.inline[b.digest]; !ok {
					any = b
				}
			}

			missing := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("0", 64)}

			for _, tc := range []struct {
				name string
				blob *blobSource
				want error
			}{
				{"missing", &blobSource{digest: missing, size: 10, repo: any.repo, puller: any.puller}, ErrNotFound},
				{"short", &blobSource{digest: any.digest, size: any.size + 1, repo: any.repo, puller: any.puller}, ErrDigest},
			} {
				bad := *p
				bad.blobs = maps.Clone(p.blobs)
				bad.blobs[tc.blob.digest] = tc.blob

				_, err := Write(t.Context(), &bad, out, opts)
				if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.blob.digest.Hex) {
					t.Errorf("%s blob: %v, want %v naming it", tc.name, err, tc.want)
				}

				if entries, _ := os.ReadDir(parent); len(entries) != 0 {
					t.Errorf("%s blob: left behind: %v", tc.name, entries)
				}
			}

			if _, err := Write(t.Context(), p, out, opts); err != nil {
				t.Fatal(err)
			}

			if _, err := Write(t.Context(), p, out, opts); !errors.Is(err, ErrExists) {
				t.Errorf("second write: %v", err)
			}
		})
	}
}

// TestStaleTempRemoved: a write killed midway (kill -9) leaves its
// temporary directories beside the output; the next write to the same
// output removes those whose process is gone, and nothing of a live
// process or of another output.
func TestStaleTempRemoved(t *testing.T) {
	f := newFixture(t, 1024, 1)
	opts := Options{Layout: OCI, Logger: quiet(), Signatures: true}
	p := f.plan(t, opts)

	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}

	deadPID := strconv.Itoa(dead.Process.Pid)
	parent := t.TempDir()
	stale := []string{".cache.oci-" + deadPID + "-1", ".cache.spool-" + deadPID + "-2", ".cache.flat-3", ".cache.spool-4"}
	kept := []string{".cache.oci-" + strconv.Itoa(os.Getpid()) + "-5", ".other.oci-" + deadPID + "-6", ".cache.notes"}

	for _, name := range append(append([]string(nil), stale...), kept...) {
		if err := os.MkdirAll(filepath.Join(parent, name, "blobs"), 0o755); err != nil {
			t.Fatal(err)
		}
	}

	if _, err := Write(t.Context(), p, filepath.Join(parent, "cache"), opts); err != nil {
		t.Fatal(err)
	}

	for _, name := range stale {
		if _, err := os.Stat(filepath.Join(parent, name)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s survived the next write: %v", name, err)
		}
	}

	for _, name := range kept {
		if _, err := os.Stat(filepath.Join(parent, name)); err != nil {
			t.Errorf("%s was removed: %v", name, err)
		}
	}
}

// TestDeterministicAndLayerCache: same plan → same bytes, same ID; a second
// run with a layer cache downloads nothing.
func TestDeterministicAndLayerCache(t *testing.T) {
	f := newFixture(t, 8192, 2)
	opts := DefaultOptions()
	opts.Logger = quiet()
	opts.LayerCache = filepath.Join(t.TempDir(), "layers")

	p1 := f.plan(t, opts)
	p2 := f.plan(t, opts)

	if p1.ID() != p2.ID() {
		t.Errorf("IDs differ: %s %s", p1.ID(), p2.ID())
	}

	flat := opts
	flat.Layout = Flat
	if pf := f.plan(t, flat); pf.ID() == p1.ID() {
		t.Error("layout not in the ID")
	}

	a, b := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")

	s1, err := Write(t.Context(), p1, a, opts)
	if err != nil {
		t.Fatal(err)
	}

	s2, err := Write(t.Context(), p2, b, opts)
	if err != nil {
		t.Fatal(err)
	}

	if s1.CachedBlobs != 0 || s2.CachedBlobs == 0 || s2.Fetched != 0 {
		t.Errorf("layer cache: first %+v second %+v", s1, s2)
	}

	// The flat tree takes the same entries, linked from the cache.
	fl := filepath.Join(t.TempDir(), "flat")

	s3, err := Write(t.Context(), f.plan(t, flat), fl, flat)
	if err != nil {
		t.Fatal(err)
	}

	if s3.CachedBlobs == 0 || s3.Fetched != 0 {
		t.Errorf("layer cache, flat: %+v", s3)
	}

	diffTrees(t, readTree(t, fl), untar(t, ociLayer(t, readTree(t, a))))

	ta, tb := readTree(t, a), readTree(t, b)
	if len(ta) != len(tb) {
		t.Fatalf("trees differ: %d vs %d files", len(ta), len(tb))
	}

	for p, x := range ta {
		if !bytes.Equal(x, tb[p]) {
			t.Errorf("%s differs between runs", p)
		}
	}
}

// TestOCILayout: oci-layout, an index.json with one descriptor with the
// first platform and no annotations, one layer holding exactly the flat tree.
func TestOCILayout(t *testing.T) {
	f := newFixture(t, 4096, 2)

	for _, platforms := range [][]string{{"linux/arm64", "linux/amd64"}, {"all"}} {
		t.Run(platforms[0], func(t *testing.T) {
			refs := []string{"ghcr.io/siderolabs/kubelet:v1.36.0", "busybox:1.37"}
			out, flat := writeLayouts(t, f, refs, Options{Platforms: platforms, Signatures: true, Logger: quiet()})

			files := readTree(t, out)
			if string(files["oci-layout"]) != ociLayoutFile {
				t.Errorf("oci-layout: %s", files["oci-layout"])
			}

			var idx map[string]any
			if err := json.Unmarshal(files["index.json"], &idx); err != nil {
				t.Fatal(err)
			}

			ms := idx["manifests"].([]any)
			if len(ms) != 1 {
				t.Fatalf("index.json: %d descriptors", len(ms))
			}

			desc := ms[0].(map[string]any)
			if _, ok := desc["annotations"]; ok {
				t.Error("descriptor has annotations")
			}

			wantArch := "arm64"
			if platforms[0] == "all" {
				wantArch = "amd64"
			}

			if pl := desc["platform"].(map[string]any); pl["architecture"] != wantArch || pl["os"] != "linux" {
				t.Errorf("platform %v", pl)
			}

			var keys []string
			for k := range desc {
				keys = append(keys, k)
			}

			slices.Sort(keys)
			// artifactType (the config media type) is there in talosctl's too.
			if !slices.Equal(keys, []string{"artifactType", "digest", "mediaType", "platform", "size"}) {
				t.Errorf("descriptor keys %v", keys)
			}

			mdig := strings.TrimPrefix(desc["digest"].(string), "sha256:")
			var m v1.Manifest
			if err := json.Unmarshal(files["blobs/sha256/"+mdig], &m); err != nil {
				t.Fatal(err)
			}

			if len(m.Layers) != 1 || m.MediaType != "application/vnd.oci.image.manifest.v1+json" || m.Config.MediaType != "application/vnd.oci.image.config.v1+json" {
				t.Fatalf("manifest %+v", m)
			}

			layer := files["blobs/sha256/"+m.Layers[0].Digest.Hex]
			if sha(layer) != "sha256-"+m.Layers[0].Digest.Hex {
				t.Error("layer digest")
			}

			got := untar(t, layer)
			diffTrees(t, got, readTree(t, flat))
		})
	}
}

// writeLayouts writes refs with opts as the OCI layout and as the flat
// tree, and returns both directories.
func writeLayouts(t *testing.T, f *fixture, refs []string, opts Options) (oci, flat string) {
	t.Helper()

	for _, l := range []Layout{OCI, Flat} {
		o := opts
		o.Layout = l

		p, err := NewPlan(t.Context(), refs, f.resolver(), nil, o)
		if err != nil {
			t.Fatal(err)
		}

		dir := filepath.Join(t.TempDir(), l.String())
		if _, err := Write(t.Context(), p, dir, o); err != nil {
			t.Fatal(err)
		}

		if l == OCI {
			oci = dir
		} else {
			flat = dir
		}
	}

	return oci, flat
}

func untar(t testing.TB, gz []byte) map[string][]byte {
	t.Helper()

	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}

	tr := tar.NewReader(zr)
	files := map[string][]byte{}
	var last string

	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}

		if err != nil {
			t.Fatal(err)
		}

		if h.Name < last {
			t.Errorf("tar not sorted: %s after %s", h.Name, last)
		}

		last = h.Name

		if h.Typeflag == tar.TypeDir {
			continue
		}

		b, _ := io.ReadAll(tr)
		files[h.Name] = b
	}
}

// TestHandler pulls every image back from the tree through Handler with
// go-containerregistry and compares digests with the sources.
func TestHandler(t *testing.T) {
	f := newFixture(t, 4096, 2)
	opts := Options{Platforms: []string{"all"}, Layout: Flat, Signatures: true, Logger: quiet()}
	p := f.plan(t, opts)

	out := filepath.Join(t.TempDir(), "cache")
	if _, err := Write(t.Context(), p, out, opts); err != nil {
		t.Fatal(err)
	}

	srv := httptest.NewServer(Handler(out))
	defer srv.Close()

	host := strings.TrimPrefix(srv.URL, "http://")

	for _, c := range []struct{ path, tag, src string }{
		{"kubelet", "v1.36.0", "ghcr.io/siderolabs/kubelet:v1.36.0"}, // registryd search without ns: ghcr.io has siderolabs/kubelet? no: path is siderolabs/kubelet
		{"siderolabs/kubelet", "v1.36.0", "ghcr.io/siderolabs/kubelet:v1.36.0"},
		{"pause", "3.10", "registry.k8s.io/pause:3.10"},
		{"registry.k8s.io/pause", "3.10", "registry.k8s.io/pause:3.10"},
		{"library/busybox", "1.37", "docker.io/library/busybox:1.37"},
		{"direct/app", "v1", f.host + "/direct/app:v1"},
	} {
		ref, err := name.ParseReference(host + "/" + c.path + ":" + c.tag)
		if err != nil {
			t.Fatal(err)
		}

		desc, err := remote.Get(ref)
		if c.path == "kubelet" {
			if err == nil {
				t.Error("kubelet found without its namespace")
			}
			continue
		}

		if err != nil {
			t.Errorf("%s: %v", ref, err)
			continue
		}

		if desc.Digest != f.digests[c.src] {
			t.Errorf("%s: digest %s, source %s", ref, desc.Digest, f.digests[c.src])
		}

		// Every platform image, with its layers, validates.
		if idx, err := desc.ImageIndex(); err == nil && desc.MediaType.IsIndex() {
			im, _ := idx.IndexManifest()
			for _, m := range im.Manifests {
				img, err := idx.Image(m.Digest)
				if err != nil {
					t.Fatal(err)
				}

				if err := validateImage(img); err != nil {
					t.Errorf("%s %s: %v", ref, m.Digest, err)
				}
			}
		} else {
			img, _ := desc.Image()
			if err := validateImage(img); err != nil {
				t.Errorf("%s: %v", ref, err)
			}
		}
	}

	// ns parameter, as containerd sends it.
	resp, err := srv.Client().Get(srv.URL + "/v2/pause/manifests/3.10?ns=registry.k8s.io")
	if err != nil || resp.StatusCode != 200 {
		t.Errorf("ns request: %v %v", err, resp)
	}
	resp.Body.Close()
}

func validateImage(img v1.Image) error {
	layers, err := img.Layers()
	if err != nil {
		return err
	}

	if _, err := img.RawConfigFile(); err != nil {
		return err
	}

	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			return err
		}

		_, err = io.Copy(io.Discard, rc)
		rc.Close()

		if err != nil {
			return err
		}
	}

	return nil
}

// countingResolver is the fixture's resolver with every request counted by
// method and path.
type countingResolver struct {
	Resolver
	mu   sync.Mutex
	hits map[string]int
}

func (c *countingResolver) Resolve(ref string) (name.Reference, []remote.Option, error) {
	r, opts, err := c.Resolver.Resolve(ref)

	return r, append(opts, remote.WithTransport(c)), err
}

func (c *countingResolver) RoundTrip(r *http.Request) (*http.Response, error) {
	c.mu.Lock()
	c.hits[r.Method+" "+r.URL.Path]++
	c.mu.Unlock()

	return http.DefaultTransport.RoundTrip(r)
}

// TestPlanInParallel: lines planned at once give the plan that one at a
// time gives (the later line's file wins, the first line's signatures and
// blob sources are kept), fetch each manifest and config once, and verify
// each source image once.
func TestPlanInParallel(t *testing.T) {
	f := newFixture(t, 1024, 2)
	// Two lines name kubelet, two busybox.
	refs := slices.Concat(f.refs()[:1], []string{"ghcr.io/siderolabs/kubelet@" + f.digests["ghcr.io/siderolabs/kubelet:v1.36.0"].String()},
		f.refs()[1:], []string{"docker.io/library/busybox:1.37"})

	type result struct {
		id        string
		images    []Image
		sigs      []Image
		manifests map[string][]byte
		blobs     map[v1.Hash]string
	}

	plan := func(jobs int, platforms ...string) (result, map[string]int, map[string]int) {
		var mu sync.Mutex

		verified := map[string]int{}
		v := signing.CheckFunc(func(_ context.Context, d name.Digest) error {
			mu.Lock()
			verified[d.String()]++
			mu.Unlock()

			return nil
		})

		r := &countingResolver{Resolver: f.resolver(), hits: map[string]int{}}
		opts := Options{Platforms: platforms, Layout: Flat, Signatures: true, Jobs: jobs, Logger: quiet()}

		p, err := NewPlan(t.Context(), refs, r, v, opts)
		if err != nil {
			t.Fatal(err)
		}

		res := result{id: p.ID(), images: p.Images(), sigs: p.sigs, manifests: p.manifests, blobs: map[v1.Hash]string{}}
		for d, b := range p.blobs {
			res.blobs[d] = b.repo.String()
		}

		return res, r.hits, verified
	}

	for _, platforms := range [][]string{{"linux/amd64"}, {"linux/arm64", "linux/amd64"}, {AllPlatforms}} {
		if slices.Contains(platforms, "linux/arm64") {
			// pause is linux/amd64 only.
			refs = slices.DeleteFunc(slices.Clone(refs), func(r string) bool { return strings.HasPrefix(r, "registry.k8s.io/pause") })
		}

		want, _, _ := plan(1, platforms...)

		// The shared layer is in every image: its source is the first line's.
		first, _, _ := f.resolver().Resolve(refs[0])
		if src := want.blobs[mustDigest(t, f.shared)]; src != first.Context().String() {
			t.Errorf("%v: shared layer from %s, want %s", platforms, src, first.Context())
		}

		// kubelet's two lines are one source image: its signature once.
		sigs := map[string]bool{}
		for _, s := range want.sigs {
			if sigs[s.Source] {
				t.Errorf("%v: signature %s cached twice", platforms, s.Source)
			}

			sigs[s.Source] = true
		}

		for range 5 {
			got, hits, verified := plan(8, platforms...)

			if got.id != want.id || !slices.Equal(got.images, want.images) || !slices.Equal(got.sigs, want.sigs) ||
				!maps.EqualFunc(got.manifests, want.manifests, bytes.Equal) || !maps.Equal(got.blobs, want.blobs) {
				t.Fatalf("%v: planned in parallel:\n%+v\none at a time:\n%+v", platforms, got, want)
			}

			for req, n := range hits {
				if n > 1 && !strings.HasSuffix(req, "/v2/") {
					t.Errorf("%v: %s requested %d times", platforms, req, n)
				}
			}

			for d, n := range verified {
				if n != 1 {
					t.Errorf("%v: %s verified %d times", platforms, d, n)
				}
			}
		}
	}
}

// TestLayerCacheEntries: a flat tree takes layer-cache entries on the same
// file system (linked) and on another (/dev/shm, copied), and a corrupt
// entry is replaced by a fresh download, in both cases.
func TestLayerCacheEntries(t *testing.T) {
	f := newFixture(t, 8192, 2)
	shm, err := os.MkdirTemp("/dev/shm", "kiln-layers-")
	if err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() { os.RemoveAll(shm) }) //nolint:errcheck // test teardown

	out := t.TempDir()

	var st1, st2 unix.Stat_t
	if unix.Stat(shm, &st1) != nil || unix.Stat(out, &st2) != nil || st1.Dev == st2.Dev {
		t.Fatalf("/dev/shm and %s must be two file systems", out)
	}

	for _, cache := range []string{filepath.Join(out, "layers"), shm} {
		opts := DefaultOptions()
		opts.Logger = quiet()
		opts.Layout = Flat
		opts.LayerCache = cache

		p := f.plan(t, opts)
		want := filepath.Join(out, "want")

		if _, err := Write(t.Context(), p, want, opts); err != nil {
			t.Fatal(err)
		}

		// The largest blob, its entry overwritten with other bytes of its size.
		var bad *blobSource
		for _, b := range p.blobs {
			if bad == nil || b.size > bad.size {
				bad = b
			}
		}

		entry := filepath.Join(cache, "sha256", bad.digest.Hex)
		if err := os.Remove(entry); err != nil {
			t.Fatal(err)
		}

		if err := os.WriteFile(entry, make([]byte, bad.size), 0o644); err != nil {
			t.Fatal(err)
		}

		for round, fetched := range []int64{bad.size, 0} {
			got := filepath.Join(out, fmt.Sprintf("got-%d", round))

			st, err := Write(t.Context(), p, got, opts)
			if err != nil {
				t.Fatal(err)
			}

			if st.Fetched != fetched || st.CachedBlobs != len(p.blobs)-len(p.inline)-int(fetched/bad.size) {
				t.Errorf("%s, round %d: %+v, want %d bytes fetched", cache, round, st, fetched)
			}

			diffTrees(t, readTree(t, got), readTree(t, want))
		}

		for _, d := range []string{want, filepath.Join(out, "got-0"), filepath.Join(out, "got-1")} {
			if err := os.RemoveAll(d); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestPlanProgress: NewPlan reports each image as it is resolved.
func TestPlanProgress(t *testing.T) {
	f := newFixture(t, 1024, 1)

	var got []string

	opts := Options{Platforms: []string{"linux/amd64"}, Layout: Flat, Logger: quiet(), Progress: func(e Event) {
		if e.Phase != PhaseResolve || e.Digest == "" {
			t.Errorf("event %+v", e)
		}

		got = append(got, e.Image)
	}}

	f.plan(t, opts)

	slices.Sort(got)

	if want := slices.Sorted(slices.Values(f.refs())); !slices.Equal(got, want) {
		t.Errorf("resolved %q, want %q", got, want)
	}
}
