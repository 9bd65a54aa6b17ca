package v1alpha1

import (
	_ "embed"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupName is the API group of nodecsr's resources.
const GroupName = "nodecsr.io"

// SchemeGroupVersion is the group and version of this package.
var SchemeGroupVersion = schema.GroupVersion{Group: GroupName, Version: "v1alpha1"}

// Resource names of NodeCertificate.
const (
	NodeCertificateKind     = "NodeCertificate"
	NodeCertificateResource = "nodecertificates"
)

// CRDYAML is the CustomResourceDefinition of NodeCertificate.
//
//go:embed nodecertificates.yaml
var CRDYAML []byte

// AddToScheme registers the types of this package with a scheme.
func AddToScheme(s *runtime.Scheme) error {
	s.AddKnownTypes(SchemeGroupVersion, &NodeCertificate{}, &NodeCertificateList{})
	metav1.AddToGroupVersion(s, SchemeGroupVersion)
	return nil
}
