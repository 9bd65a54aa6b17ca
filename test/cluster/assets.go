package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// FindAssets returns the folder that holds etcd, kube-apiserver,
// kube-controller-manager and kubelet: dir if given, else $KUBEBUILDER_ASSETS,
// else the per-user folder hack/build-assets.sh fills (AssetsCacheDir).
func FindAssets(dir string) (string, error) {
	if dir == "" {
		dir = os.Getenv("KUBEBUILDER_ASSETS")
	}
	if dir == "" {
		cache, err := AssetsCacheDir()
		if err != nil {
			return "", err
		}
		dir = filepath.Join(cache, "k8s-"+KubeVersion)
	}
	var missing []string
	for _, bin := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kubelet"} {
		if fi, err := os.Stat(filepath.Join(dir, bin)); err != nil || fi.Mode()&0o111 == 0 {
			missing = append(missing, bin)
		}
	}
	if len(missing) > 0 {
		return "", fmt.Errorf("control-plane binaries missing in %s: %s; run `make assets` (builds them from the Go module proxy) or set KUBEBUILDER_ASSETS",
			dir, strings.Join(missing, ", "))
	}
	return dir, nil
}

// AssetsCacheDir is where hack/build-assets.sh keeps the binaries of each
// Kubernetes version, shared by every clone of the repository on the machine:
// $NODECSR_CACHE/assets, NODECSR_CACHE defaulting to
// ${XDG_CACHE_HOME:-$HOME/.cache}/nodecsr.
func AssetsCacheDir() (string, error) {
	cache := os.Getenv("NODECSR_CACHE")
	if cache == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			return "", fmt.Errorf("no cache folder for the control-plane binaries (set NODECSR_CACHE): %w", err)
		}
		cache = filepath.Join(base, "nodecsr")
	}
	return filepath.Join(cache, "assets"), nil
}

// RepoRoot walks up from the working directory to the folder whose go.mod
// declares the nodecsr module.
func RepoRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.HasPrefix(string(data), "module github.com/nodecsr/nodecsr\n") {
			return dir, nil
		}
		if parent := filepath.Dir(dir); parent == dir {
			return "", fmt.Errorf("no nodecsr go.mod above %s", wd)
		}
	}
}
