package mirror

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kiln-dev/kiln/release"
)

// Annotations on the descriptors of index.json in a layout or archive.
const (
	// AnnotationRefName is the OCI standard annotation; kiln sets it to
	// "<mirror path>:<tag>" on tagged manifests.
	AnnotationRefName = "org.opencontainers.image.ref.name"
	// AnnotationRepository is set on every descriptor kiln writes to
	// index.json: the mirror path of its repository.
	AnnotationRepository = "dev.kiln.mirror.repository"
)

// maxManifestSize bounds manifests read into memory.
const maxManifestSize = 4 << 20

// blobBackend stores the content-addressed files of a layout: blobs and index.json.
type blobBackend interface {
	has(d v1.Hash) (bool, error)
	// open opens a blob; an error wrapping ErrNotFound if missing. The caller closes it.
	open(d v1.Hash) (io.ReadCloser, error)
	// write stores a blob read from r, checking digest and size; on error nothing is visible.
	write(d v1.Hash, size int64, r io.Reader) error
	// readIndex returns index.json, nil if there is none yet.
	readIndex() ([]byte, error)
	// commit makes index.json (and every blob written) visible.
	commit(index []byte) error
	Close() error
}

// layoutStore is an OCI image layout over a blobBackend: the repository and
// tag of each root manifest are recorded as annotations in index.json.
type layoutStore struct {
	be blobBackend

	mu    sync.Mutex
	index v1.IndexManifest
	dirty bool

	refOnce sync.Once
	refs    map[string][]v1.Descriptor // "<repo>@<subject digest>" → referrers
	refErr  error
}

var (
	_ source      = (*layoutStore)(nil)
	_ destination = (*layoutStore)(nil)
)

func newLayoutStore(be blobBackend) (*layoutStore, error) {
	s := &layoutStore{be: be, index: v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}}

	raw, err := be.readIndex()
	if err != nil {
		return nil, err
	}

	if raw != nil {
		if err := json.Unmarshal(raw, &s.index); err != nil {
			return nil, fmt.Errorf("index.json: %w", err)
		}
	}

	return s, nil
}

func entryRepo(d v1.Descriptor) string {
	if r := d.Annotations[AnnotationRepository]; r != "" {
		return r
	}
	// A layout written by another tool: "<repo>:<tag>" in ref.name.
	if ref := d.Annotations[AnnotationRefName]; ref != "" {
		if t, err := name.NewTag("kiln.invalid/"+ref, name.StrictValidation); err == nil {
			return t.RepositoryStr()
		}
	}

	return ""
}

func (s *layoutStore) readManifest(d v1.Hash, mt types.MediaType) (manifestData, error) {
	rc, err := s.be.open(d)
	if err != nil {
		return manifestData{}, err
	}
	defer rc.Close()

	raw, err := io.ReadAll(io.LimitReader(rc, maxManifestSize+1))
	if err != nil {
		return manifestData{}, fmt.Errorf("manifest %s: %w", d, err)
	}

	if len(raw) > maxManifestSize {
		return manifestData{}, fmt.Errorf("manifest %s: larger than %d bytes", d, maxManifestSize)
	}

	if got, _, _ := v1.SHA256(bytes.NewReader(raw)); got != d {
		return manifestData{}, fmt.Errorf("manifest %s: content has digest %s", d, got)
	}

	if mt == "" {
		var probe struct {
			MediaType types.MediaType `json:"mediaType"`
		}
		if err := json.Unmarshal(raw, &probe); err != nil {
			return manifestData{}, fmt.Errorf("manifest %s: %w", d, err)
		}

		mt = probe.MediaType
	}

	return manifestData{Raw: raw, MediaType: mt, Digest: d}, nil
}

