package localsigstore

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// TUFRepository is a TUF repository served over HTTP on 127.0.0.1, laid out
// as Sigstore's (consistent snapshots: N.root.json, timestamp.json,
// N.snapshot.json, N.targets.json, targets/<sha256>.<name>), whose metadata
// is made and signed with go-tuf v2. Each role has its own ed25519 key.
type TUFRepository struct {
	// URL is the repository's base URL, what a client is given as mirror.
	URL string

	srv      *httptest.Server
	requests atomic.Int64

	mu      sync.Mutex
	files   map[string][]byte
	keys    map[string]ed25519.PrivateKey
	root    *metadata.Metadata[metadata.RootType]
	roots   [][]byte // published root.json versions, 1 first
	targets map[string][]byte
	version int64 // of targets, snapshot and timestamp
	expires time.Time
}

// NewTUFRepository publishes version 1 of a repository holding targets
// (e.g. "trusted_root.json") and serves it until the test ends. Metadata
// expires in a week.
func NewTUFRepository(tb testing.TB, targets map[string][]byte) *TUFRepository {
	tb.Helper()

	r := &TUFRepository{
		files:   map[string][]byte{},
		keys:    map[string]ed25519.PrivateKey{},
		targets: map[string][]byte{},
		expires: time.Now().Add(7 * 24 * time.Hour).UTC().Truncate(time.Second),
	}

	r.root = metadata.Root(r.expires)
	for _, role := range []string{metadata.ROOT, metadata.TARGETS, metadata.SNAPSHOT, metadata.TIMESTAMP} {
		if err := r.newRoleKey(role); err != nil {
			tb.Fatal(err)
		}
	}

	if err := r.publishRoot(nil); err != nil {
		tb.Fatal(err)
	}

	for n, b := range targets {
		r.targets[n] = b
	}

	if err := r.publishTargets(); err != nil {
		tb.Fatal(err)
	}

	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	tb.Cleanup(r.srv.Close)
	r.URL = r.srv.URL

	return r
}

func (r *TUFRepository) serve(w http.ResponseWriter, req *http.Request) {
	r.requests.Add(1)
	r.mu.Lock()
	b, ok := r.files[strings.TrimPrefix(req.URL.Path, "/")]
	r.mu.Unlock()

	if !ok || req.Method != http.MethodGet {
		http.NotFound(w, req)
		return
	}

	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b) //nolint:errcheck // a test server
}

// Requests counts the HTTP requests the repository answered.
func (r *TUFRepository) Requests() int64 { return r.requests.Load() }

// Root1 is the first root.json, the trust anchor a client starts from.
func (r *TUFRepository) Root1() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()

	return append([]byte(nil), r.roots[0]...)
}

// newRoleKey gives role a new key (replacing its old one). Callers hold r.mu or own r.
func (r *TUFRepository) newRoleKey(role string) error {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}

	k, err := metadata.KeyFromPublicKey(pub)
	if err != nil {
		return err
	}

	for _, old := range r.root.Signed.Roles[role].KeyIDs {
		if err := r.root.Signed.RevokeKey(old, role); err != nil {
			return err
		}
	}

	if err := r.root.Signed.AddKey(k, role); err != nil {
		return err
	}

	r.keys[role] = priv

	return nil
}

func sign[T metadata.Roles](md *metadata.Metadata[T], keys ...ed25519.PrivateKey) error {
	md.ClearSignatures()

	for _, k := range keys {
		s, err := signature.LoadED25519Signer(k)
		if err != nil {
			return err
		}

		if _, err := md.Sign(s); err != nil {
			return err
		}
	}

	return nil
}

// publishRoot signs the current root with its keys (and the previous root
// key, for a rotation) and publishes it as <version>.root.json.
func (r *TUFRepository) publishRoot(previous ed25519.PrivateKey) error {
	keys := []ed25519.PrivateKey{r.keys[metadata.ROOT]}
	if previous != nil {
		keys = append(keys, previous)
	}

	if err := sign(r.root, keys...); err != nil {
		return err
	}

	b, err := r.root.ToBytes(false)
	if err != nil {
		return err
	}

	r.files[fmt.Sprintf("%d.root.json", r.root.Signed.Version)] = b
	r.roots = append(r.roots, b)

	return nil
}

