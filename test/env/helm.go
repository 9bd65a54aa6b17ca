package env

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/kube"
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
// with vals, as `helm install --kubeconfig kubeconfig` does; Helm's own
// timeout is what is left of ctx. warn, when not nil, receives the API
// server's warnings. uninstall removes the release, within its ctx.
func HelmInstall(ctx context.Context, kubeconfig string, ch *chart.Chart, releaseName, namespace string, vals map[string]any, warn rest.WarningHandler) (rel *release.Release, uninstall func(context.Context) error, err error) {
	cfg, err := HelmConfig(kubeconfig, namespace, warn)
	if err != nil {
		return nil, nil, err
	}
	inst := action.NewInstall(cfg)
	inst.ReleaseName, inst.Namespace = releaseName, namespace
	inst.Timeout = helmTimeout(ctx)
	if rel, err = inst.RunWithContext(ctx, ch, vals); err != nil {
		return nil, nil, fmt.Errorf("helm install %s: %w", releaseName, err)
	}
	uninstall = func(ctx context.Context) error {
		_, err := HelmUninstall(ctx, kubeconfig, releaseName, namespace, nil)
		return err
	}
	return rel, uninstall, nil
}

// helmTimeout is what is left of ctx, for Helm's actions that take a
// timeout rather than a context; without a deadline, a day (no limit in
// practice).
func helmTimeout(ctx context.Context) time.Duration {
	if d, ok := ctx.Deadline(); ok {
		return max(time.Until(d), time.Millisecond)
	}
	return 24 * time.Hour
}

// HelmUpgrade upgrades the release releaseName in namespace to ch with vals
// (not reusing the release's values), as `helm upgrade --kubeconfig
// kubeconfig` does, and with wait as `helm upgrade --wait` does: it returns
// once Helm finds every resource of the release ready (a Deployment: its
// new ReplicaSet's pods). Helm's own timeout is what is left of ctx. warn,
// when not nil, receives the API server's warnings.
func HelmUpgrade(ctx context.Context, kubeconfig string, ch *chart.Chart, releaseName, namespace string, vals map[string]any, wait bool, warn rest.WarningHandler) (*release.Release, error) {
	cfg, err := HelmConfig(kubeconfig, namespace, warn)
	if err != nil {
		return nil, err
	}
	up := action.NewUpgrade(cfg)
	up.Namespace = namespace
	up.Wait = wait
	up.Timeout = helmTimeout(ctx)
	rel, err := up.RunWithContext(ctx, releaseName, ch, vals)
	if err != nil {
		return nil, fmt.Errorf("helm upgrade %s: %w", releaseName, err)
	}
	return rel, nil
}

// HelmUninstall uninstalls the release releaseName from namespace as `helm
// uninstall --kubeconfig kubeconfig` does: its pre-delete hooks, then its
// resources in Helm's uninstall order, then its post-delete hooks, and its
// history purged. Helm's own timeout is what is left of ctx. logf, when not
// nil, receives Helm's debug lines (`helm uninstall --debug`: each
// "Starting delete for ..." in the order Helm issues them).
func HelmUninstall(ctx context.Context, kubeconfig, releaseName, namespace string, logf func(format string, args ...any)) (*release.UninstallReleaseResponse, error) {
	cfg, err := HelmConfig(kubeconfig, namespace, nil)
	if err != nil {
		return nil, err
	}
	if logf != nil {
		cfg.Log = logf
		if kc, ok := cfg.KubeClient.(*kube.Client); ok {
			kc.Log = logf
		}
	}
	un := action.NewUninstall(cfg)
	un.Timeout = helmTimeout(ctx)
	res, err := un.Run(releaseName)
	if err != nil {
		return nil, fmt.Errorf("helm uninstall %s: %w", releaseName, err)
	}
	return res, nil
}
