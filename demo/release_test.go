package demo

import (
	"bufio"
	"bytes"
	"context"
	"debug/pe"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/klauspost/compress/zstd"
	"go.yaml.in/yaml/v4"

	"github.com/kiln-dev/kiln/internal/squashfs"
	"github.com/kiln-dev/kiln/release"
)

const testVersion = "v1.13.0"

// signRecorder is a Sign that remembers what it was asked to sign.
type signRecorder struct {
	mu        sync.Mutex
	refs      []name.Digest
	upstreams map[string]string // mirror repository -> upstream it was signed as
}

func (s *signRecorder) sign(_ context.Context, ref name.Digest, upstream name.Repository) error {
	s.mu.Lock()
	defer s.mu.Unlock()

	s.refs = append(s.refs, ref)

	if s.upstreams == nil {
		s.upstreams = map[string]string{}
	}

	s.upstreams[ref.Context().Name()] = upstream.Name()

	return nil
}

// TestPushShapes: a release has its version's shape, as upstream
// publishes it (image-factory hack/copy-artifacts.sh): the full installer
// instead of installer-base before 1.10, talosctl-all from 1.11; the
// cluster images are release.KubernetesImages of the version unless given.
func TestPushShapes(t *testing.T) {
	t.Parallel()

	k8s19 := []string{"registry.k8s.io/kube-apiserver:v1.32.3", "ghcr.io/siderolabs/kubelet:v1.32.3"}

	for _, tc := range []struct {
		version              string
		k8s                  []string
		installer, base, ctl bool
	}{
		{version: "v1.9.6", k8s: k8s19, installer: true},
		{version: "v1.10.0", base: true},
		{version: "v1.11.0", base: true, ctl: true},
		{version: "v1.13.0", base: true, ctl: true},
	} {
		t.Run(tc.version, func(t *testing.T) {
			t.Parallel()

			reg := newRegistry(t)

			rel, err := Push(t.Context(), Options{Version: tc.version, Registry: reg, KubernetesImages: tc.k8s})
			if err != nil {
				t.Fatal(err)
			}

			has := func(repo string) bool {
				tags, err := remote.List(reg.Repo(repo))
				return err == nil && slices.Equal(tags, []string{tc.version})
			}

			for repo, want := range map[string]bool{
				release.InstallerRepo: tc.installer, release.InstallerBaseRepo: tc.base, release.TalosctlAllRepo: tc.ctl,
				release.ImagerRepo: true, release.ExtensionsRepo: true, release.OverlaysRepo: true,
			} {
				if got := has(repo); got != want {
					t.Errorf("%s:%s pushed = %v, want %v", repo, tc.version, got, want)
				}
			}

			if (rel.Installer.DigestStr() != "") != tc.installer || (rel.InstallerBase.DigestStr() != "") != tc.base ||
				(rel.TalosctlAll.DigestStr() != "") != tc.ctl {
				t.Errorf("Release = installer %q, installer-base %q, talosctl-all %q", rel.Installer, rel.InstallerBase, rel.TalosctlAll)
			}

			want := tc.k8s
			if want == nil {
				want, _ = release.KubernetesImages(release.MustParseVersion(tc.version))
			}

			if len(rel.KubernetesImages) != len(want) {
				t.Fatalf("%d Kubernetes images pushed, want %d", len(rel.KubernetesImages), len(want))
			}

			for i, up := range want {
				tag, _ := name.NewTag(up)
				if got := rel.KubernetesImages[i].Context().RepositoryStr(); got != release.MirrorPath(tag.Context()) {
					t.Errorf("Kubernetes image %d = %s, want %s", i, got, up)
				}
			}
		})
	}
}

func TestPushValidates(t *testing.T) {
	t.Parallel()

	reg := newRegistry(t)

	for _, o := range []Options{
		{Registry: reg},
		{Version: testVersion},
		{Version: "v1.99.0", Registry: reg},
		{Version: "1.13.0", Registry: reg},
		{Version: "v1.x.0", Registry: reg},
		{Version: testVersion, Registry: reg, Namespace: "Demo Space"},
	} {
		if _, err := Push(t.Context(), o); err == nil {
			t.Errorf("Push(%+v) succeeded, want error", o)
		}
	}
}

