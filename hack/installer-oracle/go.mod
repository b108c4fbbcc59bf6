// Talos's own installer-layer code (pkg/imager/filemap of the Talos module
// at the version kiln's machinery is pinned to), with Talos's dependency
// versions: its own module so that minimal version selection does not give
// it kiln's go-containerregistry. See main.go.
module github.com/kiln-dev/kiln/hack/installer-oracle

go 1.26.6

require github.com/siderolabs/talos v1.13.9

require (
	github.com/google/go-containerregistry v0.21.6 // indirect
	github.com/klauspost/compress v1.18.7 // indirect
	github.com/opencontainers/go-digest v1.0.0 // indirect
	github.com/opencontainers/image-spec v1.1.1 // indirect
)
