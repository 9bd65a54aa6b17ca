package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime"
)

// DeepCopyInto copies r into out.
func (r *CertificateRecord) DeepCopyInto(out *CertificateRecord) {
	*out = *r
	r.NotBefore.DeepCopyInto(&out.NotBefore)
	r.NotAfter.DeepCopyInto(&out.NotAfter)
	r.RenewAfter.DeepCopyInto(&out.RenewAfter)
	r.RenewBefore.DeepCopyInto(&out.RenewBefore)
	r.ObservedTime.DeepCopyInto(&out.ObservedTime)
}

// DeepCopy returns a copy of r.
func (r *CertificateRecord) DeepCopy() *CertificateRecord {
	if r == nil {
		return nil
	}
	out := new(CertificateRecord)
	r.DeepCopyInto(out)
	return out
}

// DeepCopyInto copies s into out.
func (s *NodeCertificateStatus) DeepCopyInto(out *NodeCertificateStatus) {
	*out = *s
	out.Client = s.Client.DeepCopy()
	out.Serving = s.Serving.DeepCopy()
	out.LastRenewal = s.LastRenewal.DeepCopy()
	out.ObservedTime = s.ObservedTime.DeepCopy()
}

// DeepCopy returns a copy of s.
func (s *NodeCertificateStatus) DeepCopy() *NodeCertificateStatus {
	if s == nil {
		return nil
	}
	out := new(NodeCertificateStatus)
	s.DeepCopyInto(out)
	return out
}

// DeepCopyInto copies n into out.
func (n *NodeCertificate) DeepCopyInto(out *NodeCertificate) {
	*out = *n
	out.TypeMeta = n.TypeMeta
	n.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	n.Status.DeepCopyInto(&out.Status)
}

// DeepCopy returns a copy of n.
func (n *NodeCertificate) DeepCopy() *NodeCertificate {
	if n == nil {
		return nil
	}
	out := new(NodeCertificate)
	n.DeepCopyInto(out)
	return out
}

// DeepCopyObject implements runtime.Object.
func (n *NodeCertificate) DeepCopyObject() runtime.Object { return n.DeepCopy() }

// DeepCopyInto copies l into out.
func (l *NodeCertificateList) DeepCopyInto(out *NodeCertificateList) {
	*out = *l
	out.TypeMeta = l.TypeMeta
	l.ListMeta.DeepCopyInto(&out.ListMeta)
	if l.Items != nil {
		out.Items = make([]NodeCertificate, len(l.Items))
		for i := range l.Items {
			l.Items[i].DeepCopyInto(&out.Items[i])
		}
	}
}

// DeepCopy returns a copy of l.
func (l *NodeCertificateList) DeepCopy() *NodeCertificateList {
	if l == nil {
		return nil
	}
	out := new(NodeCertificateList)
	l.DeepCopyInto(out)
	return out
}

// DeepCopyObject implements runtime.Object.
func (l *NodeCertificateList) DeepCopyObject() runtime.Object { return l.DeepCopy() }
