package chart_test

import (
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/release"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nodecsr/nodecsr/internal/testutil"
	"github.com/nodecsr/nodecsr/test/cluster"
	"github.com/nodecsr/nodecsr/test/env"
)

func chartDir(t testing.TB) string { return env.ChartDir(repoRoot(t)) }

func loadChart(t testing.TB) *chart.Chart {
	t.Helper()
	ch, err := env.LoadChart(repoRoot(t))
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// readValues parses values YAML the way `helm install -f` does.
func readValues(t testing.TB, data string) map[string]any {
	t.Helper()
	v, err := chartutil.ReadValues([]byte(data))
	if err != nil {
		t.Fatalf("bad test values: %v", err)
	}
	return v.AsMap()
}

func readValuesFile(t testing.TB, name string) map[string]any {
	t.Helper()
	v, err := chartutil.ReadValuesFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return v.AsMap()
}

// rendered is what `helm template` would print, decoded.
type rendered struct {
	objs  []*unstructured.Unstructured // the release's objects
	hooks []*unstructured.Unstructured // hook objects (the helm test Pod)
	notes string
}

// render renders the chart client-side with Helm's install action, as
// `helm template` does (schema validation, templates, {{ fail }}).
func render(t testing.TB, releaseName, namespace string, vals map[string]any) (*rendered, error) {
	t.Helper()
	return renderWith(t, releaseName, namespace, vals, func(inst *action.Install) {
		inst.KubeVersion = &chartutil.KubeVersion{Version: cluster.KubeVersion, Major: "1", Minor: "37"}
	})
}

// renderWith renders as render does, with the install action changed by
// set (nil: Helm's offline defaults, as `helm template` without
// --kube-version).
func renderWith(t testing.TB, releaseName, namespace string, vals map[string]any, set func(*action.Install)) (*rendered, error) {
	t.Helper()
	inst := action.NewInstall(&action.Configuration{Log: func(string, ...any) {}})
	inst.DryRun, inst.ClientOnly, inst.Replace = true, true, true
	inst.ReleaseName, inst.Namespace = releaseName, namespace
	if set != nil {
		set(inst)
	}
	rel, err := inst.Run(loadChart(t), vals)
	if err != nil {
		return nil, err
	}
	r := &rendered{objs: decodeManifests(t, rel.Manifest), notes: rel.Info.Notes}
	for _, h := range rel.Hooks {
		r.hooks = append(r.hooks, decodeManifests(t, h.Manifest)...)
	}
	return r, nil
}

func mustRender(t testing.TB, releaseName, namespace string, vals map[string]any) *rendered {
	t.Helper()
	r, err := render(t, releaseName, namespace, vals)
	if err != nil {
		t.Fatalf("the chart does not render: %v", err)
	}
	return r
}

// install installs the chart as releaseName into namespace (which must
// exist) as the admin and uninstalls it when the test ends.
func install(t *testing.T, releaseName, namespace string, vals map[string]any, w *testutil.Warnings) *release.Release {
	t.Helper()
	var warn rest.WarningHandler
	if w != nil {
		warn = w
	}
	ctx, cancel := testutil.Context(t)
	defer cancel()
	// The releases of the package share the cluster's NodeCertificate CRD,
	// which TestMain installs: a CRD can belong to one release only.
	crds, _ := vals["crds"].(map[string]any)
	if _, set := crds["enabled"]; !set {
		crds = maps.Clone(crds)
		if crds == nil {
			crds = map[string]any{}
		}
		crds["enabled"] = false
		vals = maps.Clone(vals)
		if vals == nil {
			vals = map[string]any{}
		}
		vals["crds"] = crds
	}
	rel, uninstall, err := env.HelmInstall(ctx, tc.AdminKubeconfig(), loadChart(t), releaseName, namespace, vals, warn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := testutil.CleanupContext(t)
		defer cancel()
		if err := uninstall(ctx); err != nil {
			t.Error(err)
		}
	})
	return rel
}

// getLive reads each object back from the API server.
func getLive(ctx context.Context, t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	for _, o := range objs {
		live := &unstructured.Unstructured{}
		live.SetGroupVersionKind(o.GroupVersionKind())
		key := client.ObjectKeyFromObject(o)
		if err := kclient.Get(ctx, key, live); err != nil {
			t.Errorf("%s %s was not created: %v", o.GetKind(), key, err)
		}
	}
}

func describe(o *unstructured.Unstructured) string {
	if o.GetNamespace() == "" {
		return fmt.Sprintf("%s/%s", o.GetKind(), o.GetName())
	}
	return fmt.Sprintf("%s/%s/%s", o.GetKind(), o.GetNamespace(), o.GetName())
}

func kinds(objs []*unstructured.Unstructured) []string {
	var out []string
	for _, o := range objs {
		out = append(out, describe(o))
	}
	return out
}

func podSecurityWarnings(w *testutil.Warnings) []string {
	var out []string
	for _, s := range w.All() {
		if strings.Contains(s, "PodSecurity") {
			out = append(out, s)
		}
	}
	return out
}
