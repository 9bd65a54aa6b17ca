package env

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/release"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/rest"
)

// ChartDir is the directory of the nodecsr chart in the repository at root.
func ChartDir(root string) string { return filepath.Join(root, "charts", "nodecsr") }

// LoadChart loads the nodecsr chart of the repository at root.
func LoadChart(root string) (*chart.Chart, error) {
	ch, err := loader.Load(ChartDir(root))
	if err != nil {
		return nil, fmt.Errorf("failed to load the chart: %w", err)
	}
	return ch, nil
}

// HelmConfig is Helm's action configuration for namespace, talking to the
// API server through the kubeconfig file (as the helm CLI does), with
// Secrets as the release storage. warn, when not nil, receives the API
// server's warnings.
func HelmConfig(kubeconfig, namespace string, warn rest.WarningHandler) (*action.Configuration, error) {
	flags := genericclioptions.NewConfigFlags(false)
	flags.KubeConfig = &kubeconfig
	flags.Namespace = &namespace
	flags.WrapConfigFn = func(c *rest.Config) *rest.Config {
		if warn != nil {
			c.WarningHandler = warn
		}
		return c
	}
	cfg := new(action.Configuration)
	if err := cfg.Init(flags, namespace, "secret", func(string, ...any) {}); err != nil {
		return nil, fmt.Errorf("failed to initialise Helm: %w", err)
	}
	return cfg, nil
}

// HelmInstall installs ch as releaseName into namespace (which must exist)
// with vals, as `helm install --kubeconfig kubeconfig` does. warn, when not
// nil, receives the API server's warnings. uninstall removes the release.
func HelmInstall(kubeconfig string, ch *chart.Chart, releaseName, namespace string, vals map[string]any, warn rest.WarningHandler) (rel *release.Release, uninstall func() error, err error) {
	cfg, err := HelmConfig(kubeconfig, namespace, warn)
	if err != nil {
		return nil, nil, err
	}
	inst := action.NewInstall(cfg)
	inst.ReleaseName, inst.Namespace = releaseName, namespace
	inst.Timeout = 2 * time.Minute
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if rel, err = inst.RunWithContext(ctx, ch, vals); err != nil {
		return nil, nil, fmt.Errorf("helm install %s: %w", releaseName, err)
	}
	uninstall = func() error {
		cfg, err := HelmConfig(kubeconfig, namespace, nil)
		if err != nil {
			return err
		}
		un := action.NewUninstall(cfg)
		un.Timeout = time.Minute
		if _, err := un.Run(releaseName); err != nil {
			return fmt.Errorf("helm uninstall %s: %w", releaseName, err)
		}
		return nil
	}
	return rel, uninstall, nil
}