// TestPush pushes one release and checks its layout from the registry's
// side, the way kiln's mirror and builder will read it.
func TestPush(t *testing.T) {
	t.Parallel()

	reg := newRegistry(t)
	signer := &signRecorder{}

	rel, err := Push(t.Context(), Options{Version: testVersion, Registry: reg, Namespace: "demo", Sign: signer.sign})
	if err != nil {
		t.Fatalf("Push: %v", err)
	}

	mirror := func(upstream string) name.Reference {
		t.Helper()

		ref, err := release.Mirror{Registry: reg, Namespace: "demo"}.Ref(upstream)
		if err != nil {
			t.Fatalf("Mirror.Ref(%q): %v", upstream, err)
		}

		return ref
	}

	// tagged checks that repo:tag exists, names the index Push reported and
	// has both platforms.
	tagged := func(t *testing.T, upstream string, want name.Digest) {
		t.Helper()

		ref := mirror(upstream)

		desc, err := remote.Head(ref)
		if err != nil {
			t.Fatalf("%s: %v", ref, err)
		}

		if desc.Digest.String() != want.DigestStr() {
			t.Errorf("%s = %s, Push reported %s", ref, desc.Digest, want.DigestStr())
		}

		if ref.Context().String() != want.Context().String() {
			t.Errorf("%s: Push reported repository %s", ref, want.Context())
		}

		platforms(t, ref)
	}

	t.Run("tags", func(t *testing.T) {
		for upstream, want := range map[string]name.Digest{
			"ghcr.io/siderolabs/imager:" + testVersion:         rel.Imager,
			"ghcr.io/siderolabs/installer-base:" + testVersion: rel.InstallerBase,
			"ghcr.io/siderolabs/extensions:" + testVersion:     rel.Extensions,
			"ghcr.io/siderolabs/overlays:" + testVersion:       rel.Overlays,
			"ghcr.io/siderolabs/talosctl-all:" + testVersion:   rel.TalosctlAll,
			"ghcr.io/siderolabs/sbc-raspberrypi:v0.1.9":        rel.OverlayImages["siderolabs/sbc-raspberrypi"],
		} {
			tagged(t, upstream, want)
		}

		k8s, err := release.KubernetesImages(release.MustParseVersion(testVersion))
		if err != nil {
			t.Fatal(err)
		}

		if len(k8s) != len(rel.KubernetesImages) {
			t.Fatalf("Release has %d Kubernetes images, want %d", len(rel.KubernetesImages), len(k8s))
		}

		for i, upstream := range k8s {
			tagged(t, upstream, rel.KubernetesImages[i])
		}

		if got := rel.KubernetesImages[0].Context().RepositoryStr(); got != "demo/siderolabs/flannel" {
			t.Errorf("flannel mirrored as %s, want demo/siderolabs/flannel", got)
		}

		if got := rel.KubernetesImages[3].Context().RepositoryStr(); got != "demo/registry.k8s.io/pause" {
			t.Errorf("pause mirrored as %s, want demo/registry.k8s.io/pause", got)
		}
	})

	t.Run("imager", func(t *testing.T) {
		for arch, img := range platforms(t, rel.Imager) {
			files := flatten(t, img)

			for _, a := range release.Arches {
				for _, f := range []string{release.KernelAsset, release.InitramfsAsset, release.SDBootAsset, release.SDStubAsset} {
					p := path.Join(release.InstallDir, a, f)

					e, ok := files[p]
					if !ok {
						t.Errorf("imager linux/%s: %s missing", arch, p)

						continue
					}

					if f == release.InitramfsAsset {
						checkInitramfs(t, p, e.data)
					} else {
						checkPE(t, p, a, e.data)
					}
				}
			}

			if e := files["usr/bin/installer"]; e.mode&0o111 == 0 {
				t.Errorf("imager linux/%s: usr/bin/installer mode %o, want executable", arch, e.mode)
			}
		}

		// installer-base is one layer, and the imager starts with it.
		for arch, img := range platforms(t, rel.InstallerBase) {
			layers, err := img.Layers()
			if err != nil || len(layers) != 1 {
				t.Fatalf("installer-base linux/%s: %d layers, %v; want 1", arch, len(layers), err)
			}

			files := flatten(t, img)
			if !bytes.Contains(files["usr/bin/installer"].data, []byte("linux/"+arch)) {
				t.Errorf("installer-base linux/%s: installer placeholder %q", arch, files["usr/bin/installer"].data)
			}
		}
	})

	var extLines []string

	t.Run("extensions catalog", func(t *testing.T) {
		img := platforms(t, rel.Extensions)["amd64"]
		files := flatten(t, img)

		sc := bufio.NewScanner(bytes.NewReader(files[release.ImageDigestsFile].data))
		for sc.Scan() {
			extLines = append(extLines, sc.Text())
		}

		if len(extLines) < 3 {
			t.Fatalf("image-digests has %d lines, want >= 3:\n%s", len(extLines), files[release.ImageDigestsFile].data)
		}

		var desc map[string]struct {
			Author      string `yaml:"author"`
			Description string `yaml:"description"`
		}
		if err := yaml.Unmarshal(files[release.DescriptionsFile].data, &desc); err != nil {
			t.Fatalf("descriptions.yaml: %v", err)
		}

		for _, line := range extLines {
			tag, digest, ok := strings.Cut(line, "@")
			if !ok {
				t.Fatalf("image-digests line %q has no digest", line)
			}

			tr, err := name.NewTag(tag, name.StrictValidation)
			if err != nil || tr.RegistryStr() != "ghcr.io" {
				t.Fatalf("image-digests line %q: tag %v, err %v; want ghcr.io/...:tag", line, tr, err)
			}

			if rel.ExtensionRefs[tr.RepositoryStr()] != line {
				t.Errorf("ExtensionRefs[%s] = %q, want %q", tr.RepositoryStr(), rel.ExtensionRefs[tr.RepositoryStr()], line)
			}

			if d := desc[line]; d.Author == "" || d.Description == "" {
				t.Errorf("descriptions.yaml: no author/description for %q", line)
			}

			// The digest resolves by digest and by tag on the mirror.
			byDigest := mirror(line)
			if byDigest.Identifier() != digest {
				t.Fatalf("Mirror.Ref(%q) = %s", line, byDigest)
			}

			tagged(t, tag, rel.ExtensionImages[tr.RepositoryStr()])
			platforms(t, byDigest)
		}
	})

	t.Run("extension images", func(t *testing.T) {
		wantRootfs := map[string]string{
			"siderolabs/gvisor":      "rootfs/usr/local/bin/runsc",
			"siderolabs/i915":        "rootfs/usr/lib/firmware/i915/adlp_dmc.bin",
			"siderolabs/intel-ucode": "rootfs/usr/lib/firmware/intel-ucode/06-8e-0a",
			"siderolabs/drbd":        "rootfs/usr/lib/modules/" + DefaultKernelVersion + "/extras/drbd.ko",
		}

		if len(rel.ExtensionImages) != len(wantRootfs) {
			t.Errorf("ExtensionImages = %v, want %v", keys(rel.ExtensionImages), keys(wantRootfs))
		}

		for repo, ref := range rel.ExtensionImages {
			for arch, img := range platforms(t, ref) {
				layers, err := img.Layers()
				if err != nil || len(layers) != 1 {
					t.Errorf("%s linux/%s: %d layers, %v; want 1", repo, arch, len(layers), err)
				}

				files := flatten(t, img)
				checkExtension(t, repo+" linux/"+arch, files)

				if _, ok := files[wantRootfs[repo]]; !ok {
					t.Errorf("%s linux/%s: %s missing", repo, arch, wantRootfs[repo])
				}
			}
		}
	})

	t.Run("overlays", func(t *testing.T) {
		files := flatten(t, platforms(t, rel.Overlays)["arm64"])

		var catalog struct {
			Overlays []struct {
				Name   string `yaml:"name"`
				Image  string `yaml:"image"`
				Digest string `yaml:"digest"`
			} `yaml:"overlays"`
		}
		if err := yaml.Unmarshal(files[release.OverlaysFile].data, &catalog); err != nil {
			t.Fatalf("overlays.yaml: %v", err)
		}

		if len(catalog.Overlays) == 0 {
			t.Fatalf("overlays.yaml lists nothing:\n%s", files[release.OverlaysFile].data)
		}

		for _, ov := range catalog.Overlays {
			tag, err := name.NewTag(ov.Image, name.StrictValidation)
			if err != nil || tag.RegistryStr() != "ghcr.io" {
				t.Fatalf("overlay %s image %q: %v; want ghcr.io/...:tag", ov.Name, ov.Image, err)
			}

			if got := rel.OverlayImages[tag.RepositoryStr()].DigestStr(); got != ov.Digest {
				t.Errorf("overlay %s: catalog digest %s, Push reported %s", ov.Name, ov.Digest, got)
			}

			tagged(t, ov.Image, rel.OverlayImages[tag.RepositoryStr()])

			for arch, img := range platforms(t, mirror(ov.Image+"@"+ov.Digest)) {
				ovFiles := flatten(t, img)
				for _, p := range []string{"installers/" + ov.Name, "profiles/" + ov.Name + ".yaml", "artifacts/arm64"} {
					if _, ok := ovFiles[p]; !ok {
						t.Errorf("overlay %s linux/%s: %s missing", ov.Name, arch, p)
					}
				}

				var profile map[string]any
				if err := yaml.Unmarshal(ovFiles["profiles/"+ov.Name+".yaml"].data, &profile); err != nil || profile["arch"] != "arm64" {
					t.Errorf("overlay %s profile: %v, %v", ov.Name, profile, err)
				}
			}
		}
	})

	t.Run("talosctl-all", func(t *testing.T) {
		files := flatten(t, platforms(t, rel.TalosctlAll)["amd64"])
		for _, f := range []string{"talosctl-linux-amd64", "talosctl-linux-arm64", "talosctl-darwin-arm64", "talosctl-windows-amd64.exe"} {
			if len(files[f].data) == 0 {
				t.Errorf("talosctl-all: %s missing", f)
			}
		}
	})

	t.Run("signed", func(t *testing.T) {
		if !slices.Equal(signer.refs, rel.Manifests) {
			t.Errorf("Sign calls differ from Release.Manifests:\n%v\n%v", signer.refs, rel.Manifests)
		}

		seen := map[string]bool{}
		for _, r := range signer.refs {
			if seen[r.String()] {
				t.Errorf("signed %s twice", r)
			}

			seen[r.String()] = true
		}

		// Each is signed as the upstream repository it stands for, as a
		// real release's signatures name it.
		for mirrorRepo, want := range map[string]string{
			rel.Imager.Context().Name():     "ghcr.io/siderolabs/imager",
			rel.Extensions.Context().Name(): "ghcr.io/siderolabs/extensions",
		} {
			if got := signer.upstreams[mirrorRepo]; got != want {
				t.Errorf("%s was signed as %q, want %q", mirrorRepo, got, want)
			}
		}

		for mirrorRepo, got := range signer.upstreams {
			if strings.HasSuffix(mirrorRepo, "/registry.k8s.io/kube-apiserver") && got != "registry.k8s.io/kube-apiserver" {
				t.Errorf("%s was signed as %q, want registry.k8s.io/kube-apiserver", mirrorRepo, got)
			}
		}

		// Everything reachable from what Push reported must be signed.
		roots := []name.Digest{rel.Imager, rel.InstallerBase, rel.Extensions, rel.Overlays, rel.TalosctlAll}
		roots = append(roots, rel.KubernetesImages...)

		for _, m := range []map[string]name.Digest{rel.ExtensionImages, rel.OverlayImages} {
			for _, d := range m {
				roots = append(roots, d)
			}
		}

		want := 0

		for _, root := range roots {
			idx, err := remote.Index(root)
			if err != nil {
				t.Fatal(err)
			}

			im, err := idx.IndexManifest()
			if err != nil {
				t.Fatal(err)
			}

			refs := []name.Digest{root}
			for _, m := range im.Manifests {
				refs = append(refs, root.Context().Digest(m.Digest.String()))
			}

			for _, r := range refs {
				want++

				if !seen[r.String()] {
					t.Errorf("%s was pushed but not signed", r)
				}
			}
		}

		if want != len(signer.refs) {
			t.Errorf("signed %d manifests, %d reachable from the release", len(signer.refs), want)
		}
	})
}

