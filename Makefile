# kiln's build, in one place. `make run` serves on 127.0.0.1:8080 with ./_data;
# `make test` is what CI runs first, `make e2e` second.
SHELL := /bin/bash
export GOTOOLCHAIN := local
export GOFLAGS := -buildvcs=false

GO       ?= go
BIN      := $(CURDIR)/_bin
TOOLS    := $(CURDIR)/_tools/bin
KILN     := $(BIN)/kiln
BUF      := $(CURDIR)/tools/node_modules/.bin/buf
GRPCURL  := $(TOOLS)/grpcurl
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X github.com/kiln-dev/kiln/internal/version.tag=$(VERSION)

CRANE    := $(TOOLS)/crane
COSIGN   := $(TOOLS)/cosign

GRPCURL_VERSION := v1.9.4
CRANE_VERSION   := v0.22.1
COSIGN_VERSION  := v2.6.5

.PHONY: all build run generate check-generate lint fmt vet staticcheck buf-lint \
        test deps test-debs unit integration e2e bench fuzz tools e2e-tools registry-process e2e-debs compare-talosctl clean

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(KILN) ./cmd/kiln

run: build
	$(KILN) serve --listen 127.0.0.1:8080 --data-dir ./_data --demo

## Code generation: buf from tools/package.json, plugins pinned as go.mod tools.
# npm ci installs exactly the lock and never rewrites it (npm install would,
# leaving a fresh clone dirty); it fails if package.json and the lock disagree.
$(BUF): tools/package.json tools/package-lock.json
	cd tools && npm ci --no-audit --no-fund --loglevel=error
	touch $(BUF)

generate: $(BUF)
	$(BUF) generate

# gen/ must be exactly what the protos produce: regenerate and let git judge.
check-generate: generate
	@if [ -n "$$(git status --porcelain -- gen)" ]; then \
		echo "gen/ is stale: run 'make generate' and commit the result"; \
		git status --short -- gen; git --no-pager diff --stat -- gen; exit 1; \
	fi

## Lint.
lint: fmt vet staticcheck buf-lint

fmt:
	@out="$$(gofmt -l $$(git ls-files '*.go'))"; \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...
	$(GO) vet -tags 'integration e2e' ./e2e/...

staticcheck:
	$(GO) tool staticcheck ./...

buf-lint: $(BUF)
	$(BUF) lint

## Tools the tests talk to, installed here so a clean machine needs nothing else.
$(GRPCURL):
	GOBIN=$(TOOLS) $(GO) install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)

$(CRANE):
	GOBIN=$(TOOLS) $(GO) install github.com/google/go-containerregistry/cmd/crane@$(CRANE_VERSION)

# The real cosign CLI is a test peer only (5-6 minutes to build on 2 cores).
$(COSIGN):
	GOBIN=$(TOOLS) $(GO) install github.com/sigstore/cosign/v2/cmd/cosign@$(COSIGN_VERSION)

# Debian packages the unit tests read kiln's output with (make deps installs
# them; each is the real reader of something kiln writes):
#   cpio, squashfs-tools, zstd, xz-utils   initramfs archives, extension squashfs, compressed assets
#   xorriso, genisoimage (isoinfo)         ISO9660 / El Torito images
#   gdisk (sgdisk), fdisk, util-linux      GPT disks (also blkid, losetup, mount, unshare)
#   dosfstools (fsck.vfat), mtools         the EFI system partition
#   e2fsprogs                              the IMAGECACHE ext4 partition
#   binutils (objdump, objcopy)            UKI PE sections
#   systemd-boot-efi, busybox-static       parts of the boot fixture
#   curl                                   the integration suite runs the README's curl examples
TEST_DEBS := cpio squashfs-tools zstd xz-utils xorriso genisoimage gdisk fdisk util-linux dosfstools mtools \
	e2fsprogs binutils systemd-boot-efi busybox-static curl
# make e2e adds a real registry process, skopeo and QEMU with OVMF.
E2E_DEBS := $(TEST_DEBS) docker-registry skopeo qemu-system-x86 ovmf
E2E_KERNEL := $(CURDIR)/_e2e/kernel

# apt-get install what is missing (as root, from Debian's archive); nothing
# when everything is there.
define install-debs
@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
if [ -n "$$missing" ]; then \
	echo "installing Debian packages the tests need:" $$missing; \
	if [ "$$(id -u)" != 0 ]; then echo "not root: run as root, or: sudo apt-get install" $$missing; exit 1; fi; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
fi
endef

test-debs:
	$(call install-debs,$(TEST_DEBS))

registry-process e2e-debs:
	$(call install-debs,$(E2E_DEBS))

