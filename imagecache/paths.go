package imagecache

import (
	"path"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Directory and file names of the flat tree (see the package doc).
const (
	blobDir      = "blob"
	manifestsDir = "manifests"
	referenceDir = "reference"
	digestDir    = "digest"
)

// treeRegistry is the directory name of an upstream registry, as talosctl's
// rewriteRegistry computes it: Docker Hub is "docker.io" unless the input
// was spelled "index.docker.io/...", and the last ":" of "host:port" becomes
// "_" with a trailing "_" ("host_port_"), so the tree fits on vfat.
func treeRegistry(registry, src string) string {
	if registry == name.DefaultRegistry && !strings.HasPrefix(src, name.DefaultRegistry+"/") {
		return "docker.io"
	}

	if i := strings.LastIndex(registry, ":"); i > 0 {
		return registry[:i] + "_" + registry[i+1:] + "_"
	}

	return registry
}

// untreeRegistry reverses treeRegistry for a directory name under manifests/
// ("host_port_" → "host:port"), as registryd does.
func untreeRegistry(dir string) string {
	parts := strings.SplitN(dir, "_", 3)
	if len(parts) < 3 {
		return dir
	}

	return parts[0] + ":" + parts[1] + parts[2]
}

// fileName is how a digest is spelled in file names: "sha256-<hex>".
func fileName(h v1.Hash) string { return h.Algorithm + "-" + h.Hex }

// repoDir is manifests/<registry>/<repo> for an upstream repository named
// in the input line src.
func repoDir(repo name.Repository, src string) string {
	return path.Join(manifestsDir, treeRegistry(repo.RegistryStr(), src), repo.RepositoryStr())
}

// referencePath is the tag file of a repository directory.
func referencePath(dir, tag string) string { return path.Join(dir, referenceDir, tag) }

// digestPath is the by-digest manifest file of a repository directory.
func digestPath(dir string, h v1.Hash) string { return path.Join(dir, digestDir, fileName(h)) }

// blobPath is the file of a config or layer blob.
func blobPath(h v1.Hash) string { return path.Join(blobDir, fileName(h)) }