// checkInitramfs checks a zstd-compressed newc cpio holding /init and
// /rootfs.sqsh.
func checkInitramfs(t *testing.T, p string, data []byte) {
	t.Helper()

	if !bytes.HasPrefix(data, []byte{0x28, 0xb5, 0x2f, 0xfd}) {
		t.Errorf("%s: no zstd magic: % x", p, data[:min(4, len(data))])

		return
	}

	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()

	raw, err := dec.DecodeAll(data, nil)
	if err != nil {
		t.Errorf("%s: zstd: %v", p, err)

		return
	}

	records, err := parseNewc(raw)
	if err != nil {
		t.Errorf("%s: cpio: %v", p, err)

		return
	}

	var names []string
	for _, r := range records {
		names = append(names, r.name)

		if r.mode&0o170000 != 0o100000 || len(r.data) == 0 {
			t.Errorf("%s: %s mode %o, %d bytes; want a non-empty regular file", p, r.name, r.mode, len(r.data))
		}
	}

	if !slices.Equal(names, []string{"init", "rootfs.sqsh"}) {
		t.Errorf("%s: cpio holds %q, want init and rootfs.sqsh", p, names)
		return
	}

	// rootfs.sqsh is a real squashfs with one kernel's module tree and
	// depmod's files, as extensions with kernel modules need.
	img := records[1].data

	sq, err := squashfs.NewReader(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		t.Errorf("%s: rootfs.sqsh: %v", p, err)
		return
	}

	ents, err := sq.ReadDir("usr/lib/modules")
	if err != nil || len(ents) != 1 {
		t.Errorf("%s: rootfs.sqsh usr/lib/modules: %v, %v; want one kernel version", p, ents, err)
		return
	}

	dep, err := fs.ReadFile(sq, "usr/lib/modules/"+ents[0].Name()+"/modules.dep")
	if err != nil || string(dep) != "kernel/lib/libcrc32c.ko:\n" {
		t.Errorf("%s: rootfs.sqsh modules.dep = %q, %v", p, dep, err)
	}
}

