package builder_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kiln-dev/kiln/artifacts"
	"github.com/kiln-dev/kiln/builder"
	"github.com/kiln-dev/kiln/demo"
	"github.com/kiln-dev/kiln/registry"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/schematic"
	"github.com/kiln-dev/kiln/signing"
	"github.com/kiln-dev/kiln/storage"
)

// trustAll accepts every image.
var trustAll = signing.CheckFunc(func(context.Context, name.Digest) error { return nil })

type env struct {
	b       *builder.Builder
	kernel  []byte
	emptyID string
	schemas storage.Schematics
	assets  storage.Assets
	dir     string
}

// kernelAsset is the demo imager's amd64 kernel, as package demo makes it.
func newEnv(t *testing.T) *env {
	t.Helper()

	return newEnvWith(t, func(*builder.Config) {})
}

// newEnvWith is newEnv with the builder's configuration changed by tune.
func newEnvWith(t *testing.T, tune func(*builder.Config)) *env {
	t.Helper()

	return newEnvRelease(t, tune, func(*demo.Options) {})
}

// newEnvRelease is newEnvWith with the demo release's options changed by
// tuneRelease.
func newEnvRelease(t testing.TB, tune func(*builder.Config), tuneRelease func(*demo.Options)) *env {
	t.Helper()

	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	dir := t.TempDir()

	reg, err := registry.NewEmbedded(ctx, dir+"/registry")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })

	host, _ := name.NewRegistry("kiln.internal", name.Insecure)
	inproc := []remote.Option{remote.WithTransport(registry.Transport(reg))}

	kernel := bytes.Repeat([]byte("MZ-kernel-"), 100_000)

	opts := demo.Options{
		Version: "v1.13.0", Registry: host, Remote: inproc,
		Assets: func(arch, file string) ([]byte, error) {
			if arch == "amd64" && file == "vmlinuz" {
				return kernel, nil
			}

			return nil, errNotExist
		},
	}
	tuneRelease(&opts)

	if _, err := demo.Push(ctx, opts); err != nil {
		t.Fatal(err)
	}

	logger := slog.New(slog.DiscardHandler)

	assets, err := storage.NewFSAssets(dir, 0, logger)
	if err != nil {
		t.Fatal(err)
	}

	src := &artifacts.Source{Mirror: release.Mirror{Registry: host}, Remote: inproc, PublicHost: "kiln.lan"}
	mgr := artifacts.NewManager(artifacts.Deps{Source: src, Checker: trustAll, Store: assets, Logger: logger}, artifacts.Config{})

	schemas := storage.NewMemory()

	sc, _ := schematic.Parse([]byte("{}"))
	canonical, _ := sc.Marshal()
	id := schematic.IDOf(canonical)

	if _, err := schemas.Put(ctx, id, canonical); err != nil {
		t.Fatal(err)
	}

	cfg := builder.Config{DataDir: dir, MaxConcurrency: 2, FactoryURL: "http://kiln.lan"}
	tune(&cfg)

	b := builder.New(ctx, cfg, builder.Deps{Schematics: schemas, Artifacts: mgr, Assets: assets, Logger: logger})

	return &env{b: b, kernel: kernel, emptyID: id, schemas: schemas, assets: assets, dir: dir}
}

func TestConcurrentRequestsBuildOnce(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()

	var wg sync.WaitGroup

	errs := make(chan error, 50)

	for range 50 {
		wg.Go(func() {
			res, err := e.b.Build(ctx, builder.Request{SchematicID: e.emptyID, Version: "v1.13.0", Path: "kernel-amd64"}, nil)
			if err != nil {
				errs <- err

				return
			}
			defer res.Asset.Close()

			got, err := io.ReadAll(res.Asset)
			if err != nil || !bytes.Equal(got, e.kernel) {
				errs <- errors.New("asset differs from the release kernel")
			}
		})
	}

	wg.Wait()
	close(errs)

	for err := range errs {
		t.Error(err)
	}

	if n := e.b.Builds(); n != 1 {
		t.Fatalf("50 concurrent requests for one cold asset ran %d builds, want 1", n)
	}

	// The x86_64 spelling is the same asset: a cache hit.
	res, err := e.b.Build(ctx, builder.Request{SchematicID: e.emptyID, Version: "1.13.0", Path: "kernel-x86_64"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Asset.Close()

	if !res.CacheHit || e.b.Builds() != 1 {
		t.Fatalf("kernel-x86_64 after kernel-amd64: cache hit %v, builds %d", res.CacheHit, e.b.Builds())
	}
}

func TestBuildErrors(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()

	for _, tc := range []struct {
		req  builder.Request
		want string
	}{
		{builder.Request{SchematicID: "aaaaaaaaaaaa", Version: "v1.13.0", Path: "kernel-amd64"}, `schematic ID "aaaaaaaaaaaa" not found`},
		{builder.Request{SchematicID: e.emptyID, Version: "v1.13.0", Path: "metal-amd64.ssd"}, `error parsing profile from path: invalid profile path: "metal-amd64.ssd"`},
		{builder.Request{SchematicID: e.emptyID, Version: "v1.99.0", Path: "kernel-amd64"}, "version v1.99.0 is not available"},
		{builder.Request{SchematicID: e.emptyID, Version: "v1.13.0", Path: "aws-amd64.raw.xz"}, "platform aws (only metal) is not supported yet"},
	} {
		_, err := e.b.Build(ctx, tc.req, nil)
		if err == nil || (err.Error() != tc.want && !strings.HasPrefix(err.Error(), tc.want+"; valid paths: ")) {
			t.Errorf("Build(%+v) error = %v, want %q", tc.req, err, tc.want)
		}
	}

	sc, _ := schematic.Parse([]byte("customization: {systemExtensions: {officialExtensions: [siderolabs/nope]}}"))
	canonical, _ := sc.Marshal()
	id := schematic.IDOf(canonical)

	if _, err := e.schemas.Put(ctx, id, canonical); err != nil {
		t.Fatal(err)
	}

	var extErr *artifacts.ExtensionError
	if _, err := e.b.Build(ctx, builder.Request{SchematicID: id, Version: "v1.13.0", Path: "initramfs-amd64.xz"}, nil); !errors.As(err, &extErr) {
		t.Errorf("unknown extension: error = %v, want ExtensionError", err)
	}
}
