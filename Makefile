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

.PHONY: all build run generate check-generate k8s-images check-k8s-images lint fmt vet staticcheck buf-lint \
        test deps test-debs unit integration factory-client e2e bench fuzz diff-factory tools e2e-tools registry-process e2e-debs compare-talosctl compare-talos-uki clean \
        bench-imager bench-debs

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

# release/kubernetes_table.go: the cluster images of every Talos version,
# derived from each version's machinery and talos modules on the Go module
# proxy (hack/k8s-images). `go test ./hack/k8s-images` (make unit) checks it
# is current; this rewrites it.
k8s-images:
	$(GO) run ./hack/k8s-images -o release/kubernetes_table.go

check-k8s-images:
	$(GO) run ./hack/k8s-images -check release/kubernetes_table.go

## Lint.
lint: fmt vet staticcheck buf-lint

fmt:
	@out="$$(gofmt -l $$(git ls-files '*.go'))"; \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...
	cd hack/installer-oracle && $(GO) vet ./...
	cd hack/factory-oracle && $(GO) vet ./...
	cd hack/factory-client && $(GO) vet ./...
	cd hack/machineconfig-check && $(GO) vet ./...
	$(GO) vet -tags 'integration e2e cosigncli talosctl' ./...

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
#   xfsprogs                               the GRUB BOOT XFS partition (xfs_repair, xfs_db, mkfs.xfs)
#   grub-common (grub-fstest)              GRUB's own XFS driver reading BOOT
#   binutils (objdump, objcopy)            UKI PE sections
#   kmod (depmod, modprobe), attr          modules.* files compared with depmod's; the boot fixture's rootfs
#   systemd-boot-efi, busybox-static       parts of the boot fixture
#   curl                                   the integration suite runs the README's curl examples
#   grub-pc-bin, grub-efi-amd64-bin        GRUB 2.06's i386-pc and x86_64-efi trees and grub-mkimage,
#                                          what builder/grub's images are compared with; with
#                                          grub-common's grub-mkrescue, builder/iso's dual-boot ISO
#   strace                                 downloads are proven to go out with sendfile(2)
TEST_DEBS := cpio squashfs-tools zstd xz-utils xorriso genisoimage gdisk fdisk util-linux dosfstools mtools \
	e2fsprogs xfsprogs grub-common binutils kmod attr systemd-boot-efi busybox-static curl grub-pc-bin grub-efi-amd64-bin \
	strace
# make e2e adds a real registry process, skopeo, containerd (ctr pulls the installer, as a node's
# containerd does), QEMU with OVMF and iPXE ROMs.
E2E_DEBS := $(TEST_DEBS) docker-registry skopeo containerd qemu-system-x86 ovmf ipxe-qemu
E2E_KERNEL := $(CURDIR)/_e2e/kernel
E2E_IPXE   := $(CURDIR)/_e2e/ipxe-trixie
E2E_SDBOOT := $(CURDIR)/_e2e/sdboot-trixie

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

# GRUB as Talos releases ship it (2.12 up to Talos 1.12, 2.14 since) beside
# Debian 12's 2.06: Debian 13's and unstable's grub-pc-bin, grub-efi-amd64-bin,
# grub-efi-arm64-bin and grub-mkimage with the libraries it runs with (through
# their own ld.so), and Debian 12's arm64-efi tree, for builder/grub's
# byte-for-byte comparison with grub-mkimage. One directory per suite under
# _e2e/grub, from an apt configuration of its own; nothing on the machine
# changes. Unstable moves: the test reads each tree's version from its
# modinfo.sh.
E2E_GRUB ?= $(CURDIR)/_e2e/grub
# Debian 13's mtools, xfsprogs 6.13 and squashfs-tools 4.6.1 (unpacked, not
# installed): the bench's imager shims (Debian 12's mksquashfs lacks the
# -xattrs-exclude the imager passes for an extension), and the e2e's
# xfs_repair/xfs_db for Talos 1.13's lts_6.18 XFS (Debian 12's 6.1 refuses
# its exchange bit).
BENCH_TRIXIE  := $(CURDIR)/_e2e/imager-trixie
E2E_GRUB_APT = -o Dir::Etc::SourceList=$(E2E_GRUB)/apt/sources.list -o Dir::Etc::SourceParts=/dev/null \
	-o Dir::State::Lists=$(E2E_GRUB)/apt/lists -o Dir::Cache=$(E2E_GRUB)/apt/cache -o APT::Sandbox::User=root \
	-o APT::Architectures::=amd64 -o APT::Architectures::=arm64

