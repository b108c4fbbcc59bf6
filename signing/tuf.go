package signing

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/tuf"
	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/trustedmetadata"
)

// Sigstore's public-good TUF repository, which publishes its trusted root.
const (
	PublicGoodTUFURL  = tuf.DefaultMirror
	TrustedRootTarget = "trusted_root.json"
)

// PublicGoodTUFRoot is the root.json of Sigstore's public-good TUF
// repository that sigstore-go embeds, and so kiln's binary: the trust anchor
// for the trusted root that came with a mirror, unless a policy names another.
func PublicGoodTUFRoot() []byte { return tuf.DefaultRoot() }

// tufEvidenceType is the media type of CarriedRoot's TUF metadata document.
const tufEvidenceType = "application/vnd.dev.kiln.tuf-evidence.v1+json"

// maxTUFFile bounds every TUF file read (Sigstore's are tens of KiB).
const maxTUFFile = 4 << 20

// CarriedRoot is a Sigstore trusted_root.json together with the TUF
// metadata that vouches for it: every root.json from the client's trust
// anchor to the newest, and the timestamp, snapshot and targets metadata
// that name the trusted root's length and hash. kiln mirror fetches it on a
// connected machine and carries it across the air gap; the far side checks
// it again with Verify, with no network.
type CarriedRoot struct {
	// TrustedRoot is trusted_root.json, byte for byte as published.
	TrustedRoot []byte
	// Repository is the TUF repository's URL (informational).
	Repository string
	// Roots are root.json versions in order; Timestamp, Snapshot and
	// Targets the top-level metadata, each byte for byte as fetched.
	Roots                        [][]byte
	Timestamp, Snapshot, Targets []byte
}

type tufEvidence struct {
	MediaType  string   `json:"mediaType"`
	Repository string   `json:"repository"`
	Target     string   `json:"target"`
	Roots      [][]byte `json:"roots"`
	Timestamp  []byte   `json:"timestamp"`
	Snapshot   []byte   `json:"snapshot"`
	Targets    []byte   `json:"targets"`
}

// TUFJSON encodes the TUF metadata (not the trusted root) as one JSON
// document; ParseCarriedRoot reads it back. The metadata files are kept as
// bytes (base64), since their hashes are what the TUF roles sign.
func (c *CarriedRoot) TUFJSON() ([]byte, error) {
	return json.Marshal(tufEvidence{
		MediaType:  tufEvidenceType,
		Repository: c.Repository,
		Target:     TrustedRootTarget,
		Roots:      c.Roots,
		Timestamp:  c.Timestamp,
		Snapshot:   c.Snapshot,
		Targets:    c.Targets,
	})
}

// ParseCarriedRoot reads a trusted root and its TUF document (TUFJSON). It
// checks the shape only; Verify checks the signatures.
func ParseCarriedRoot(trustedRoot, tufJSON []byte) (*CarriedRoot, error) {
	var ev tufEvidence
	if err := json.Unmarshal(tufJSON, &ev); err != nil {
		return nil, fmt.Errorf("TUF metadata of the trusted root: %w", err)
	}

	switch {
	case ev.MediaType != tufEvidenceType:
		return nil, fmt.Errorf("TUF metadata of the trusted root: media type %q, want %q", ev.MediaType, tufEvidenceType)
	case ev.Target != TrustedRootTarget:
		return nil, fmt.Errorf("TUF metadata of the trusted root: target %q, want %q", ev.Target, TrustedRootTarget)
	case len(ev.Roots) == 0 || len(ev.Timestamp) == 0 || len(ev.Snapshot) == 0 || len(ev.Targets) == 0:
		return nil, errors.New("TUF metadata of the trusted root: root, timestamp, snapshot or targets missing")
	case len(trustedRoot) == 0:
		return nil, errors.New("trusted root is empty")
	}

	return &CarriedRoot{
		TrustedRoot: trustedRoot,
		Repository:  ev.Repository,
		Roots:       ev.Roots,
		Timestamp:   ev.Timestamp,
		Snapshot:    ev.Snapshot,
		Targets:     ev.Targets,
	}, nil
}

