#!/usr/bin/env bash
# Builds one kubelet release from the Go module proxy into the per-user cache,
# only when it is missing, and prints the binary's path on stdout.
#
#   hack/build-kubelet.sh VERSION      e.g. v1.34.4
#
# The binary goes to $NODECSR_CACHE/assets/kubelet-VERSION/kubelet
# (NODECSR_CACHE defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/nodecsr). VERSION must
# be pinned by one tools module under test/tools/ (kube-vX.Y for the older
# kubelets `make compat` runs, kube for the control plane's release); each replaces
# every staging module k8s.io/kubernetes replaces with the matching published
# version. The build is niced (it takes minutes and the machine is shared) and uses
# the same flags as hack/build-assets.sh.
set -euo pipefail

if [ $# -ne 1 ] || ! [[ $1 =~ ^v([0-9]+)\.([0-9]+)\.([0-9]+)$ ]]; then
	echo "usage: $0 vMAJOR.MINOR.PATCH" >&2
	exit 2
fi
version=$1 major=${BASH_REMATCH[1]} minor=${BASH_REMATCH[2]}

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${NODECSR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nodecsr}
dir=$cache/assets/kubelet-$version
bin=$dir/kubelet

if [ -x "$bin" ]; then
	echo "$bin"
	exit 0
fi

# The tools module whose go.mod requires exactly this k8s.io/kubernetes.
mod=
for f in "$root"/test/tools/kube*/go.mod; do
	if grep -Eq "^(require)?[[:space:]]*k8s\.io/kubernetes $version([[:space:]]|$)" "$f"; then
		mod=$(dirname "$f")
		break
	fi
done
if [ -z "$mod" ]; then
	echo "no tools module under test/tools/ requires k8s.io/kubernetes $version" >&2
	exit 1
fi

mkdir -p "$dir"
# A temporary folder next to the binary: go build will not overwrite a file that
# is not an object file, and mv within one file system is atomic, so concurrent
# runs never see a half-written kubelet.
tmp=$(mktemp -d "$dir/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

export GOFLAGS=-mod=mod
export CGO_ENABLED=0
vpkg=k8s.io/component-base/version
ldflags="-s -w -X $vpkg.gitVersion=$version -X $vpkg.gitMajor=$major -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=1970-01-01T00:00:00Z"

echo ">> building kubelet $version (${mod#"$root"/}) into $dir" >&2
start=$SECONDS
(cd "$mod" && nice -n 19 go build -trimpath -ldflags "$ldflags" -o "$tmp/kubelet" k8s.io/kubernetes/cmd/kubelet)
got=$("$tmp/kubelet" --version)
if [ "$got" != "Kubernetes $version" ]; then
	echo "built kubelet reports \"$got\", want \"Kubernetes $version\"" >&2
	exit 1
fi
mv "$tmp/kubelet" "$bin"
echo ">> built kubelet $version in $((SECONDS - start))s" >&2

echo "$bin"