# Debian's kernel for the boot fixture, unpacked without installing it.
$(E2E_KERNEL)/.done:
	rm -rf $(E2E_KERNEL) && mkdir -p $(E2E_KERNEL)
	cd $(CURDIR)/_e2e && K=$$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $$2; exit}'); \
		if [ -z "$$K" ]; then apt-get update -qq; K=$$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $$2; exit}'); fi; \
		apt-get download "$$K" && dpkg -x "$$K"_*.deb $(E2E_KERNEL) && rm -f "$$K"_*.deb
	touch $@

# Everything the unit tests read with that is not Go: the only step of
# make test that needs root and Debian's archive.
deps: test-debs $(E2E_KERNEL)/.done

tools: $(BUF) $(GRPCURL)

e2e-tools: tools $(CRANE) $(COSIGN) e2e-debs $(E2E_KERNEL)/.done

## Tests.
test: deps tools check-generate lint unit integration

# The builder's tests read what it writes with Debian's tools (TEST_DEBS) and
# the fixture kernel, which make deps installs; under make a missing one fails
# the test naming it (KILN_REQUIRE_FIXTURES=1), a plain go test skips it.
unit:
	KILN_REQUIRE_FIXTURES=1 KILN_E2E_KERNEL=$(E2E_KERNEL) $(GO) test -race -count=1 -timeout 12m ./...

# The real binary on a real port, driven by curl-like HTTP, grpcurl and a gRPC client.
integration: build $(GRPCURL)
	KILN_BIN=$(KILN) GRPCURL=$(GRPCURL) $(GO) test -tags integration -count=1 -v ./e2e/...

E2E_ENV = KILN_BIN=$(KILN) GRPCURL=$(GRPCURL) CRANE=$(CRANE) COSIGN=$(COSIGN) DOCKER_REGISTRY=$$(command -v docker-registry) \
	KILN_E2E_KERNEL=$(E2E_KERNEL)

e2e: build e2e-tools
	KILN_REQUIRE_FIXTURES=1 $(E2E_ENV) $(GO) test -tags 'integration e2e' -count=1 -timeout 25m -v ./e2e/...
	KILN_REQUIRE_FIXTURES=1 $(E2E_ENV) $(GO) test -tags 'integration e2e cosigncli' -count=1 -timeout 20m \
		./signing/... ./mirror/... ./imagecache/... ./builder/...

# Talos's own image-cache writer (pkg/imager/cache.Generate, what
# `talosctl images cache-create` runs), built from the Talos module for the
# file-for-file comparison in imagecache/talosctl_test.go. By hand: the full
# talosctl does not build from the module proxy (some of its modules are not
# served), and this takes minutes.
TALOS_VERSION := v1.13.9
TALOSCTL_CACHE := $(TOOLS)/talosctl-cache

$(TALOSCTL_CACHE): hack/talosctl-cache/main.go.txt
	rm -rf _tools/talos-src && mkdir -p _tools
	src=$$($(GO) mod download -json github.com/siderolabs/talos@$(TALOS_VERSION) | sed -n 's/.*"Dir": "\(.*\)",/\1/p') && \
		cp -r "$$src" _tools/talos-src && chmod -R u+w _tools/talos-src
	mkdir -p _tools/talos-src/cmd/talosctl-cache && cp hack/talosctl-cache/main.go.txt _tools/talos-src/cmd/talosctl-cache/main.go
	# The module's go.work names modules its zip does not hold.
	cd _tools/talos-src && GOWORK=off $(GO) build -o $(TALOSCTL_CACHE) ./cmd/talosctl-cache

compare-talosctl: $(TALOSCTL_CACHE) e2e-tools
	TALOSCTL=$(TALOSCTL_CACHE) $(E2E_ENV) $(GO) test -tags 'integration talosctl' -count=1 -v -run Talosctl ./imagecache/...

# The image cache benchmark compares with crane and skopeo, from Debian's registry.
bench: $(CRANE) e2e-debs
	DOCKER_REGISTRY=$$(command -v docker-registry) CRANE=$(CRANE) $(GO) test -run '^$$' -bench . -benchmem ./...

# Fuzz each parser for FUZZTIME (default 2m); new crashers land in testdata/fuzz.
FUZZTIME ?= 2m
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./schematic/
	$(GO) test -run '^$$' -fuzz '^FuzzSchematicTextBound$$' -fuzztime $(FUZZTIME) ./server/
	$(GO) test -run '^$$' -fuzz '^FuzzParsePolicy$$' -fuzztime $(FUZZTIME) ./signing/
	$(GO) test -run '^$$' -fuzz '^FuzzReader$$' -fuzztime $(FUZZTIME) ./builder/cpio/
	$(GO) test -run '^$$' -fuzz '^FuzzHandler$$' -fuzztime $(FUZZTIME) ./imagecache/

clean:
	rm -rf $(BIN) _tools tools/node_modules