$(E2E_GRUB)/.done:
	rm -rf $(E2E_GRUB) && mkdir -p $(E2E_GRUB)/apt/lists/partial $(E2E_GRUB)/apt/cache/archives/partial
	mirror=$$(apt-get indextargets --format '$$(REPO_URI) $$(CODENAME)' 'Created-By: Packages' 2>/dev/null | \
		awk '$$1 ~ /\/debian\/$$/ && $$2 !~ /-/ {print $$1; exit}'); \
	for suite in bookworm trixie sid; do \
		echo "deb [arch=amd64,arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $${mirror:-http://deb.debian.org/debian/} $$suite main"; \
	done >$(E2E_GRUB)/apt/sources.list
	apt-get $(E2E_GRUB_APT) -qq update
	mkdir -p $(E2E_GRUB)/bookworm && cd $(E2E_GRUB)/bookworm && \
		apt-get $(E2E_GRUB_APT) -qq download grub-efi-arm64-bin:arm64/bookworm && \
		for d in *.deb; do dpkg -x $$d root || exit 1; done && rm -f *.deb
	for suite in trixie sid; do \
		mkdir -p $(E2E_GRUB)/$$suite && cd $(E2E_GRUB)/$$suite && \
		apt-get $(E2E_GRUB_APT) -qq download grub-common/$$suite grub2-common/$$suite grub-pc-bin/$$suite \
			grub-efi-amd64-bin/$$suite grub-efi-arm64-bin:arm64/$$suite libc6/$$suite libdevmapper1.02.1/$$suite \
			liblzma5/$$suite libselinux1/$$suite libudev1/$$suite libpcre2-8-0/$$suite libcap2/$$suite && \
		for d in *.deb; do dpkg -x $$d root || exit 1; done && rm -f *.deb || exit 1; \
	done
	rm -rf $(E2E_GRUB)/apt
	touch $@

# Everything the unit tests read with that is not Go: the only step of
# make test that needs root and Debian's archive.
deps: test-debs $(E2E_KERNEL)/.done $(E2E_GRUB)/.done

# Debian 13 (trixie) packages beside the machine's Debian 12 ones, for the
# boot tests: $(call trixie-debs,DIR,PACKAGES) fetches PACKAGES through an apt
# configuration of its own under DIR (trixie's index from the mirror apt
# already uses), unpacks them into DIR/root and drops the index again;
# nothing on the machine changes.
trixie-apt = -o Dir::Etc::SourceList=$(1)/apt/sources.list -o Dir::Etc::SourceParts=/dev/null \
	-o Dir::State::Lists=$(1)/apt/lists -o Dir::Cache=$(1)/apt/cache -o APT::Sandbox::User=root

