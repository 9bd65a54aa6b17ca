package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// NodeCertificate is the inventory entry of one node: the newest kubelet
// certificates nodecsr saw issued to it through a CSR. It is cluster-scoped
// and named after the node; nodecsr-controller writes its status (there is
// no spec). An owner reference to the Node makes the garbage collector
// delete it with the Node.
type NodeCertificate struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Status NodeCertificateStatus `json:"status,omitempty"`
}

// NodeCertificateStatus holds the node's newest certificate of each kind.
type NodeCertificateStatus struct {
	// Client is the newest kubelet client certificate (signer
	// kubernetes.io/kube-apiserver-client-kubelet).
	Client *CertificateRecord `json:"client,omitempty"`
	// Serving is the newest kubelet serving certificate (signer
	// kubernetes.io/kubelet-serving).
	Serving *CertificateRecord `json:"serving,omitempty"`
	// ClientResidual is the client certificate's time left, as kubeadm
	// certs check-expiration prints it ("364d", "5h", "<1h", "expired"),
	// refreshed by the controller when it changes: at most once a day while
	// more than two days are left, once an hour after that.
	ClientResidual string `json:"clientResidual,omitempty"`
	// LastRenewal is when the node last obtained a client certificate
	// (bootstrap or renewal): the creation time of the CSR it came from.
	LastRenewal *metav1.Time `json:"lastRenewal,omitempty"`
	// ObservedTime is when nodecsr last wrote this status.
	ObservedTime *metav1.Time `json:"observedTime,omitempty"`
}

// Certificate paths: how the node asked for the certificate.
const (
	// PathBootstrap: the CSR was filed by a bootstrapper (a bootstrap
	// token, or anyone but the node itself).
	PathBootstrap = "Bootstrap"
	// PathRenewal: the CSR was filed by the node itself (system:node:<name>)
	// with its current certificate.
	PathRenewal = "Renewal"
)

// CertificateRecord is one issued certificate.
type CertificateRecord struct {
	// SignerName is the CSR's signer.
	SignerName string `json:"signerName"`
	// SerialNumber is the certificate's serial number in upper-case hex.
	SerialNumber string `json:"serialNumber"`
	// NotBefore and NotAfter are the certificate's validity period.
	NotBefore metav1.Time `json:"notBefore"`
	NotAfter  metav1.Time `json:"notAfter"`
	// RenewAfter and RenewBefore bound the kubelet's rotation window: the
	// kubelet renews at a random point between 70% (RenewAfter) and 90%
	// (RenewBefore) of the lifetime. A certificate still the newest after
	// RenewBefore means rotation is not happening.
	RenewAfter  metav1.Time `json:"renewAfter"`
	RenewBefore metav1.Time `json:"renewBefore"`
	// PublicKeySHA256 is the hex SHA-256 of the certificate's
	// SubjectPublicKeyInfo (DER).
	PublicKeySHA256 string `json:"publicKeySHA256"`
	// CSRName is the CertificateSigningRequest the certificate was issued
	// for (kube-controller-manager deletes it an hour after issuance).
	CSRName string `json:"csrName"`
	// Path is Bootstrap or Renewal.
	Path string `json:"path"`
	// Requester is the CSR's spec.username.
	Requester string `json:"requester"`
	// ObservedTime is when nodecsr saw the certificate issued.
	ObservedTime metav1.Time `json:"observedTime"`
}

// NodeCertificateList is a list of NodeCertificates.
type NodeCertificateList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`

	Items []NodeCertificate `json:"items"`
}