// checkPE checks that a placeholder EFI binary parses as PE for its arch.
func checkPE(t *testing.T, p, arch string, data []byte) {
	t.Helper()

	f, err := pe.NewFile(bytes.NewReader(data))
	if err != nil {
		t.Errorf("%s: %v", p, err)

		return
	}

	want, _ := peMachine(arch)
	if f.Machine != want {
		t.Errorf("%s: machine %#x, want %#x", p, f.Machine, want)
	}

	oh, ok := f.OptionalHeader.(*pe.OptionalHeader64)
	if !ok || oh.Subsystem != pe.IMAGE_SUBSYSTEM_EFI_APPLICATION {
		t.Errorf("%s: optional header %T, want PE32+ EFI application", p, f.OptionalHeader)
	}

	text := f.Section(".text")
	if text == nil {
		t.Errorf("%s: no .text section", p)

		return
	}

	body, err := text.Data()
	if err != nil || !bytes.Contains(body, []byte("kiln synthetic")) {
		t.Errorf("%s: .text = %q, %v", p, body, err)
	}
}

// checkExtension applies pkg/machinery/extensions.Load's rules: only
// manifest.yaml and rootfs/ at the top, a v1alpha1 manifest with metadata.
func checkExtension(t *testing.T, what string, files map[string]fsEntry) {
	t.Helper()

	for p := range files {
		if top, _, _ := strings.Cut(p, "/"); top != "manifest.yaml" && top != "rootfs" {
			t.Errorf("%s: unexpected top-level entry %q", what, p)
		}
	}

	if files["rootfs"].typeflag != '5' {
		t.Errorf("%s: rootfs is not a directory", what)
	}

	var m extensionManifest
	if err := yaml.Unmarshal(files["manifest.yaml"].data, &m); err != nil {
		t.Fatalf("%s: manifest.yaml: %v", what, err)
	}

	md := m.Metadata
	if m.Version != "v1alpha1" || md.Name == "" || md.Version == "" || md.Author == "" || md.Description == "" ||
		md.Compatibility.Talos.Version != ">= v1.0.0" {
		t.Errorf("%s: manifest.yaml incomplete:\n%s", what, files["manifest.yaml"].data)
	}
}