// publishTargets publishes new targets, snapshot and timestamp versions.
func (r *TUFRepository) publishTargets() error {
	r.version++

	targets := metadata.Targets(r.expires)
	targets.Signed.Version = r.version

	for n, b := range r.targets {
		tf, err := metadata.TargetFile().FromBytes(n, b, "sha256")
		if err != nil {
			return err
		}

		targets.Signed.Targets[n] = tf

		h := sha256.Sum256(b)
		r.files["targets/"+hex.EncodeToString(h[:])+"."+n] = b
	}

	if err := sign(targets, r.keys[metadata.TARGETS]); err != nil {
		return err
	}

	tb, err := targets.ToBytes(false)
	if err != nil {
		return err
	}

	r.files[fmt.Sprintf("%d.targets.json", r.version)] = tb

	snapshot := metadata.Snapshot(r.expires)
	snapshot.Signed.Version = r.version
	snapshot.Signed.Meta["targets.json"] = withHash(metadata.MetaFile(r.version), tb)

	if err := sign(snapshot, r.keys[metadata.SNAPSHOT]); err != nil {
		return err
	}

	sb, err := snapshot.ToBytes(false)
	if err != nil {
		return err
	}

	r.files[fmt.Sprintf("%d.snapshot.json", r.version)] = sb

	ts := metadata.Timestamp(r.expires)
	ts.Signed.Version = r.version
	ts.Signed.Meta["snapshot.json"] = withHash(metadata.MetaFile(r.version), sb)

	if err := sign(ts, r.keys[metadata.TIMESTAMP]); err != nil {
		return err
	}

	tsb, err := ts.ToBytes(false)
	if err != nil {
		return err
	}

	r.files["timestamp.json"] = tsb

	return nil
}

func withHash(m *metadata.MetaFiles, b []byte) *metadata.MetaFiles {
	h := sha256.Sum256(b)
	m.Length = int64(len(b))
	m.Hashes = metadata.Hashes{"sha256": h[:]}

	return m
}

// SetTarget publishes a new version of the repository with target name set
// to b.
func (r *TUFRepository) SetTarget(tb testing.TB, name string, b []byte) {
	tb.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()

	r.targets[name] = b
	if err := r.publishTargets(); err != nil {
		tb.Fatal(err)
	}
}

// RotateRoot publishes root version N+1 with new keys for every role,
// signed by the old root key and the new one, then re-signs the other
// roles with their new keys.
func (r *TUFRepository) RotateRoot(tb testing.TB) {
	tb.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()

	previous := r.keys[metadata.ROOT]
	for _, role := range []string{metadata.ROOT, metadata.TARGETS, metadata.SNAPSHOT, metadata.TIMESTAMP} {
		if err := r.newRoleKey(role); err != nil {
			tb.Fatal(err)
		}
	}

	r.root.Signed.Version++
	if err := r.publishRoot(previous); err != nil {
		tb.Fatal(err)
	}

	if err := r.publishTargets(); err != nil {
		tb.Fatal(err)
	}
}

// Expire makes the next published metadata expire at t.
func (r *TUFRepository) Expire(tb testing.TB, t time.Time) {
	tb.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()

	r.expires = t.UTC().Truncate(time.Second)
	if err := r.publishTargets(); err != nil {
		tb.Fatal(err)
	}
}

// ReplaceFile serves b for path (e.g. a target file, "timestamp.json")
// without re-signing anything: a compromised mirror.
func (r *TUFRepository) ReplaceFile(path string, b []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()

	r.files[path] = b
}

// TargetPath is where target name is served.
func (r *TUFRepository) TargetPath(name string) string {
	r.mu.Lock()
	defer r.mu.Unlock()

	h := sha256.Sum256(r.targets[name])

	return "targets/" + hex.EncodeToString(h[:]) + "." + name
}
