//go:build tools

// Package tools pins the control-plane binaries the test harness builds from source:
// kube-apiserver, kube-controller-manager and kubelet of one Kubernetes release.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