define trixie-debs
rm -rf $(1) && mkdir -p $(1)/apt/lists/partial $(1)/apt/cache/archives/partial
mirror=$$(apt-get indextargets --format '$$(REPO_URI) $$(CODENAME)' 'Created-By: Packages' 2>/dev/null | \
	awk '$$1 ~ /\/debian\/$$/ && $$2 !~ /-/ {print $$1; exit}'); \
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $${mirror:-http://deb.debian.org/debian/} trixie main" \
	>$(1)/apt/sources.list
apt-get $(call trixie-apt,$(1)) -qq update
cd $(1) && apt-get $(call trixie-apt,$(1)) -qq download $(addsuffix /trixie,$(2)) && \
	for d in *.deb; do dpkg -x $$d root || exit 1; done && rm -f *.deb
rm -rf $(1)/apt
touch $(1)/.done
endef

# Debian 13's iPXE 1.21.1 beside the machine's 2019 build, for the PXE boot
# test: ipxe-qemu's BIOS ROMs, and ipxe's ipxe-amd64.efi, as trixie's EFI ROMs
# carry no iPXE (its NEWS: UEFI machines chain-load ipxe.efi).
$(E2E_IPXE)/.done:
	$(call trixie-debs,$(E2E_IPXE),ipxe-qemu ipxe)

# Debian 13's systemd-boot and systemd-stub 257 (Debian 12 has 252), which
# honour UKI .profile sections: the multi-profile UKI boot test.
$(E2E_SDBOOT)/.done:
	$(call trixie-debs,$(E2E_SDBOOT),systemd-boot-efi)

tools: $(BUF) $(GRPCURL)

# The public factory's own schematic code (image-factory's pkg/schematic)
# behind a JSON-lines pipe, for schematic/factorydiff_test.go. It is its own
# module so that the factory's code gets the factory's dependency versions:
# built inside kiln's module, minimal version selection would give both sides
# kiln's YAML library and hide what the test is for. See hack/factory-oracle/go.mod.
FACTORY_ORACLE := $(TOOLS)/factory-oracle

$(FACTORY_ORACLE): hack/factory-oracle/main.go hack/factory-oracle/go.mod hack/factory-oracle/go.sum
	cd hack/factory-oracle && $(GO) build -o $(FACTORY_ORACLE) .

e2e-tools: tools $(CRANE) $(COSIGN) e2e-debs $(E2E_KERNEL)/.done $(E2E_IPXE)/.done $(E2E_GRUB)/.done $(E2E_SDBOOT)/.done $(BENCH_TRIXIE)/.done

# Talos's own installer-layer code (pkg/imager/filemap) for
# builder/installer's differential test; its own module for Talos's
# dependency versions (hack/installer-oracle/go.mod).
INSTALLER_ORACLE := $(TOOLS)/installer-oracle

$(INSTALLER_ORACLE): hack/installer-oracle/main.go hack/installer-oracle/go.mod hack/installer-oracle/go.sum
	cd hack/installer-oracle && $(GO) build -o $(INSTALLER_ORACLE) .

# The tests find it there (testfixture.InstallerOracle); e2e's
# TestInstallerBefore110 too.
unit e2e: $(INSTALLER_ORACLE)

## Tests.
test: deps tools check-generate lint unit integration factory-client

# The builder's tests read what it writes with Debian's tools (TEST_DEBS) and
# the fixture kernel, which make deps installs; under make a missing one fails
# the test naming it (KILN_REQUIRE_FIXTURES=1), a plain go test skips it.
unit: $(FACTORY_ORACLE)
	KILN_REQUIRE_FIXTURES=1 KILN_E2E_KERNEL=$(E2E_KERNEL) KILN_FACTORY_ORACLE=$(FACTORY_ORACLE) KILN_GRUB_VERSIONS=$(E2E_GRUB) $(GO) test -race -count=1 -timeout 12m ./...

# The real binary on a real port, driven by curl-like HTTP, grpcurl and a gRPC client.
integration: build $(GRPCURL)
	KILN_BIN=$(KILN) GRPCURL=$(GRPCURL) $(GO) test -tags integration -count=1 -v ./e2e/...

# The calls of Sidero's air-gap plan, Omni and the bare-metal provider, made
# with the factory's own Go client (pkg/client) against the real binary; its
# own module for the factory's dependency versions (hack/factory-client/go.mod).
factory-client: build
	cd hack/factory-client && KILN_REQUIRE_FIXTURES=1 KILN_BIN=$(KILN) $(GO) test -count=1 -timeout 10m -v ./...

E2E_ENV = KILN_BIN=$(KILN) GRPCURL=$(GRPCURL) CRANE=$(CRANE) COSIGN=$(COSIGN) DOCKER_REGISTRY=$$(command -v docker-registry) \
	KILN_E2E_KERNEL=$(E2E_KERNEL) KILN_E2E_IPXE=$(E2E_IPXE)/root KILN_GRUB_VERSIONS=$(E2E_GRUB) \
	KILN_E2E_SDBOOT=$(E2E_SDBOOT)/root/usr/lib/systemd/boot/efi KILN_XFS_TRIXIE=$(BENCH_TRIXIE)/root

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

# Talos's own UKI builder (internal/pkg/uki, what pkg/imager buildUKI runs),
# for the section-by-section comparison in builder/uki/talos_test.go; by hand
# like talosctl-cache. The talos module's zip lacks pkg/machinery, which its
# go.mod replaces with ./pkg/machinery: filled from the machinery module.
TALOS_UKI     := $(TOOLS)/talos-uki
TALOS_UKI_SRC := $(CURDIR)/_tools/talos-uki-src

$(TALOS_UKI): hack/talos-uki/main.go.txt
	rm -rf $(TALOS_UKI_SRC) && mkdir -p $(dir $(TALOS_UKI_SRC))
	dir() { $(GO) mod download -json "$$1" | sed -n 's/.*"Dir": "\(.*\)",/\1/p'; } && \
		cp -r "$$(dir github.com/siderolabs/talos@$(TALOS_VERSION))" $(TALOS_UKI_SRC) && chmod -R u+w $(TALOS_UKI_SRC) && \
		cp -r "$$(dir github.com/siderolabs/talos/pkg/machinery@$(TALOS_VERSION))" $(TALOS_UKI_SRC)/pkg/machinery && \
		chmod -R u+w $(TALOS_UKI_SRC)/pkg/machinery
	mkdir -p $(TALOS_UKI_SRC)/cmd/talos-uki && cp hack/talos-uki/main.go.txt $(TALOS_UKI_SRC)/cmd/talos-uki/main.go
	cd $(TALOS_UKI_SRC) && GOWORK=off $(GO) build -o $(TALOS_UKI) ./cmd/talos-uki

compare-talos-uki: $(TALOS_UKI) $(E2E_SDBOOT)/.done $(E2E_KERNEL)/.done
	KILN_REQUIRE_FIXTURES=1 TALOS_UKI=$(TALOS_UKI) $(E2E_ENV) $(GO) test -tags talos -count=1 -v -run Talos ./builder/uki/

# The image cache benchmark compares with crane and skopeo, from Debian's registry.
bench: $(CRANE) e2e-debs bench-imager
	DOCKER_REGISTRY=$$(command -v docker-registry) CRANE=$(CRANE) $(GO) test -run '^$$' -bench . -benchmem ./...

# kiln's builder side by side with Talos's own imager (pkg/imager v1.13.9)
# on the same input files, and kiln's warm downloads against Debian's nginx
# serving the same file (issue 17): paired rounds, the table and every
# measurement under _bench/results. By hand; BENCH_ARGS passes flags
# (-only iso,raw -rounds 7 -profile=false). The driver (hack/imager-bench)
# is kiln's module; Talos's imager (hack/imager-bench/talos) its own, with
# Talos's dependency versions. The imager runs Debian 12's xorriso,
# dosfstools, GRUB, zstd and xz, and Debian 13's mtools 4.0.48 and mkfs.xfs
# 6.13 through shims the bench writes (Debian 12's mtools cannot write the
# imager's small ESPs, its mkfs.xfs lacks -p file=); nginx and the Debian 13
# tools are unpacked under _e2e, not installed; perf profiles kiln.
BENCH_DIR     := $(CURDIR)/_bench
IMAGER_BENCH  := $(BENCH_DIR)/bin/imager-bench
TALOS_IMAGER  := $(BENCH_DIR)/bin/talos-imager
BENCH_NGINX   := $(CURDIR)/_e2e/nginx
BENCH_DEBS    := $(TEST_DEBS) linux-perf time

$(TALOS_IMAGER): hack/imager-bench/talos/main.go hack/imager-bench/talos/go.mod hack/imager-bench/talos/go.sum
	cd hack/imager-bench/talos && GOWORK=off $(GO) build -o $(TALOS_IMAGER) .

$(BENCH_TRIXIE)/.done:
	$(call trixie-debs,$(BENCH_TRIXIE),mtools xfsprogs squashfs-tools libc6 libblkid1 libuuid1 libinih1 liburcu8t64 liblz4-1 liblzo2-2 libzstd1 zlib1g liblzma5)

# Debian 12's nginx, unpacked like the kernel: installing it would start a
# system nginx on port 80.
$(BENCH_NGINX)/.done:
	rm -rf $(BENCH_NGINX) && mkdir -p $(BENCH_NGINX)
	cd $(BENCH_NGINX) && apt-get download nginx && dpkg -x nginx_*.deb root && rm -f nginx_*.deb
	touch $@

bench-debs:
	$(call install-debs,$(BENCH_DEBS))

bench-imager: build $(TALOS_IMAGER) bench-debs $(E2E_KERNEL)/.done $(BENCH_TRIXIE)/.done $(BENCH_NGINX)/.done
	$(GO) build -o $(IMAGER_BENCH) ./hack/imager-bench
	$(IMAGER_BENCH) -kiln $(KILN) -kiln-version $(VERSION) -talos-imager $(TALOS_IMAGER) -kernel-dir $(E2E_KERNEL) \
		-trixie $(BENCH_TRIXIE)/root -nginx $(BENCH_NGINX)/root/usr/sbin/nginx -out $(BENCH_DIR) $(BENCH_ARGS)

# Fuzz each parser for FUZZTIME (default 2m); new crashers land in testdata/fuzz.
FUZZTIME ?= 2m
fuzz: diff-factory
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./schematic/
	$(GO) test -run '^$$' -fuzz '^FuzzSchematicTextBound$$' -fuzztime $(FUZZTIME) ./server/
	$(GO) test -run '^$$' -fuzz '^FuzzParsePolicy$$' -fuzztime $(FUZZTIME) ./signing/
	$(GO) test -run '^$$' -fuzz '^FuzzParseSigner$$' -fuzztime $(FUZZTIME) ./signing/
	$(GO) test -run '^$$' -fuzz '^FuzzOverlayFromImage$$' -fuzztime $(FUZZTIME) ./builder/installer/
	$(GO) test -run '^$$' -fuzz '^FuzzCarriedRoot$$' -fuzztime $(FUZZTIME) ./signing/
	$(GO) test -run '^$$' -fuzz '^FuzzSignedIdentity$$' -fuzztime $(FUZZTIME) ./signing/
	$(GO) test -run '^$$' -fuzz '^FuzzReader$$' -fuzztime $(FUZZTIME) ./builder/cpio/
	$(GO) test -run '^$$' -fuzz '^FuzzReader$$' -fuzztime $(FUZZTIME) ./internal/squashfs/
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./internal/checksums/
	$(GO) test -run '^$$' -fuzz '^FuzzReadModule$$' -fuzztime $(FUZZTIME) ./internal/depmod/
	$(GO) test -run '^$$' -fuzz '^FuzzHandler$$' -fuzztime $(FUZZTIME) ./imagecache/
	$(GO) test -run '^$$' -fuzz '^FuzzKubernetesImages$$' -fuzztime $(FUZZTIME) ./release/
	$(GO) test -run '^$$' -fuzz '^FuzzWrite$$' -fuzztime $(FUZZTIME) ./builder/xfs/
	$(GO) test -run '^$$' -fuzz '^FuzzKernel$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 100x ./builder/grub/
	$(GO) test -run '^$$' -fuzz '^FuzzModDep$$' -fuzztime $(FUZZTIME) ./builder/grub/
	$(GO) test -run '^$$' -fuzz '^FuzzGenerate$$' -fuzztime $(FUZZTIME) ./machineconfig/

# kiln's machine-config patches (machineconfig) read by each Talos version's
# own machinery: hack/machineconfig-check built once per version from the Go
# module proxy (about 40 s each on 2 cores, 8 min in all), then the patches of
# every variant applied onto that version's gen config, validated strictly.
# The newest patch of each minor, and both sides of each version where the
# patch changes shape (registry documents in 1.12.0-beta.0, a readable TLS
# document in 1.12.2, ImageVerificationConfig in 1.13.0-beta.0,
# UnattendedInstallConfig in 1.14.0). make unit checks 1.10-1.13 with kiln's
# own machinery (v1.13.9).
MACHINECONFIG_VERSIONS := v1.10.0 v1.10.9 v1.11.6 v1.12.0-alpha.2 v1.12.0 v1.12.2 v1.12.7 \
	v1.13.0-alpha.2 v1.13.0 v1.13.9 v1.14.0-alpha.2 v1.14.1
MACHINECONFIG_CHECK := $(CURDIR)/_tools/machineconfig-check

.PHONY: check-machineconfig
check-machineconfig:
	hack/machineconfig-check/build.sh $(MACHINECONFIG_CHECK) $(MACHINECONFIG_VERSIONS)
	KILN_MACHINECONFIG_CHECK=$(MACHINECONFIG_CHECK) $(GO) test -count=1 -v -run 'TestMachineryVersions' ./machineconfig/

# kiln against the public factory's own code: the same ID or the same
# refusal for every body (make diff-factory FUZZTIME=10m).
diff-factory: $(FACTORY_ORACLE)
	KILN_FACTORY_ORACLE=$(FACTORY_ORACLE) $(GO) test -run '^$$' -fuzz '^FuzzFactoryDiff$$' -fuzztime $(FUZZTIME) ./schematic/

clean:
	rm -rf $(BIN) _tools tools/node_modules
