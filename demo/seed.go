package demo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"go.yaml.in/yaml/v4"

	"github.com/kiln-dev/kiln/artifacts"
	"github.com/kiln-dev/kiln/internal/iox"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/signing"
)

// The demo release lives under its own namespace of the embedded registry
// and is trusted through its own key, for that namespace only: the demo key
// applies to nothing a user mirrors.
const (
	// Namespace is where the demo release is seeded in the registry.
	Namespace = "kiln-demo"
	// Dir is the demo's directory in the data directory.
	Dir = "demo"
	// PublicKeyFile is the demo key's public half, in Dir.
	PublicKeyFile = "cosign.pub"
	// KeyFile is the demo key's private half (0600), in Dir: kept so that a
	// version seeded again is signed by the key already trusted.
	KeyFile = "cosign.key"
	// PolicyFile is a trust policy for clients of the demo (kiln cache
	// create --mirror <kiln>/kiln-demo), in Dir, next to the key it names.
	PolicyFile = "trust-policy.yaml"
	// ruleName names the demo key's trust-policy rule and key.
	ruleName = "kiln-demo"
)

// Versions are the Talos versions seeded, oldest first.
func Versions() []release.Version {
	return []release.Version{release.MustParseVersion("v1.12.0"), release.MustParseVersion("v1.13.0")}
}

// repositories are the demo rule's patterns: everything under Namespace, up
// to four path elements deep (registry.k8s.io/coredns/coredns).
func repositories() []string {
	var patterns []string
	for p := Namespace; len(patterns) < 5; p += "/*" {
		patterns = append(patterns, p+"/*")
	}

	return patterns
}

// Policy is the trust policy of the demo release: the demo key, trusted
// for Namespace only. Prepend it to the configured policy.
func Policy(publicKeyPEM []byte) (*signing.Policy, error) {
	return signing.KeyPolicy(ruleName, publicKeyPEM, repositories()...)
}

// writeDemoPolicy writes the demo's trust policy beside its key, so that a
// client of the demo (kiln cache create, kiln mirror) has nothing to guess.
// It is derived, not configuration: written when missing or different, so a
// start on a read-only data directory that holds it writes nothing.
func writeDemoPolicy(dir string) error {
	data, err := yaml.Marshal(map[string]any{"rules": []any{map[string]any{
		"name":         ruleName,
		"repositories": repositories(),
		"keys":         []any{map[string]any{"name": ruleName, "path": PublicKeyFile}},
	}}})
	if err != nil {
		return err
	}

	data = append([]byte("# The demo release's trust policy, written by kiln serve --demo; the key path is relative to this file.\n"), data...)

	path := filepath.Join(dir, PolicyFile)
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return nil
	}

	return iox.WriteFile(path, data, 0o644)
}

// Seeded is the outcome of Seed.
type Seeded struct {
	// PublicKey is the demo key's public half (Policy trusts it).
	PublicKey []byte
	// pushed maps each version seeded now to the digests of its release
	// images by mirror path: what its release lock must record.
	pushed map[release.Version]map[string]string
}

