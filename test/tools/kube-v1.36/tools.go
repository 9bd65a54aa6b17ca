//go:build tools

// Package tools pins the kubelet v1.36.3 that the compatibility run (make compat) builds
// from source: a kubelet older than the control plane (test/tools/kube) but still
// inside the upstream version-skew policy.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kubelet"
)
