package server

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
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"go.yaml.in/yaml/v4"

	"github.com/kiln-dev/kiln/artifacts"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/signing/signingtest"
	"github.com/kiln-dev/kiln/testrelease"
)

// The demo release lives under its own namespace of the embedded registry
// and is trusted through its own key, for that namespace only: the demo key
// applies to nothing a user mirrors.
const (
	demoNamespace = "kiln-demo"
	demoDir       = "demo"
	demoPubKey    = "cosign.pub"
	// demoPrivKey is the demo key's private half, kept so that a version
	// seeded again is signed by the key already trusted.
	demoPrivKey = "cosign.key"
	// demoPolicy is a trust policy for clients of the demo (kiln cache
	// create --mirror <kiln>/kiln-demo), next to the key it names.
	demoPolicy = "trust-policy.yaml"
)

// demoVersions are seeded, newest last.
var demoVersions = []string{"v1.12.0", "v1.13.0"}

// demoRule is the trust-policy rule of the demo key, given as key (a
// policy key entry: its PEM, or the path of its file).
func demoRule(key map[string]any) map[string]any {
	patterns := []string{}
	for p := demoNamespace; len(patterns) < 5; p += "/*" {
		patterns = append(patterns, p+"/*")
	}

	key["name"] = "kiln-demo"

	return map[string]any{
		"name":         "kiln-demo",
		"repositories": patterns,
		"keys":         []any{key},
	}
}

// writeDemoPolicy writes the demo's trust policy beside its key, so that a
// client of the demo (kiln cache create, kiln mirror) has nothing to guess.
// It is derived, not configuration: written when missing or different, so a
// start on a read-only data directory that holds it writes nothing.
func writeDemoPolicy(dir string) error {
	data, err := yaml.Marshal(map[string]any{"rules": []any{demoRule(map[string]any{"path": demoPubKey})}})
	if err != nil {
		return err
	}

	data = append([]byte("# The demo release's trust policy, written by kiln serve --demo; the key path is relative to this file.\n"), data...)

	path := filepath.Join(dir, demoPolicy)
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return nil
	}

	return writeFileAtomic(path, data, 0o644)
}

// writeFileAtomic replaces path by data through a temp file, so a reader
// never sees half of it.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}

	defer os.Remove(tmp.Name()) //nolint:errcheck // gone after the rename

	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()

		return err
	}

	if _, err := tmp.Write(data); err != nil {
		tmp.Close()

		return err
	}

	if err := tmp.Sync(); err != nil {
		tmp.Close()

		return err
	}

	if err := tmp.Close(); err != nil {
		return err
	}

	return os.Rename(tmp.Name(), path)
}

// demoSeed is the outcome of seedDemo.
type demoSeed struct {
	// pub is the demo key's public half, for the trust policy.
	pub []byte
	// pushed maps each version seeded now to the digests of its release
	// images by mirror path: what its release lock must record.
	pushed map[string]map[string]string
}

