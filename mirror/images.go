package mirror

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kiln-dev/kiln/release"
)

// The grammar of the distribution spec (distribution/reference).
var (
	repoPathRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$`)
	tagRE      = regexp.MustCompile(`^\w[\w.-]{0,127}$`)
)

// maxImageListLine bounds one line of an image list; a reference is at most
// a few hundred bytes.
const maxImageListLine = 4096

// NormalizeImage reads an image reference as docker does ("nginx" is
// docker.io/library/nginx:latest) and writes it back whole:
// "<host>/<path>[:<tag>][@sha256:<hex>]", with docker.io (not
// index.docker.io) for Docker Hub. A reference with a digest keeps a tag
// only when one is written; one without gets "latest".
func NormalizeImage(s string) (string, error) {
	if s == "" {
		return "", errors.New("empty image reference")
	}

	if i := strings.IndexFunc(s, func(r rune) bool { return r <= ' ' || r == 0x7f }); i >= 0 {
		return "", fmt.Errorf("image reference %q: whitespace or a control character at byte %d", s, i)
	}

	tagged, digest, hasDigest := strings.Cut(s, "@")

	ref, err := name.ParseReference(tagged)
	if err != nil {
		return "", fmt.Errorf("image reference %q: %w", s, err)
	}

	// go-containerregistry checks only the characters; a registry checks
	// the grammar, too late to name the line.
	if !repoPathRE.MatchString(ref.Context().RepositoryStr()) {
		return "", fmt.Errorf("image reference %q: repository %q: each path component must be lower-case letters and digits separated by '.', '_', '__' or '-'",
			s, ref.Context().RepositoryStr())
	}

	if t, ok := ref.(name.Tag); ok && !tagRE.MatchString(t.TagStr()) {
		return "", fmt.Errorf("image reference %q: tag %q: want a letter, digit or '_' then up to 127 of those, '.' and '-'", s, t.TagStr())
	}

	out := upstreamName(ref.Context())

	tag, hasTag := "", false
	if t, ok := ref.(name.Tag); ok {
		// ParseReference makes every tagless name "latest"; with a digest
		// only a tag written in the reference is kept.
		hasTag = !hasDigest || strings.Contains(tagged[strings.LastIndex(tagged, "/")+1:], ":")
		tag = t.TagStr()
	}

	if hasTag {
		out += ":" + tag
	}

	if hasDigest {
		h, err := v1.NewHash(digest)
		if err != nil || h.Algorithm != "sha256" || len(h.Hex) != 64 || strings.ToLower(h.Hex) != h.Hex {
			return "", fmt.Errorf("image reference %q: digest %q is not sha256:<64 lower-case hex digits>", s, digest)
		}

		out += "@" + h.String()
	}

	return out, nil
}

// upstreamName is repo's full name with Docker Hub as docker.io, the name
// users write and release.MirrorPath keeps.
func upstreamName(repo name.Repository) string {
	host := repo.RegistryStr()
	if host == name.DefaultRegistry {
		host = "docker.io"
	}

	return host + "/" + repo.RepositoryStr()
}

// ImageMirrorPath is where an image reference lives in a mirror
// (release.MirrorPath): "docker.io/library/nginx", "registry.k8s.io/etcd",
// and a ghcr.io repository without its host.
func ImageMirrorPath(ref string) (string, error) {
	tagged, _, _ := strings.Cut(ref, "@")

	r, err := name.ParseReference(tagged)
	if err != nil {
		return "", fmt.Errorf("image reference %q: %w", ref, err)
	}

	path := release.MirrorPath(r.Context())

	// The host becomes the first element of a repository path, where a
	// port's ':' is not allowed.
	if !repoPathRE.MatchString(path) {
		return "", fmt.Errorf("image reference %q: its mirror path %q is no repository name (a registry with a port cannot be mirrored under its host)", ref, path)
	}

	return path, nil
}

// ReadImageList reads a list of image references, one per line: blank
// lines and everything from a '#' on are ignored. Every line is checked
// (NormalizeImage) before anything is returned, so a bad line is an error
// naming file and line number before anything is copied. The references
// come back normalized, each once, in the order first given.
func ReadImageList(r io.Reader, file string) ([]string, error) {
	var (
		out  []string
		errs []error
		seen = map[string]bool{}
	)

	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 1024), maxImageListLine)

	n := 0
	for sc.Scan() {
		n++

		line, _, _ := strings.Cut(sc.Text(), "#") // '#' is in no reference
		if line = strings.TrimSpace(line); line == "" {
			continue
		}

		ref, err := NormalizeImage(line)
		if err == nil {
			_, err = ImageMirrorPath(ref)
		}

		if err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: %w", file, n, err))
			continue
		}

		if !seen[ref] {
			seen[ref] = true
			out = append(out, ref)
		}
	}

	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			err = fmt.Errorf("a line longer than %d bytes", maxImageListLine)
		}

		errs = append(errs, fmt.Errorf("%s:%d: %w", file, n+1, err))
	}

	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	return out, nil
}