// Digest identifies the carried root and its metadata ("sha256:<hex>").
func (c *CarriedRoot) Digest() string {
	h := sha256.New()
	for _, b := range append([][]byte{c.TrustedRoot, c.Timestamp, c.Snapshot, c.Targets}, c.Roots...) {
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}

	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// TrustedRootDigest is the sha256 of trusted_root.json, as `sha256sum` prints it.
func (c *CarriedRoot) TrustedRootDigest() string {
	h := sha256.Sum256(c.TrustedRoot)

	return hex.EncodeToString(h[:])
}

// Verify checks, offline, that the TUF repository whose root.json is
// tufRoot published this trusted root: each carried root.json is signed by
// the threshold of the previous one's root keys and its own (from tufRoot's
// version on), the timestamp, snapshot and targets metadata by the final
// root's keys, each file's hash and version by the role above it, and the
// trusted root's length and hash by the targets metadata. It returns the
// parsed trusted root.
//
// Expiry is not checked against the clock: on the far side of an air gap the
// metadata has always expired (Sigstore's timestamp lasts days), so the
// files are checked as of the earliest of their own expiry times, i.e. that
// they were valid together once. What this proves is that Sigstore's TUF
// repository published this trusted root, not that it is still the newest.
func (c *CarriedRoot) Verify(tufRoot []byte) (*root.TrustedRoot, error) {
	tm, err := trustedmetadata.New(tufRoot)
	if err != nil {
		return nil, fmt.Errorf("TUF root: %w", err)
	}

	for i, raw := range c.Roots {
		r, err := metadata.Root().FromBytes(raw)
		if err != nil {
			return nil, fmt.Errorf("carried root.json %d: %w", i, err)
		}

		if r.Signed.Version <= tm.Root.Signed.Version {
			continue // older than (or) the anchor: nothing to learn
		}

		if _, err := tm.UpdateRoot(raw); err != nil {
			return nil, fmt.Errorf("carried root.json version %d: %w", r.Signed.Version, err)
		}
	}

	ts, err := metadata.Timestamp().FromBytes(c.Timestamp)
	if err != nil {
		return nil, fmt.Errorf("timestamp.json: %w", err)
	}

	sn, err := metadata.Snapshot().FromBytes(c.Snapshot)
	if err != nil {
		return nil, fmt.Errorf("snapshot.json: %w", err)
	}

	tg, err := metadata.Targets().FromBytes(c.Targets)
	if err != nil {
		return nil, fmt.Errorf("targets.json: %w", err)
	}

	tm.RefTime = slices.MinFunc([]time.Time{tm.Root.Signed.Expires, ts.Signed.Expires, sn.Signed.Expires, tg.Signed.Expires},
		func(a, b time.Time) int { return a.Compare(b) })

	if _, err := tm.UpdateTimestamp(c.Timestamp); err != nil {
		return nil, fmt.Errorf("timestamp.json: %w", err)
	}

	if _, err := tm.UpdateSnapshot(c.Snapshot, false); err != nil {
		return nil, fmt.Errorf("snapshot.json: %w", err)
	}

	targets, err := tm.UpdateTargets(c.Targets)
	if err != nil {
		return nil, fmt.Errorf("targets.json: %w", err)
	}

	tf, ok := targets.Signed.Targets[TrustedRootTarget]
	if !ok {
		return nil, fmt.Errorf("targets.json (version %d) does not list %s", targets.Signed.Version, TrustedRootTarget)
	}

	if err := tf.VerifyLengthHashes(c.TrustedRoot); err != nil {
		return nil, fmt.Errorf("%s is not the one targets.json (version %d) names: %w", TrustedRootTarget, targets.Signed.Version, err)
	}

	tr, err := root.NewTrustedRootFromJSON(c.TrustedRoot)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", TrustedRootTarget, err)
	}

	return tr, nil
}

// Describe says what the carried root is, for logs and messages.
func (c *CarriedRoot) Describe() string {
	ver := "?"
	if ts, err := metadata.Timestamp().FromBytes(c.Timestamp); err == nil {
		ver = fmt.Sprint(ts.Signed.Version)
	}

	return fmt.Sprintf("trusted_root.json sha256:%s from TUF repository %s (timestamp version %s)", c.TrustedRootDigest(), c.Repository, ver)
}

// TUFOptions say where FetchTrustedRoot fetches from.
type TUFOptions struct {
	// URL of the TUF repository; PublicGoodTUFURL when empty.
	URL string
	// Root is the repository's root.json the client starts from (its trust
	// anchor); PublicGoodTUFRoot when nil.
	Root []byte
	// Client makes the requests; http.DefaultClient when nil.
	Client *http.Client
}