// TestPushDeterministic pushes the same options twice, to two registries,
// and expects the same digests everywhere.
func TestPushDeterministic(t *testing.T) {
	t.Parallel()

	digests := func() []string {
		rel, err := Push(t.Context(), Options{Version: testVersion, Registry: newRegistry(t)})
		if err != nil {
			t.Fatalf("Push: %v", err)
		}

		var out []string
		for _, d := range rel.Manifests {
			out = append(out, d.Context().RepositoryStr()+"@"+d.DigestStr())
		}

		return out
	}

	first, second := digests(), digests()
	if !reflect.DeepEqual(first, second) {
		t.Errorf("two pushes differ:\n%v\n%v", first, second)
	}
}

// TestPushMultiVersion pushes two versions into one registry and one
// namespace, and expects both sets of tags.
func TestPushMultiVersion(t *testing.T) {
	t.Parallel()

	reg := newRegistry(t)

	for _, v := range []string{"v1.12.0", "v1.13.0"} {
		if _, err := Push(t.Context(), Options{Version: v, Registry: reg, Namespace: "mirror/"}); err != nil {
			t.Fatalf("Push %s: %v", v, err)
		}
	}

	for _, repo := range []string{release.ImagerRepo, release.ExtensionsRepo, release.OverlaysRepo, release.InstallerBaseRepo} {
		tags, err := remote.List(reg.Repo("mirror", repo))
		if err != nil {
			t.Fatalf("list %s: %v", repo, err)
		}

		slices.Sort(tags)

		if !slices.Equal(tags, []string{"v1.12.0", "v1.13.0"}) {
			t.Errorf("%s tags = %v", repo, tags)
		}
	}
}