func (s *layoutStore) manifest(_ context.Context, repo, ref string) (manifestData, error) {
	s.mu.Lock()
	entries := append([]v1.Descriptor(nil), s.index.Manifests...)
	s.mu.Unlock()

	if strings.HasPrefix(ref, "sha256:") {
		d, err := v1.NewHash(ref)
		if err != nil {
			return manifestData{}, err
		}

		var mt types.MediaType
		for _, e := range entries {
			if e.Digest == d {
				mt = e.MediaType
			}
		}

		m, err := s.readManifest(d, mt)
		if err != nil {
			return manifestData{}, fmt.Errorf("%s@%s: %w", repo, ref, err)
		}

		return m, nil
	}

	for _, e := range entries {
		if e.Annotations[AnnotationRefName] == repo+":"+ref {
			m, err := s.readManifest(e.Digest, e.MediaType)
			if err != nil {
				return manifestData{}, fmt.Errorf("%s:%s: %w", repo, ref, err)
			}

			return m, nil
		}
	}

	return manifestData{}, fmt.Errorf("%s:%s: %w", repo, ref, ErrNotFound)
}

func (s *layoutStore) blob(_ context.Context, repo string, d v1.Hash) (io.ReadCloser, error) {
	rc, err := s.be.open(d)
	if err != nil {
		return nil, fmt.Errorf("blob %s@%s: %w", repo, d, err)
	}

	return rc, nil
}

// referrers finds root manifests whose subject is repo@d, reading each root
// manifest once.
func (s *layoutStore) referrers(_ context.Context, repo string, d v1.Hash) ([]v1.Descriptor, error) {
	s.refOnce.Do(func() {
		s.mu.Lock()
		entries := append([]v1.Descriptor(nil), s.index.Manifests...)
		s.mu.Unlock()

		s.refs = map[string][]v1.Descriptor{}
		seen := map[string]bool{}

		for _, e := range entries {
			r := entryRepo(e)
			if seen[r+"@"+e.Digest.String()] {
				continue
			}

			seen[r+"@"+e.Digest.String()] = true

			m, err := s.readManifest(e.Digest, e.MediaType)
			if err != nil {
				s.refErr = err
				return
			}

			var probe struct {
				ArtifactType string            `json:"artifactType"`
				Annotations  map[string]string `json:"annotations"`
				Subject      *v1.Descriptor    `json:"subject"`
				Config       struct {
					MediaType string `json:"mediaType"`
				} `json:"config"`
			}
			if json.Unmarshal(m.Raw, &probe) != nil || probe.Subject == nil {
				continue
			}

			desc := m.descriptor()
			desc.Annotations = probe.Annotations
			desc.ArtifactType = probe.ArtifactType
			if desc.ArtifactType == "" {
				desc.ArtifactType = probe.Config.MediaType
			}

			k := r + "@" + probe.Subject.Digest.String()
			s.refs[k] = append(s.refs[k], desc)
		}
	})

	if s.refErr != nil {
		return nil, fmt.Errorf("referrers of %s@%s: %w", repo, d, s.refErr)
	}

	return s.refs[repo+"@"+d.String()], nil
}

func (*layoutStore) reference(string, v1.Hash) (name.Digest, bool) { return name.Digest{}, false }

func (s *layoutStore) hasBlob(_ context.Context, _ string, d v1.Hash) (bool, error) {
	return s.be.has(d)
}

func (s *layoutStore) putBlob(ctx context.Context, repo string, desc v1.Descriptor, open opener) error {
	if err := ctx.Err(); err != nil {
		return err
	}

	rc, err := open()
	if err != nil {
		return err
	}
	defer rc.Close()

	if err := s.be.write(desc.Digest, desc.Size, rc); err != nil {
		return fmt.Errorf("blob %s@%s: %w", repo, desc.Digest, err)
	}

	return nil
}

func (s *layoutStore) hasManifest(_ context.Context, _ string, d v1.Hash) (bool, error) {
	return s.be.has(d)
}