// Seed pushes the signed synthetic release into the registry of src, under
// Namespace, for each demo version that was never seeded (its imager tag is
// absent and it has no release lock), and returns the demo key. The key is
// made once and kept (KeyFile, 0600, beside PublicKeyFile), so a version
// seeded later is signed by the key the policy already names. A version
// seeded before is never pushed again: whatever its tags say now (an
// admin's re-tag, a deleted tag) is left for its release lock to judge, not
// silently undone. Each image is signed as the upstream repository it
// stands for, as a real release's images are.
func Seed(ctx context.Context, src *artifacts.Source, dataDir string, locks artifacts.LockStore, logger *slog.Logger) (*Seeded, error) {
	dir := filepath.Join(dataDir, Dir)
	demoSrc := *src
	demoSrc.Namespace = Namespace

	tags, err := demoSrc.Tags(ctx, release.ImagerRepo)
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}

	var missing []release.Version

	for _, v := range Versions() {
		if slices.Contains(tags, v.String()) {
			continue
		}

		if l, err := locks.Lock(v); err != nil {
			return nil, fmt.Errorf("demo: %w", err)
		} else if l != nil {
			logger.Warn("demo: this version was seeded before (it has a release lock) but its imager tag is gone; it is not seeded again",
				"version", v, "hint", "delete the data directory to start the demo afresh")

			continue
		}

		missing = append(missing, v)
	}

	key, pub, err := loadDemoKey(dir)
	if err != nil {
		return nil, err
	}

	seed := &Seeded{PublicKey: pub, pushed: map[release.Version]map[string]string{}}

	if len(missing) == 0 && pub != nil {
		if err := writeDemoPolicy(dir); err != nil {
			return nil, fmt.Errorf("demo trust policy: %w", err)
		}

		return seed, nil
	}

	// Seeding writes the key and the registry: say so plainly on a data
	// directory that cannot be written, rather than fail inside a push.
	if err := writable(dataDir); err != nil {
		return nil, fmt.Errorf("demo: %v is not seeded and cannot be (%v): start once with a writable --data-dir, or drop --demo", missing, err)
	}

	if key == nil {
		if len(missing) < len(Versions()) {
			// Seeded by an older kiln, which kept only the public half, or
			// the key was deleted: what is there was signed by a key that
			// can sign nothing more, so every version is seeded again with
			// a new one.
			logger.Warn("demo: the demo key's private half is missing; seeding every demo version again with a new key", "dir", dir)

			missing = Versions()
		}

		if key, err = newDemoKey(dir); err != nil {
			return nil, err
		}

		seed.PublicKey = key.PublicKeyPEM()
	}

	start := time.Now()

	// A first start spends seconds here (longer on a busy machine) before
	// kiln serves; say so rather than look hung.
	logger.Info("seeding the demo release before serving (first start only)", "versions", missing, "namespace", Namespace)

	for _, v := range missing {
		rel, err := Push(ctx, Options{
			Version:   v.String(),
			Registry:  src.Registry,
			Namespace: Namespace,
			Remote:    src.Remote,
			// The host's GRUB (Debian's grub-pc-bin, grub-efi-amd64-bin)
			// makes the demo's BIOS images bootable; without it the
			// synthetic i386-pc tree still lets every default image build.
			Grub: GrubFrom(HostGrubDir),
			Sign: func(ctx context.Context, ref name.Digest, upstream name.Repository) error {
				return key.SignLegacyAs(ctx, ref, upstream, src.Remote...)
			},
		})
		if err != nil {
			return nil, fmt.Errorf("demo release %s: %w", v, err)
		}

		images := map[string]string{
			release.ImagerRepo:     rel.Imager.DigestStr(),
			release.ExtensionsRepo: rel.Extensions.DigestStr(),
			release.OverlaysRepo:   rel.Overlays.DigestStr(),
		}

		for path, d := range map[string]name.Digest{release.InstallerBaseRepo: rel.InstallerBase, release.InstallerRepo: rel.Installer, release.TalosctlAllRepo: rel.TalosctlAll} {
			if d.DigestStr() != "" {
				images[path] = d.DigestStr()
			}
		}

		seed.pushed[v] = images
	}

	if err := writeDemoPolicy(dir); err != nil {
		return nil, fmt.Errorf("demo trust policy: %w", err)
	}

	logger.Info("seeded the demo release", "versions", missing, "namespace", Namespace, "duration", time.Since(start))

	return seed, nil
}

// loadDemoKey reads the demo key kept in dir: the key pair, the public half
// alone (written by an older kiln), or nothing.
func loadDemoKey(dir string) (*signing.Signer, []byte, error) {
	pub, err := os.ReadFile(filepath.Join(dir, PublicKeyFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}

	if err != nil {
		return nil, nil, fmt.Errorf("demo key: %w", err)
	}

	if _, err := os.Stat(filepath.Join(dir, KeyFile)); errors.Is(err, fs.ErrNotExist) {
		return nil, pub, nil
	}

	key, _, err := signing.LoadOrCreateSigner(filepath.Join(dir, KeyFile))
	if err != nil {
		return nil, nil, fmt.Errorf("demo key: %w", err)
	}

	if !bytes.Equal(key.PublicKeyPEM(), pub) {
		return nil, nil, fmt.Errorf("demo key: %s is not the public half of %s", PublicKeyFile, KeyFile)
	}

	return key, pub, nil
}

// newDemoKey makes the demo key and keeps it in dir: the private half
// first (0600, a key left by an older demo replaced), so a crash never
// leaves a public key nothing can sign for.
func newDemoKey(dir string) (*signing.Signer, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("demo key: %w", err)
	}

	if err := os.Remove(filepath.Join(dir, KeyFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("demo key: %w", err)
	}

	key, _, err := signing.LoadOrCreateSigner(filepath.Join(dir, KeyFile))
	if err != nil {
		return nil, fmt.Errorf("demo key: %w", err)
	}

	if err := iox.WriteFile(filepath.Join(dir, PublicKeyFile), key.PublicKeyPEM(), 0o644); err != nil {
		return nil, fmt.Errorf("demo key: %w", err)
	}

	return key, nil
}

// writable reports whether files can be created in dir.
func writable(dir string) error {
	f, err := os.CreateTemp(dir, ".write-test-*")
	if err != nil {
		return err
	}

	name := f.Name()
	f.Close()

	return os.Remove(name)
}

// Lock records the release lock of each demo version seeded now (the
// digests just pushed) and of any demo version without one (a data
// directory seeded by an older kiln: what its tags say now). m reads the
// demo's namespace.
func (s *Seeded) Lock(ctx context.Context, m *artifacts.Manager, logger *slog.Logger) error {
	for _, v := range Versions() {
		want, pushed := s.pushed[v]

		old, err := m.Lock(v.String())
		if err != nil {
			return fmt.Errorf("demo: %w", err)
		}

		if old != nil && (!pushed || maps.Equal(old.Images, want)) {
			continue
		}

		l, err := m.RecordLock(ctx, v.String(), want, "kiln serve --demo")
		if err != nil {
			return fmt.Errorf("demo: release lock of %s: %w", v, err)
		}

		logger.Info("recorded the release lock of the demo release", "version", v, "imager", l.Images[release.ImagerRepo])
	}

	return nil
}