// TestPushAssets replaces some boot assets and keeps placeholders for the
// files the callback does not have.
func TestPushAssets(t *testing.T) {
	t.Parallel()

	kernel := []byte("MZ a real kernel, honestly")
	boom := errors.New("disk on fire")

	assets := func(fail bool) func(arch, file string) ([]byte, error) {
		return func(arch, file string) ([]byte, error) {
			switch {
			case arch == "arm64" && file == release.KernelAsset:
				return kernel, nil
			case fail && file == release.SDStubAsset:
				return nil, boom
			default:
				return nil, fmt.Errorf("no %s/%s: %w", arch, file, fs.ErrNotExist)
			}
		}
	}

	reg := newRegistry(t)

	if _, err := Push(t.Context(), Options{Version: testVersion, Registry: reg, Assets: assets(true)}); !errors.Is(err, boom) {
		t.Fatalf("Push with failing Assets: %v, want %v", err, boom)
	}

	rel, err := Push(t.Context(), Options{Version: testVersion, Registry: reg, Assets: assets(false), KernelVersion: "6.1.0-28-amd64"})
	if err != nil {
		t.Fatalf("Push: %v", err)
	}

	files := flatten(t, platforms(t, rel.Imager)["amd64"])
	if got := files["usr/install/arm64/vmlinuz"].data; !bytes.Equal(got, kernel) {
		t.Errorf("arm64 vmlinuz = %q, want the supplied kernel", got)
	}

	checkPE(t, "amd64 vmlinuz", "amd64", files["usr/install/amd64/vmlinuz"].data)
	checkInitramfs(t, "arm64 initramfs", files["usr/install/arm64/initramfs.xz"].data)

	drbd := flatten(t, platforms(t, rel.ExtensionImages["siderolabs/drbd"])["arm64"])
	if _, ok := drbd["rootfs/usr/lib/modules/6.1.0-28-amd64/extras/drbd.ko"]; !ok {
		t.Errorf("drbd does not follow KernelVersion: %v", keys(drbd))
	}
}

// TestPushInstaller puts a supplied installer binary into installer-base
// (and so the imager built on it), keeping the placeholder elsewhere.
func TestPushInstaller(t *testing.T) {
	t.Parallel()

	bin := []byte("\x7fELF a real installer")
	boom := errors.New("compiler on fire")

	installer := func(fail bool) func(arch string) ([]byte, error) {
		return func(arch string) ([]byte, error) {
			switch {
			case fail:
				return nil, boom
			case arch == "amd64":
				return bin, nil
			default:
				return nil, fs.ErrNotExist
			}
		}
	}

	reg := newRegistry(t)

	if _, err := Push(t.Context(), Options{Version: testVersion, Registry: reg, Installer: installer(true)}); !errors.Is(err, boom) {
		t.Fatalf("Push with failing Installer: %v, want %v", err, boom)
	}

	rel, err := Push(t.Context(), Options{Version: testVersion, Registry: reg, Installer: installer(false)})
	if err != nil {
		t.Fatalf("Push: %v", err)
	}

	for _, ref := range []name.Digest{rel.InstallerBase, rel.Imager} {
		imgs := platforms(t, ref)

		amd := flatten(t, imgs["amd64"])["usr/bin/installer"]
		if !bytes.Equal(amd.data, bin) || amd.mode&0o777 != 0o755 {
			t.Errorf("%s amd64 usr/bin/installer = %q (%o), want the supplied binary, 0755", ref, amd.data, amd.mode)
		}

		if arm := flatten(t, imgs["arm64"])["usr/bin/installer"].data; !bytes.Contains(arm, []byte("placeholder")) {
			t.Errorf("%s arm64 usr/bin/installer = %q, want the placeholder", ref, arm)
		}
	}
}
