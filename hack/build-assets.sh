#!/usr/bin/env bash
# Builds the control-plane binaries the tests run (etcd, kube-apiserver,
# kube-controller-manager, kubelet) from the Go module proxy into a per-user
# cache folder keyed by version, only when they are missing, so that every clone
# on a machine shares one build. Prints the folder on stdout.
#
#   hack/build-assets.sh [DIR]     DIR defaults to $NODECSR_CACHE/assets/k8s-$KUBE_VERSION
#
# NODECSR_CACHE defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/nodecsr; `make clean`
# leaves it alone, `make clean-cache` removes it. When KUBEBUILDER_ASSETS is set
# and holds all four binaries, those are used and nothing is built.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
KUBE_VERSION=${KUBE_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
cache=${NODECSR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nodecsr}
dir=${1:-$cache/assets/k8s-$KUBE_VERSION}

have_all() {
	[ -x "$1/etcd" ] && [ -x "$1/kube-apiserver" ] && [ -x "$1/kube-controller-manager" ] && [ -x "$1/kubelet" ]
}

if [ -n "${KUBEBUILDER_ASSETS:-}" ]; then
	if have_all "$KUBEBUILDER_ASSETS"; then
		echo "$KUBEBUILDER_ASSETS"
		exit 0
	fi
	echo "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks etcd, kube-apiserver, kube-controller-manager or kubelet" >&2
	exit 1
fi

mkdir -p "$dir"
# Every module the tools need comes from the proxy at the versions go.sum pins.
export GOFLAGS=-mod=mod
export CGO_ENABLED=0

build() { # build NAME MODULE_DIR PACKAGE LDFLAGS
	local name=$1 mod=$2 pkg=$3 ldflags=$4
	[ -x "$dir/$name" ] && return 0
	echo ">> building $name ($pkg) into $dir" >&2
	local start=$SECONDS
	# A private temp folder, then an atomic rename: two clones building at
	# once never see or overwrite a half-written binary.
	local tmp
	tmp=$(mktemp -d "$dir/.build-$name.XXXXXX")
	trap 'rm -rf "$tmp"' RETURN
	(cd "$root/test/tools/$mod" && go build -trimpath -ldflags "$ldflags" -o "$tmp/$name" "$pkg")
	mv -f "$tmp/$name" "$dir/$name"
	echo ">> built $name in $((SECONDS - start))s" >&2
}

major=${KUBE_VERSION#v}; major=${major%%.*}
minor=${KUBE_VERSION#v*.}; minor=${minor%%.*}
vpkg=k8s.io/component-base/version
kube_ldflags="-s -w -X $vpkg.gitVersion=$KUBE_VERSION -X $vpkg.gitMajor=$major -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=1970-01-01T00:00:00Z"

build etcd etcd go.etcd.io/etcd/server/v3 "-s -w"
build kube-apiserver kube k8s.io/kubernetes/cmd/kube-apiserver "$kube_ldflags"
build kube-controller-manager kube k8s.io/kubernetes/cmd/kube-controller-manager "$kube_ldflags"
build kubelet kube k8s.io/kubernetes/cmd/kubelet "$kube_ldflags"

echo "$dir"
