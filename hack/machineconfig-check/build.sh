#!/usr/bin/env bash
# build.sh OUTDIR VERSION...: builds machineconfig-check once per Talos
# version, each against that version's own machinery module from the Go module
# proxy, as OUTDIR/machineconfig-check-<version>. A binary newer than this
# directory's sources is kept.
#
# Each build is this main.go in a fresh module that requires only that
# machinery version, so every other dependency is at the version that
# machinery itself requires (go get on the committed go.mod would keep the
# pinned version's newer ones, which older machinery does not build with). A few
# machinery versions require a dependency version the proxy does not serve;
# replace.txt names, per version, the nearest served version used instead
# (they are libraries the config code does not decode with: the COSI runtime,
# netlink).
set -euo pipefail

out=$1
shift
src=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"

for v in "$@"; do
	bin="$out/machineconfig-check-$v"
	if [ -x "$bin" ] && [ -z "$(find "$src" -newer "$bin" -type f)" ]; then
		continue
	fi

	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	cp "$src/main.go" "$tmp/"
	printf 'module github.com/kiln-dev/kiln/hack/machineconfig-check\n\ngo 1.26.6\n' >"$tmp/go.mod"
	(cd "$tmp" && go mod edit -require "github.com/siderolabs/talos/pkg/machinery@$v")

	while read -r version replacement; do
		if [ "$version" = "$v" ]; then
			(cd "$tmp" && go mod edit -replace "$replacement")
		fi
	done < <(grep -v '^#' "$src/replace.txt" | grep -v '^$')

	echo "machineconfig-check: building with machinery $v" >&2
	(cd "$tmp" && GOFLAGS=-mod=mod go build -o "$bin.tmp" . && mv "$bin.tmp" "$bin")
	rm -rf "$tmp"
	trap - EXIT
done
