#!/usr/bin/env bash
# Builds promtool, Prometheus' rule checker and rule unit-test runner, from the
# Go module proxy at the version test/tools/prometheus/go.mod pins, into the
# per-user cache, only when it is missing. test/integration/alerts runs it on
# the chart's PrometheusRule. Prints the binary's path on stdout.
#
#   hack/build-promtool.sh
#
# NODECSR_CACHE defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/nodecsr, as for
# hack/build-assets.sh; the binary is $NODECSR_CACHE/assets/promtool-$VERSION/promtool.
#
# The service-discovery plugins are left out (build tag remove_all_sd): they
# only serve `promtool check config` and `promtool check service-discovery`,
# and the cloud SDKs they pull in would double the build time. Rule checking
# and rule unit tests are the same code as in a release build.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
mod=$root/test/tools/prometheus
# The version comes from the tools module, so that the go.mod is the one pin.
version=$(awk '$1 == "github.com/prometheus/prometheus" { print $2 } $1 == "require" && $2 == "github.com/prometheus/prometheus" { print $3 }' "$mod/go.mod")
if [ -z "$version" ]; then
	echo "cannot find github.com/prometheus/prometheus in $mod/go.mod" >&2
	exit 1
fi
cache=${NODECSR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nodecsr}
dir=$cache/assets/promtool-$version
bin=$dir/promtool

if [ ! -x "$bin" ]; then
	mkdir -p "$dir"
	# The Go module's v0.316.0 is Prometheus 3.16.0, its v0.54.1 Prometheus 2.54.1.
	minor=${version#v0.}; minor=${minor%%.*}
	patch=${version##*.}
	if [ "$minor" -ge 300 ]; then release=$((minor / 100)).$((minor % 100)).$patch; else release=2.$minor.$patch; fi
	echo ">> building promtool $release (github.com/prometheus/prometheus $version) into $dir" >&2
	start=$SECONDS
	tmp=$(mktemp "$dir/promtool.XXXXXX")
	trap 'rm -f "$tmp"' EXIT
	(cd "$mod" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -tags remove_all_sd \
		-ldflags "-s -w -X github.com/prometheus/common/version.Version=$release -X github.com/prometheus/common/version.Branch=$version" \
		-o "$tmp" github.com/prometheus/prometheus/cmd/promtool)
	chmod 0755 "$tmp"
	mv "$tmp" "$bin"
	trap - EXIT
	echo ">> built promtool in $((SECONDS - start))s" >&2
fi

echo "$bin"
