package cluster

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
)

// BuildBinaries builds nodecsr's commands (by default both, or the given
// ./cmd/... packages) into dir, as the suites, the demo and the benchmarks
// run them: the real binaries, as a node agent or a pod would.
func BuildBinaries(ctx context.Context, dir string, pkgs ...string) error {
	root, err := RepoRoot()
	if err != nil {
		return err
	}
	if len(pkgs) == 0 {
		pkgs = []string{"./cmd/nodecsr-controller", "./cmd/nodecsr-request"}
	}
	cmd := exec.CommandContext(ctx, "go", append([]string{"build", "-o", dir + string(filepath.Separator)}, pkgs...)...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %v: %w\n%s", pkgs, err, out)
	}
	return nil
}
