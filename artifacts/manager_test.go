package artifacts_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kiln-dev/kiln/artifacts"
	"github.com/kiln-dev/kiln/demo"
	"github.com/kiln-dev/kiln/registry"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/signing"
	"github.com/kiln-dev/kiln/storage"
)

// recordingVerifier trusts everything but refuse, and records what it saw.
type recordingVerifier struct {
	mu     sync.Mutex
	seen   []string
	refuse string
}

var errRefused = errors.New("refused by test")

func (v *recordingVerifier) check(_ context.Context, ref name.Digest) error {
	v.mu.Lock()
	defer v.mu.Unlock()

	v.seen = append(v.seen, ref.Context().RepositoryStr())

	if v.refuse != "" && strings.HasSuffix(ref.Context().RepositoryStr(), v.refuse) {
		return errRefused
	}

	return nil
}

func setup(t *testing.T, versions ...string) (*artifacts.Manager, *recordingVerifier) {
	t.Helper()

	ctx := context.Background()

	reg, err := registry.NewEmbedded(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })

	host, _ := name.NewRegistry("kiln.internal", name.Insecure)
	inproc := []remote.Option{remote.WithTransport(registry.Transport(reg))}

	for _, v := range versions {
		if _, err := demo.Push(ctx, demo.Options{Version: v, Registry: host, Namespace: "mirror", Remote: inproc}); err != nil {
			t.Fatal(err)
		}
	}

	src := &artifacts.Source{Mirror: release.Mirror{Registry: host, Namespace: "mirror"}, Remote: inproc, PublicHost: "10.0.0.5:8080"}
	v := &recordingVerifier{}

	assets, err := storage.NewFSAssets(t.TempDir(), 0, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}

	return artifacts.NewManager(artifacts.Deps{Source: src, Checker: signing.CheckFunc(v.check), Store: assets}, artifacts.Config{BrokenVersions: []string{"v1.12.0"}}), v
}

func TestManager(t *testing.T) {
	ctx := context.Background()
	m, verifier := setup(t, "v1.13.0", "v1.12.0")

	vs, err := m.Versions(ctx)
	if err != nil || len(vs) != 1 || vs[0].String() != "v1.13.0" {
		t.Fatalf("Versions = %v, %v; want [v1.13.0] (v1.12.0 is configured broken)", vs, err)
	}

	exts, err := m.Extensions(ctx, "1.13.0")
	if err != nil {
		t.Fatal(err)
	}

	if len(exts) < 3 {
		t.Fatalf("Extensions = %d entries, want at least 3", len(exts))
	}

	for _, e := range exts {
		if !strings.HasPrefix(e.Name(), "siderolabs/") || e.Digest == "" || e.Description == "" {
			t.Errorf("extension %+v lacks a name, digest or description", e)
		}
	}

	ovs, err := m.Overlays(ctx, "v1.13.0")
	if err != nil || len(ovs) == 0 || ovs[0].Image() != "siderolabs/sbc-raspberrypi" {
		t.Fatalf("Overlays = %+v, %v", ovs, err)
	}

	if got := strings.Join(verifier.seen, ","); !strings.Contains(got, "siderolabs/extensions") || !strings.Contains(got, "siderolabs/overlays") {
		t.Errorf("catalogs were read without verification: verified %s", got)
	}

	for _, tc := range []struct {
		version string
		want    error
		msg     string
	}{
		{"v1.12.0", artifacts.ErrVersionNotAvailable, "version v1.12.0 is not available"},
		{"v9.9.9", artifacts.ErrVersionNotAvailable, "version v9.9.9 is not available"},
	} {
		if _, err := m.Extensions(ctx, tc.version); !errors.Is(err, tc.want) || err.Error() != tc.msg {
			t.Errorf("Extensions(%s) error = %v, want %q", tc.version, err, tc.msg)
		}
	}

	var invalid *artifacts.InvalidVersionError
	if _, err := m.Extensions(ctx, "latest"); !errors.As(err, &invalid) {
		t.Errorf("Extensions(latest) error = %v, want InvalidVersionError", err)
	}
}

func TestManagerRefusesUnverifiedCatalog(t *testing.T) {
	ctx := context.Background()
	m, verifier := setup(t, "v1.13.0")
	verifier.refuse = "siderolabs/extensions"

	if _, err := m.Extensions(ctx, "v1.13.0"); !errors.Is(err, errRefused) || !strings.Contains(err.Error(), "extensions catalog of v1.13.0") {
		t.Fatalf("Extensions error = %v, want the verifier's refusal naming the catalog", err)
	}
}

func TestPublicRef(t *testing.T) {
	src := &artifacts.Source{PublicHost: "kiln.lan:8080", Mirror: release.Mirror{Namespace: "/mirror/"}}
	if got := src.PublicRef("siderolabs/gvisor", "1.0"); got != "kiln.lan:8080/mirror/siderolabs/gvisor:1.0" {
		t.Errorf("PublicRef = %s", got)
	}
}
