package chart_test

import (
	"slices"
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	nodecsrv1alpha1 "github.com/nodecsr/nodecsr/api/v1alpha1"
)

// inventoryCRD is the name of the NodeCertificate CRD.
const inventoryCRD = "nodecertificates.nodecsr.io"

// TestRenderInventory: the NodeCertificate CRD (crds.enabled, crds.keep),
// the inventory's flags, RBAC, alert and NOTES, and inventory.enabled=false.
func TestRenderInventory(t *testing.T) {
	const ns = "nodecsr-system"
	var embedded map[string]any
	if err := yaml.Unmarshal(nodecsrv1alpha1.CRDYAML, &embedded); err != nil {
		t.Fatal(err)
	}

	r := mustRender(t, "nodecsr", ns, readValues(t, "prometheusRule: {enabled: true}"))
	crd := find(t, r.objs, "CustomResourceDefinition", inventoryCRD)
	// The chart's copy is api/v1alpha1's, which the inventory suite
	// round-trips through a real API server.
	if !equality.Semantic.DeepEqual(crd.Object["spec"], embedded["spec"]) {
		t.Errorf("the chart's CRD spec differs from api/v1alpha1/nodecertificates.yaml:\n%s\nwant:\n%s", toYAML(crd.Object["spec"]), toYAML(embedded["spec"]))
	}
	if got := crd.GetAnnotations()["helm.sh/resource-policy"]; got != "keep" {
		t.Errorf("crds.keep defaults to true but the CRD's helm.sh/resource-policy is %q", got)
	}
	l := crd.GetLabels()
	if l["app.kubernetes.io/name"] != "nodecsr" || l["app.kubernetes.io/managed-by"] != "Helm" || l["app.kubernetes.io/part-of"] != "nodecsr" {
		t.Errorf("CRD labels %v", l)
	}
	if _, ok := l["app.kubernetes.io/instance"]; ok {
		t.Errorf("a kept CRD outlives its release but carries the instance label: %v", l)
	}
	opts, fs := parseArgs(t, deploymentOf(t, r.objs, "nodecsr"))
	if !opts.Inventory {
		t.Error("--inventory is off by default")
	}
	assertFlag(t, fs, "inventory-interval", "10s")
	assertFlag(t, fs, "inventory-unregistered-grace", "24h0m0s")
	if !strings.Contains(r.notes, "kubectl get nodecertificates") {
		t.Errorf("NOTES.txt has no kubectl get nodecertificates:\n%s", r.notes)
	}
	if !strings.Contains(prometheusRules(t, r), "alert: NodecsrNodeCertificateRotationOverdue") {
		t.Error("no NodecsrNodeCertificateRotationOverdue alert")
	}

	// crds.keep=false: uninstall deletes the CRD (and the inventory).
	r = mustRender(t, "nodecsr", ns, readValues(t, "crds: {keep: false}"))
	if _, ok := find(t, r.objs, "CustomResourceDefinition", inventoryCRD).GetAnnotations()["helm.sh/resource-policy"]; ok {
		t.Error("crds.keep=false still keeps the CRD")
	}

	// crds.enabled=false: the CRD is someone else's; the inventory still runs.
	r = mustRender(t, "nodecsr", ns, readValues(t, "crds: {enabled: false}"))
	if n := len(ofKind(r.objs, "CustomResourceDefinition")); n != 0 {
		t.Errorf("crds.enabled=false renders %d CRDs", n)
	}
	if opts, _ := parseArgs(t, deploymentOf(t, r.objs, "nodecsr")); !opts.Inventory {
		t.Error("crds.enabled=false turned the inventory off")
	}

	// inventory.enabled=false: no inventory flags, RBAC or alert.
	r = mustRender(t, "nodecsr", ns, readValues(t, "inventory: {enabled: false}\nprometheusRule: {enabled: true}"))
	opts, fs = parseArgs(t, deploymentOf(t, r.objs, "nodecsr"))
	if opts.Inventory {
		t.Error("inventory.enabled=false but --inventory is on")
	}
	if fs.Changed("inventory-interval") || fs.Changed("inventory-unregistered-grace") {
		t.Error("inventory flags without the inventory")
	}
	cr := convert[rbacv1.ClusterRole](t, find(t, r.objs, "ClusterRole", "nodecsr"))
	if want := wantClusterRules[:len(wantClusterRules)-len(wantInventoryRules)]; !equality.Semantic.DeepEqual(cr.Rules, want) {
		t.Errorf("ClusterRole rules without the inventory:\n%s\nwant exactly:\n%s", toYAML(cr.Rules), toYAML(want))
	}
	if strings.Contains(prometheusRules(t, r), "RotationOverdue") {
		t.Error("the RotationOverdue alert without the inventory")
	}
	if strings.Contains(r.notes, "nodecertificates") {
		t.Error("NOTES.txt shows nodecertificates without the inventory")
	}

	// Non-default values reach the flags.
	r = mustRender(t, "prod", "platform", readValuesFile(t, "values-nondefault.yaml"))
	_, fs = parseArgs(t, deploymentOf(t, r.objs, "csr-approver"))
	assertFlag(t, fs, "inventory-interval", "30s")
	assertFlag(t, fs, "inventory-unregistered-grace", "2h0m0s")
	if _, ok := find(t, r.objs, "CustomResourceDefinition", inventoryCRD).GetAnnotations()["helm.sh/resource-policy"]; ok {
		t.Error("values-nondefault.yaml sets crds.keep=false but the CRD is kept")
	}

	for _, bad := range []string{"inventory: {interval: soon}", "inventory: {unregisteredGrace: 1d}", "crds: {keep: yes please}", "inventory: {enabled: true, extra: 1}"} {
		if _, err := render(t, "nodecsr", ns, readValues(t, bad)); err == nil {
			t.Errorf("values %q render", bad)
		}
	}
}

// prometheusRules is the PrometheusRule's spec as YAML.
func prometheusRules(t *testing.T, r *rendered) string {
	t.Helper()
	var out []string
	for _, o := range ofKind(r.objs, "PrometheusRule") {
		spec, _, _ := unstructured.NestedMap(o.Object, "spec")
		out = append(out, toYAML(spec))
	}
	return strings.Join(slices.Clip(out), "\n")
}