func (s *layoutStore) putManifest(ctx context.Context, repo string, m manifestData, tag string, root bool) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}

	ok, err := s.be.has(m.Digest)
	if err != nil {
		return false, err
	}

	wrote := false

	if !ok {
		if err := s.be.write(m.Digest, int64(len(m.Raw)), bytes.NewReader(m.Raw)); err != nil {
			return false, fmt.Errorf("manifest %s@%s: %w", repo, m.Digest, err)
		}

		wrote = true
	}

	if !root && tag == "" {
		return wrote, nil
	}

	s.mu.Lock()
	defer s.mu.Unlock()

	desc := m.descriptor()
	desc.Annotations = map[string]string{AnnotationRepository: repo}

	if tag != "" {
		desc.Annotations[AnnotationRefName] = repo + ":" + tag
	}

	if s.addEntry(desc) {
		wrote = true
	}

	return wrote, nil
}

// addEntry records desc in index.json: one entry per repo:tag (a moved tag
// replaces its entry) and, for untagged roots, one per repo@digest unless
// the digest is already tagged in that repo. It reports whether index.json
// changed. Callers hold s.mu.
func (s *layoutStore) addEntry(desc v1.Descriptor) bool {
	repo := desc.Annotations[AnnotationRepository]
	ref := desc.Annotations[AnnotationRefName]

	out := s.index.Manifests[:0]
	found := false

	for _, e := range s.index.Manifests {
		eref := e.Annotations[AnnotationRefName]

		switch {
		case ref != "" && eref == ref:
			if e.Digest == desc.Digest && e.MediaType == desc.MediaType && entryRepo(e) == repo {
				found = true
			} else {
				s.dirty = true

				continue // the tag moved
			}
		case entryRepo(e) == repo && e.Digest == desc.Digest:
			if ref == "" {
				found = true // already recorded, tagged or not
			} else if eref == "" {
				s.dirty = true

				continue // untagged entry superseded by the tag
			}
		}

		out = append(out, e)
	}

	changed := len(out) != len(s.index.Manifests)
	s.index.Manifests = out

	if !found {
		s.index.Manifests = append(s.index.Manifests, desc)
		s.dirty = true
		changed = true
	}

	return changed
}

func (s *layoutStore) commit(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}

	s.mu.Lock()
	defer s.mu.Unlock()

	raw, err := json.MarshalIndent(s.index, "", "  ")
	if err != nil {
		return err
	}

	if !s.dirty {
		raw = nil // nothing new: the backend may keep what it has
	}

	if err := s.be.commit(raw); err != nil {
		return err
	}

	s.dirty = false

	return nil
}

func (s *layoutStore) Close() error { return s.be.Close() }

// errShortBlob reports a blob whose stream is not of its descriptor size.
var errShortBlob = errors.New("blob size differs from its descriptor")

// TaggedImages lists the upstream references ("ghcr.io/siderolabs/imager:v1.13.0",
// "registry.k8s.io/pause:3.10") of the tagged images a layout or archive
// holds, as kiln mirror --to records them in index.json, sorted: a
// Selection.Images that copies them again. Signature tags are left out
// (they travel with their images), and so is the trusted root
// (ReadTrustedRoot reads it).
func TaggedImages(ctx context.Context, ep Endpoint) ([]string, error) {
	switch ep.(type) {
	case Layout, Archive:
	default:
		return nil, fmt.Errorf("%s: tagged images are listed in OCI layouts and archives only", ep)
	}

	src, err := ep.openSource(ctx)
	if err != nil {
		return nil, err
	}
	defer src.Close()

	s, ok := src.(*layoutStore)
	if !ok {
		return nil, fmt.Errorf("%s: not an OCI layout", ep)
	}

	s.mu.Lock()
	entries := slices.Clone(s.index.Manifests)
	s.mu.Unlock()

	var refs []string

	for _, e := range entries {
		pathTag := e.Annotations[AnnotationRefName]

		i := strings.LastIndex(pathTag, ":")
		if i <= 0 || strings.HasPrefix(pathTag[i+1:], "sha256-") || pathTag[:i] == TrustedRootRepository {
			continue
		}

		refs = append(refs, release.UpstreamPath(pathTag[:i])+":"+pathTag[i+1:])
	}

	slices.Sort(refs)

	return slices.Compact(refs), nil
}
