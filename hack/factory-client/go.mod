// The public factory's Go client (pkg/client, what Omni and the Omni
// bare-metal provider embed) driving the real kiln binary: its own module so
// that the client and its schematic code build with the factory's dependency
// versions, not kiln's. The pins are hack/factory-oracle's (see its go.mod):
// image-factory v1.4.0 is the newest source the module proxy serves, and
// yaml/v4 rc.6 gives the IDs v1.5.0 gives.
module github.com/kiln-dev/kiln/hack/factory-client

go 1.26.5

require (
	github.com/google/go-containerregistry v0.22.1
	github.com/siderolabs/image-factory v1.4.0
)

require (
	github.com/docker/cli v29.7.2+incompatible // indirect
	github.com/docker/docker-credential-helpers v0.9.8 // indirect
	github.com/klauspost/compress v1.19.2 // indirect
	github.com/opencontainers/go-digest v1.0.0 // indirect
	github.com/opencontainers/image-spec v1.1.1 // indirect
	github.com/siderolabs/gen v0.8.7 // indirect
	github.com/siderolabs/talos/pkg/machinery v1.14.0-alpha.1 // indirect
	github.com/sirupsen/logrus v1.9.4 // indirect
	go.yaml.in/yaml/v4 v4.0.0-rc.6 // indirect
	golang.org/x/sync v0.22.0 // indirect
	golang.org/x/sys v0.47.0 // indirect
	gotest.tools/v3 v3.5.2 // indirect
)
