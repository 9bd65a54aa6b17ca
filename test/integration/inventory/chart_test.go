package inventory_test

import (
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nodecsrv1alpha1 "github.com/nodecsr/nodecsr/api/v1alpha1"
	"github.com/nodecsr/nodecsr/internal/testutil"
	"github.com/nodecsr/nodecsr/test/env"
)

// TestChartKeepsTheInventoryOnUninstall: the suite's CRD is the chart's
// (crds.enabled, crds.keep by default); helm uninstall leaves it and the
// entries; installing the release again adopts it.
func TestChartKeepsTheInventoryOnUninstall(t *testing.T) {
	ctx, cancel := testutil.Context(t)
	defer cancel()
	crds := apiextensionsclient.NewForConfigOrDie(tc.AdminConfig()).ApiextensionsV1().CustomResourceDefinitions()
	crdOf := func() *apiextensionsv1.CustomResourceDefinition {
		t.Helper()
		crd, err := crds.Get(ctx, "nodecertificates.nodecsr.io", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return crd
	}
	crd := crdOf()
	if crd.Annotations["helm.sh/resource-policy"] != "keep" || crd.Annotations["meta.helm.sh/release-name"] != releaseName {
		t.Fatalf("the CRD is not the release's, kept: annotations %v", crd.Annotations)
	}
	name := env.UniqueName("kept")
	if err := kclient.Create(ctx, &nodecsrv1alpha1.NodeCertificate{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := testutil.CleanupContext(t)
		defer cancel()
		_ = kclient.Delete(ctx, &nodecsrv1alpha1.NodeCertificate{ObjectMeta: metav1.ObjectMeta{Name: name}})
	})

	if _, err := env.HelmUninstall(ctx, tc.AdminKubeconfig(), releaseName, releaseNamespace, nil); err != nil {
		t.Fatal(err)
	}
	if got := crdOf(); got.UID != crd.UID || got.DeletionTimestamp != nil {
		t.Fatalf("helm uninstall deleted the CRD (uid %s → %s, deletion %v)", crd.UID, got.UID, got.DeletionTimestamp)
	}
	if err := kclient.Get(ctx, client.ObjectKey{Name: name}, &nodecsrv1alpha1.NodeCertificate{}); err != nil {
		t.Fatalf("the entry did not survive helm uninstall: %v", err)
	}
	if err := installRelease(ctx); err != nil {
		t.Fatalf("installing the release again does not adopt the kept CRD: %v", err)
	}
	if got := crdOf(); got.UID != crd.UID {
		t.Fatalf("the reinstall replaced the CRD (uid %s → %s)", crd.UID, got.UID)
	}
}