// FetchTrustedRoot fetches trusted_root.json through TUF (sigstore-go's
// client, which verifies every file from the trust anchor on), keeps every
// metadata file it fetched, and checks the result with Verify. It writes
// nothing to disk (no TUF cache).
func FetchTrustedRoot(ctx context.Context, o TUFOptions) (*CarriedRoot, error) {
	if o.URL == "" {
		o.URL = PublicGoodTUFURL
	}

	if o.Root == nil {
		o.Root = PublicGoodTUFRoot()
	}

	if o.Client == nil {
		o.Client = http.DefaultClient
	}

	base := strings.TrimSuffix(o.URL, "/")
	rec := &recordingFetcher{ctx: ctx, client: o.Client, metaPrefix: base + "/", targetsPrefix: base + "/targets/", files: map[string][]byte{}}

	opts := tuf.DefaultOptions().WithRoot(o.Root).WithRepositoryBaseURL(base).WithDisableLocalCache().WithFetcher(rec).WithContext(ctx)
	opts.CachePath = ""

	client, err := tuf.New(opts)
	if err != nil {
		return nil, fmt.Errorf("TUF repository %s: %w", base, err)
	}

	trusted, err := client.GetTarget(TrustedRootTarget)
	if err != nil {
		return nil, fmt.Errorf("TUF repository %s: %w", base, err)
	}

	c := &CarriedRoot{TrustedRoot: trusted, Repository: base}

	type versioned struct {
		v   int64
		raw []byte
	}

	var roots []versioned

	for name, b := range rec.snapshot() {
		var probe struct {
			Signed struct {
				Type    string `json:"_type"`
				Version int64  `json:"version"`
			} `json:"signed"`
		}
		if err := json.Unmarshal(b, &probe); err != nil {
			return nil, fmt.Errorf("TUF repository %s: %s: %w", base, name, err)
		}

		switch probe.Signed.Type {
		case metadata.ROOT:
			roots = append(roots, versioned{probe.Signed.Version, b})
		case metadata.TIMESTAMP:
			c.Timestamp = b
		case metadata.SNAPSHOT:
			c.Snapshot = b
		case metadata.TARGETS:
			if strings.HasSuffix(name, ".targets.json") || strings.HasSuffix(name, "/targets.json") {
				c.Targets = b
			}
		}
	}

	slices.SortFunc(roots, func(a, b versioned) int { return int(a.v - b.v) })

	for _, r := range roots {
		c.Roots = append(c.Roots, r.raw)
	}

	// The anchor itself goes first, so the far side can start from an
	// older anchor only if it has the same one; Verify skips what it knows.
	c.Roots = append([][]byte{o.Root}, c.Roots...)

	if _, err := c.Verify(o.Root); err != nil {
		return nil, fmt.Errorf("TUF repository %s: what was fetched does not verify: %w", base, err)
	}

	return c, nil
}

// recordingFetcher downloads with ctx and keeps every metadata file fetched.
type recordingFetcher struct {
	ctx                       context.Context
	client                    *http.Client
	metaPrefix, targetsPrefix string

	mu    sync.Mutex
	files map[string][]byte
}

func (f *recordingFetcher) DownloadFile(u string, maxLength int64, _ time.Duration) ([]byte, error) {
	if maxLength <= 0 || maxLength > maxTUFFile {
		maxLength = maxTUFFile
	}

	req, err := http.NewRequestWithContext(f.ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}

	res, err := f.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()

	if res.StatusCode != http.StatusOK {
		return nil, &metadata.ErrDownloadHTTP{StatusCode: res.StatusCode, URL: u}
	}

	b, err := io.ReadAll(io.LimitReader(res.Body, maxLength+1))
	if err != nil {
		return nil, err
	}

	if int64(len(b)) > maxLength {
		return nil, &metadata.ErrDownloadLengthMismatch{Msg: fmt.Sprintf("%s is larger than %d bytes", u, maxLength)}
	}

	if strings.HasPrefix(u, f.metaPrefix) && !strings.HasPrefix(u, f.targetsPrefix) {
		f.mu.Lock()
		f.files[u] = b
		f.mu.Unlock()
	}

	return b, nil
}

func (f *recordingFetcher) snapshot() map[string][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()

	return maps.Clone(f.files)
}
