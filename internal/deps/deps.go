//go:build tools

// Package deps keeps the modules the project is about to use pinned in go.mod.
package deps

import (
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/spf13/cobra"
	_ "k8s.io/api/certificates/v1"
	_ "k8s.io/apimachinery/pkg/util/validation"
	_ "k8s.io/client-go/kubernetes"
	_ "k8s.io/client-go/util/certificate/csr"
	_ "k8s.io/client-go/util/keyutil"
	_ "k8s.io/cluster-bootstrap/token/api"
	_ "sigs.k8s.io/controller-runtime"
	_ "sigs.k8s.io/controller-runtime/pkg/envtest"
	_ "sigs.k8s.io/yaml"
)
