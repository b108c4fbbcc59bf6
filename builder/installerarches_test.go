package builder_test

import (
	"context"
	"log/slog"
	"slices"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kiln-dev/kiln/artifacts"
	"github.com/kiln-dev/kiln/builder"
	"github.com/kiln-dev/kiln/demo"
	"github.com/kiln-dev/kiln/mirror"
	"github.com/kiln-dev/kiln/registry"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/schematic"
	"github.com/kiln-dev/kiln/storage"
)

// TestInstallerOverMirroredArches: after `kiln mirror --arch amd64` (the
// mirror package with that selection, from a registry holding the whole
// release) the mirrored installer-base index still lists arm64, whose
// image is not there; the installer is then an index over linux/amd64
// alone, its image the same as the one a whole mirror gives.
func TestInstallerOverMirroredArches(t *testing.T) {
	ctx := t.Context()

	embedded := func(host string) (name.Registry, []remote.Option) {
		reg, err := registry.NewEmbedded(ctx, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}

		t.Cleanup(func() { reg.Close() })

		r, _ := name.NewRegistry(host, name.Insecure)

		return r, []remote.Option{remote.WithTransport(registry.Transport(reg))}
	}

	upReg, upOpts := embedded("upstream.internal")

	if _, err := demo.Push(ctx, demo.Options{Version: "v1.13.0", Registry: upReg, Remote: upOpts, KubernetesImages: []string{}}); err != nil {
		t.Fatal(err)
	}

	amdReg, amdOpts := embedded("kiln.internal")

	plan, err := mirror.NewPlan(ctx, mirror.Registry{Mirror: release.Mirror{Registry: upReg}, Options: upOpts},
		mirror.Selection{Versions: []release.Version{release.MustParseVersion("v1.13.0")}, Arches: []string{"amd64"}})
	if err != nil {
		t.Fatal(err)
	}

	if _, err := mirror.Copy(ctx, plan, mirror.Registry{Mirror: release.Mirror{Registry: amdReg}, Options: amdOpts}, mirror.Options{}); err != nil {
		t.Fatal(err)
	}

	whole := installerIndex(t, upReg, upOpts)
	amd64 := installerIndex(t, amdReg, amdOpts)

	wm, err := whole.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}

	am, err := amd64.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}

	if len(wm.Manifests) != len(release.Arches) {
		t.Fatalf("the whole mirror's installer has %d images, want %v", len(wm.Manifests), release.Arches)
	}

	if len(am.Manifests) != 1 || am.Manifests[0].Platform == nil || am.Manifests[0].Platform.Architecture != "amd64" {
		t.Fatalf("the amd64 mirror's installer lists %+v, want linux/amd64 alone", am.Manifests)
	}

	// The linux/amd64 image does not depend on what else was mirrored.
	i := slices.IndexFunc(wm.Manifests, func(d v1.Descriptor) bool { return d.Platform != nil && d.Platform.Architecture == "amd64" })
	if i < 0 || wm.Manifests[i].Digest != am.Manifests[0].Digest {
		t.Errorf("linux/amd64 image %s from the amd64 mirror, %v from the whole one", am.Manifests[0].Digest, wm.Manifests)
	}

	// Its layers are all readable.
	img, err := amd64.Image(am.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}

	if _, err := img.ConfigFile(); err != nil {
		t.Fatal(err)
	}
}

// installerIndex builds the installer index of the empty schematic from
// the release in reg, and returns it as written out (in memory).
func installerIndex(t *testing.T, reg name.Registry, opts []remote.Option) v1.ImageIndex {
	t.Helper()

	ctx := t.Context()
	dir := t.TempDir()
	logger := slog.New(slog.DiscardHandler)

	assets, err := storage.NewFSAssets(dir, 0, logger)
	if err != nil {
		t.Fatal(err)
	}

	src := &artifacts.Source{Mirror: release.Mirror{Registry: reg}, Remote: opts, PublicHost: "kiln.lan"}
	mgr := artifacts.NewManager(artifacts.Deps{Source: src, Checker: trustAll, Store: assets, Logger: logger}, artifacts.Config{})

	schemas := storage.NewMemory()
	sc, _ := schematic.Parse([]byte("{}"))
	canonical, _ := sc.Marshal()
	id := schematic.IDOf(canonical)

	if _, err := schemas.Put(ctx, id, canonical); err != nil {
		t.Fatal(err)
	}

	b := builder.New(ctx, builder.Config{DataDir: dir, FactoryURL: "http://kiln.lan"},
		builder.Deps{Schematics: schemas, Artifacts: mgr, Assets: assets, Logger: logger})

	ip, err := b.PlanInstaller(ctx, builder.InstallerRequest{SchematicID: id, Version: "v1.13.0"})
	if err != nil {
		t.Fatal(err)
	}

	// The index's layers live only while publish runs: keep it in a
	// registry of the test's own.
	out, outOpts := func() (name.Registry, []remote.Option) {
		r, err := registry.NewEmbedded(ctx, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}

		t.Cleanup(func() { r.Close() })

		n, _ := name.NewRegistry("out.internal", name.Insecure)

		return n, []remote.Option{remote.WithTransport(registry.Transport(r))}
	}()

	tag := out.Repo("metal-installer", id).Tag("v1.13.0")

	if err := b.Installer(ctx, ip, tag.String(), nil, func(ctx context.Context, idx v1.ImageIndex) error {
		return remote.WriteIndex(tag, idx, append(outOpts, remote.WithContext(ctx))...)
	}); err != nil {
		t.Fatalf("installer from %s: %v", reg, err)
	}

	if got := ip.Arches(); len(got) == 0 {
		t.Fatal("no architectures")
	}

	idx, err := remote.Index(tag, outOpts...)
	if err != nil {
		t.Fatal(err)
	}

	return idx
}
