package approver

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
)

func csrOf(name, signer string, conditions ...certificatesv1.RequestConditionType) *certificatesv1.CertificateSigningRequest {
	csr := &certificatesv1.CertificateSigningRequest{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: certificatesv1.CertificateSigningRequestSpec{SignerName: signer}}
	for _, c := range conditions {
		csr.Status.Conditions = append(csr.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{Type: c, Status: corev1.ConditionTrue})
	}
	return csr
}

func TestPendingCSRsBySigner(t *testing.T) {
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	objs := []client.Object{
		csrOf("client-a", KubeletClientSigner),
		csrOf("client-b", KubeletClientSigner),
		csrOf("client-approved", KubeletClientSigner, certificatesv1.CertificateApproved),
		csrOf("serving-a", KubeletServingSigner),
		csrOf("serving-denied", KubeletServingSigner, certificatesv1.CertificateDenied),
		csrOf("other", "example.com/other"),
	}
	c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(objs...).Build()

	// Other signers never get a series, nor are they counted.
	for _, tc := range []struct {
		name    string
		serving bool
		want    string
	}{
		{"client only", false, `nodecsr_pending_csrs{signer="client"} 2`},
		{"client and serving", true, `nodecsr_pending_csrs{signer="client"} 2
nodecsr_pending_csrs{signer="serving"} 1`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			NewMetrics(reg, c, tc.serving)
			want := "# HELP nodecsr_pending_csrs Kubelet CSRs without a decision or certificate, from nodecsr's cache, by signer (client, and serving when enabled at startup).\n# TYPE nodecsr_pending_csrs gauge\n" + tc.want + "\n"
			if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "nodecsr_pending_csrs"); err != nil {
				t.Fatal(err)
			}
		})
	}
}
