package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// FindAssets returns the folder that holds etcd, kube-apiserver and
// kube-controller-manager: dir if given, else $KUBEBUILDER_ASSETS, else the
// folder hack/build-assets.sh fills at the repository root.
func FindAssets(dir string) (string, error) {
	if dir == "" {
		dir = os.Getenv("KUBEBUILDER_ASSETS")
	}
	if dir == "" {
		root, err := RepoRoot()
		if err != nil {
			return "", err
		}
		dir = filepath.Join(root, ".cache", "assets", "k8s-"+KubeVersion)
	}
	var missing []string
	for _, bin := range []string{"etcd", "kube-apiserver", "kube-controller-manager"} {
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
