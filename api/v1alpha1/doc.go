// Package v1alpha1 is the nodecsr.io/v1alpha1 API: NodeCertificate, the
// durable inventory of the kubelet certificates issued to each node.
//
// The types and their deep-copy functions are written by hand (the API is
// small); nodecertificates.yaml is the CustomResourceDefinition, embedded as
// CRDYAML. The chart's templates/crds/nodecertificates.yaml carries the same
// definition (a render test keeps them equal) and a test round-trips a fully
// populated object through a real API server, which prunes any field the
// schema does not declare.
package v1alpha1