// seedDemo pushes the signed synthetic release into the embedded registry,
// under demoNamespace, for each demo version that was never seeded (its
// imager tag is absent and it has no release lock), and returns the demo
// key. The key is made once and kept (cosign.key, 0600, beside cosign.pub),
// so a version seeded later is signed by the key the policy already names.
// A version seeded before is never pushed again: whatever its tags say now
// (an admin's re-tag, a deleted tag) is left for its release lock to judge,
// not silently undone.
func seedDemo(ctx context.Context, src *artifacts.Source, dataDir string, locks artifacts.LockStore, logger *slog.Logger) (*demoSeed, error) {
	dir := filepath.Join(dataDir, demoDir)
	demoSrc := *src
	demoSrc.Namespace = demoNamespace

	tags, err := demoSrc.Tags(ctx, release.ImagerRepo)
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}

	var missing []string

	for _, v := range demoVersions {
		if slices.Contains(tags, v) {
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

	seed := &demoSeed{pub: pub, pushed: map[string]map[string]string{}}

	if len(missing) == 0 && pub != nil {
		if err := writeDemoPolicy(dir); err != nil {
			return nil, fmt.Errorf("demo trust policy: %w", err)
		}

		return seed, nil
	}

	// Seeding writes the key and the registry: say so plainly on a data
	// directory that cannot be written, rather than fail inside a push.
	if err := writable(dataDir); err != nil {
		return nil, fmt.Errorf("demo: %s is not seeded and cannot be (%v): start once with a writable --data-dir, or drop --demo", strings.Join(missing, ", "), err)
	}

	if key == nil {
		if len(missing) < len(demoVersions) {
			// Seeded by an older kiln, which kept only the public half, or
			// the key was deleted: what is there was signed by a key that
			// can sign nothing more, so every version is seeded again with
			// a new one.
			logger.Warn("demo: the demo key's private half is missing; seeding every demo version again with a new key", "dir", dir)

			missing = demoVersions
		}

		if key, err = newDemoKey(dir); err != nil {
			return nil, err
		}

		seed.pub = key.PublicKeyPEM()
	}

	start := time.Now()

	for _, v := range missing {
		rel, err := testrelease.Push(ctx, testrelease.Options{
			Version:   v,
			Registry:  src.Registry,
			Namespace: demoNamespace,
			Remote:    src.Remote,
			// Signed as the upstream repository each image stands for, as a
			// real release's images are.
			Sign: func(ctx context.Context, ref name.Digest, upstream name.Repository) error {
				return signingtest.SignLegacyAs(ctx, ref, upstream.Name(), key, src.Remote...)
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

	logger.Info("seeded the demo release", "versions", missing, "namespace", demoNamespace, "duration", time.Since(start))

	return seed, nil
}

// loadDemoKey reads the demo key kept in dir: the key pair, the public half
// alone (written by an older kiln), or nothing.
func loadDemoKey(dir string) (*signingtest.Key, []byte, error) {
	pub, err := os.ReadFile(filepath.Join(dir, demoPubKey))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}

	if err != nil {
		return nil, nil, fmt.Errorf("demo key: %w", err)
	}

	priv, err := os.ReadFile(filepath.Join(dir, demoPrivKey))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, pub, nil
	}

	if err != nil {
		return nil, nil, fmt.Errorf("demo key: %w", err)
	}

	key, err := signingtest.ParseKey(priv)
	if err != nil {
		return nil, nil, fmt.Errorf("demo key %s: %w", filepath.Join(dir, demoPrivKey), err)
	}

	if !bytes.Equal(key.PublicKeyPEM(), pub) {
		return nil, nil, fmt.Errorf("demo key: %s is not the public half of %s", demoPubKey, demoPrivKey)
	}

	return key, pub, nil
}

// newDemoKey makes the demo key and keeps it in dir: the private half
// first (0600), so a crash never leaves a public key nothing can sign for.
func newDemoKey(dir string) (*signingtest.Key, error) {
	key, err := signingtest.GenerateKey(signingtest.ECDSAP256)
	if err != nil {
		return nil, fmt.Errorf("demo key: %w", err)
	}

	priv, err := key.PrivateKeyPEM()
	if err != nil {
		return nil, fmt.Errorf("demo key: %w", err)
	}

	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("demo key: %w", err)
	}

	if err := writeFileAtomic(filepath.Join(dir, demoPrivKey), priv, 0o600); err != nil {
		return nil, fmt.Errorf("demo key: %w", err)
	}

	if err := writeFileAtomic(filepath.Join(dir, demoPubKey), key.PublicKeyPEM(), 0o644); err != nil {
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

// lockDemo records the release lock of each demo version seeded now (the
// digests just pushed) and of any demo version without one (a data
// directory seeded by an older kiln: what its tags say now).
func lockDemo(ctx context.Context, m *artifacts.Manager, seed *demoSeed, logger *slog.Logger) error {
	for _, v := range demoVersions {
		want, pushed := seed.pushed[v]

		old, err := m.Lock(v)
		if err != nil {
			return fmt.Errorf("demo: %w", err)
		}

		if old != nil && (!pushed || maps.Equal(old.Images, want)) {
			continue
		}

		l, err := m.RecordLock(ctx, v, want, "kiln serve --demo")
		if err != nil {
			return fmt.Errorf("demo: release lock of %s: %w", v, err)
		}

		logger.Info("recorded the release lock of the demo release", "version", v, "imager", l.Images[release.ImagerRepo])
	}

	return nil
}
