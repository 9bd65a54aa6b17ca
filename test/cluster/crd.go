package cluster

import (
	"context"
	"fmt"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	nodecsrv1alpha1 "github.com/nodecsr/nodecsr/api/v1alpha1"
)

// InstallCRD creates (or updates to) the CustomResourceDefinition in the
// YAML document and waits until it is Established or ctx ends.
func InstallCRD(ctx context.Context, cfg *rest.Config, doc []byte) error {
	crd := &apiextensionsv1.CustomResourceDefinition{}
	if err := yaml.UnmarshalStrict(doc, crd); err != nil {
		return fmt.Errorf("failed to decode the CRD: %w", err)
	}
	cs, err := apiextensionsclient.NewForConfig(cfg)
	if err != nil {
		return err
	}
	crds := cs.ApiextensionsV1().CustomResourceDefinitions()
	_, err = crds.Create(ctx, crd, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		cur, gerr := crds.Get(ctx, crd.Name, metav1.GetOptions{})
		if gerr != nil {
			return gerr
		}
		cur.Spec = crd.Spec
		_, err = crds.Update(ctx, cur, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("failed to install CRD %s: %w", crd.Name, err)
	}
	err = wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		got, err := crds.Get(ctx, crd.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, c := range got.Status.Conditions {
			if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("CRD %s is not Established: %w", crd.Name, err)
	}
	return nil
}

// InstallInventoryCRD installs nodecsr's NodeCertificate CRD, which
// nodecsr-controller needs unless it runs with --inventory=false.
func InstallInventoryCRD(ctx context.Context, cfg *rest.Config) error {
	return InstallCRD(ctx, cfg, nodecsrv1alpha1.CRDYAML)
}
