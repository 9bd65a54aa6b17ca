package hostile_test

import (
	"bytes"
	"crypto/elliptic"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/nodecsr/nodecsr/approver"
	"github.com/nodecsr/nodecsr/internal/csrtest"
	"github.com/nodecsr/nodecsr/test/cluster"
	"github.com/nodecsr/nodecsr/test/env"
	"github.com/nodecsr/nodecsr/webhook"
)

// The classes of hostile kubelet client CSRs and what must happen to each,
// with nodecsr's webhooks registered (webhook-on) and with them deleted, so
// that only the approver stands in the way (webhook-off). Every CSR is for
// the signer kubernetes.io/kube-apiserver-client-kubelet unless the class
// says otherwise, and none may ever be approved (no Approved condition, no
// certificate, checked at the decision and again recheckAfter later), except
// the rows marked approved.
//
// Outcomes:
//
//	rejected R  the validating webhook refuses the create; its message names R as rule (1)
//	API: text   kube-apiserver's own validation refuses the create (before nodecsr could); text is in its error
//	denied R    the CSR is created; nodecsr writes one Denied condition with reason R and one Warning Event
//	ignored     the CSR is created; nodecsr writes nothing (no condition, Event, label or annotation)
//	capped      the mutating webhook caps expirationSeconds to lifetime.maxExpirationSeconds, then it is approved
//
// Requesters: token = a real kubeadm-style bootstrap token (may create CSRs
// and request nodeclient); bound = a token the policy binds to bound-[0-9]+;
// fresh = a new token per CSR; other-node = impersonated system:node:<attacker>
// WITHOUT the system:nodes group (so NodeRestriction does not apply) and
// RBAC to create CSRs; unauthorized = impersonated system:bootstrap:nauth0 in
// system:bootstrappers, allowed to create CSRs but not nodeclient; stranger =
// impersonated user hostile-mallory, allowed to create CSRs.
//
//	| #  | class                                         | by           | webhook-on                        | webhook-off                    |
//	|----|-----------------------------------------------|--------------|-----------------------------------|--------------------------------|
//	|  1 | signer kube-apiserver-client, kubelet subject | token        | ignored                           | ignored                        |
//	|  2 | DNS SAN                                       | token        | rejected SANsNotAllowed           | denied SANsNotAllowed          |
//	|  3 | IP SAN                                        | token        | rejected SANsNotAllowed           | denied SANsNotAllowed          |
//	|  4 | email SAN                                     | token        | rejected SANsNotAllowed           | denied SANsNotAllowed          |
//	|  5 | URI SAN                                       | token        | rejected SANsNotAllowed           | denied SANsNotAllowed          |
//	|  6 | O missing                                     | token        | rejected InvalidOrganization      | denied InvalidOrganization     |
//	|  7 | O system:nodes + system:masters               | token        | rejected InvalidOrganization      | denied InvalidOrganization     |
//	|  8 | O system:masters only                         | token        | rejected InvalidOrganization      | denied InvalidOrganization     |
//	|  9 | O system:nodes twice (two RDNs)               | token        | rejected InvalidOrganization      | denied InvalidOrganization     |
//	| 10 | O wrong case (System:Nodes)                   | token        | rejected InvalidOrganization      | denied InvalidOrganization     |
//	| 11 | CN without system:node: prefix                | token        | rejected InvalidCommonName        | denied InvalidCommonName       |
//	| 12 | CN system:node: with an empty name            | token        | rejected InvalidCommonName        | denied InvalidCommonName       |
//	| 13 | node name not a DNS name (Node_x)             | token        | rejected InvalidNodeName          | denied InvalidNodeName         |
//	| 14 | node name with a Cyrillic look-alike          | token        | rejected InvalidNodeName          | denied InvalidNodeName         |
//	| 15 | node name of 300 characters                   | token        | rejected InvalidNodeName          | denied InvalidNodeName         |
//	| 16 | two CNs, the last an existing node            | token        | rejected ExtraSubjectAttributes   | denied ExtraSubjectAttributes  |
//	| 17 | OU present                                    | token        | rejected ExtraSubjectAttributes   | denied ExtraSubjectAttributes  |
//	| 18 | C present                                     | token        | rejected ExtraSubjectAttributes   | denied ExtraSubjectAttributes  |
//	| 19 | serialNumber present                          | token        | rejected ExtraSubjectAttributes   | denied ExtraSubjectAttributes  |
//	| 20 | multi-valued RDN {O, CN}                      | token        | rejected ExtraSubjectAttributes   | denied ExtraSubjectAttributes  |
//	| 21 | usage server auth added                       | token        | rejected InvalidUsages            | denied InvalidUsages           |
//	| 22 | usage any added                               | token        | rejected InvalidUsages            | denied InvalidUsages           |
//	| 23 | usage cert sign added                         | token        | rejected InvalidUsages            | denied InvalidUsages           |
//	| 24 | usages without client auth                    | token        | rejected InvalidUsages            | denied InvalidUsages           |
//	| 25 | usage listed twice                            | token        | API: Duplicate value              | API: Duplicate value           |
//	| 26 | key encipherment with ECDSA (policy: RSA only)| token        | rejected KeyEnciphermentRequiresRSA | denied KeyEnciphermentRequiresRSA |
//	| 27 | RSA 1024                                      | token        | rejected KeySizeNotAllowed        | denied KeySizeNotAllowed       |
//	| 28 | RSA 16384 (approver/testdata)                 | token        | rejected KeySizeNotAllowed        | denied KeySizeNotAllowed       |
//	| 29 | ECDSA P-224                                   | token        | rejected KeyCurveNotAllowed       | denied KeyCurveNotAllowed      |
//	| 30 | Ed25519                                       | token        | rejected KeyAlgorithmNotAllowed   | denied KeyAlgorithmNotAllowed  |
//	| 31 | signed by another key                         | token        | API: verification failure         | API: verification failure      |
//	| 32 | signature with one bit flipped                | token        | API: verification failure         | API: verification failure      |
//	| 33 | SHA-1 signature (the API server allows it)    | token        | rejected InvalidSignature         | denied InvalidSignature        |
//	| 34 | two PEM blocks                                | token        | rejected MalformedRequest         | denied MalformedRequest        |
//	| 35 | garbage after the PEM block                   | token        | rejected MalformedRequest         | denied MalformedRequest        |
//	| 36 | garbage before the PEM block                  | token        | rejected MalformedRequest         | denied MalformedRequest        |
//	| 37 | PEM headers                                   | token        | rejected MalformedRequest         | denied MalformedRequest        |
//	| 38 | not PEM (raw DER)                             | token        | API: PEM block type must be ...   | API: PEM block type must be ...|
//	| 39 | PEM type CERTIFICATE                          | token        | API: PEM block type must be ...   | API: PEM block type must be ...|
//	| 40 | bytes after the DER inside the PEM            | token        | API: trailing data                | API: trailing data             |
//	| 41 | request > keys.maxRequestBytes (~27 KiB)      | token        | rejected RequestTooLarge          | denied RequestTooLarge         |
//	| 42 | request > the API server's 3 MiB body limit   | token        | API: too large                    | API: too large                 |
//	| 43 | challengePassword attribute                   | token        | rejected UnexpectedExtensions     | denied UnexpectedExtensions    |
//	| 44 | basicConstraints CA:true extension            | token        | rejected UnexpectedExtensions     | denied UnexpectedExtensions    |
//	| 45 | renewal for another (existing) node           | other-node   | rejected RequesterMismatch        | denied RequesterMismatch       |
//	| 46 | requester neither node nor bootstrapper       | stranger     | rejected UnrecognizedRequester    | denied UnrecognizedRequester   |
//	| 47 | bootstrapper without nodeclient permission    | unauthorized | denied NotAuthorized (webhook cannot know) | denied NotAuthorized  |
//	| 48 | bootstrap for an existing node (takeover)     | token        | rejected NodeAlreadyExists        | denied NodeAlreadyExists       |
//	| 49 | bootstrap from a token bound to other names   | bound        | rejected TokenNotBoundToName      | denied TokenNotBoundToName     |
//	| 50 | node name denied by policy (control-plane-*)  | token        | rejected NodeNameDenied           | denied NodeNameDenied          |
//	| 51 | expirationSeconds 7 days > cap (1 day)        | fresh        | capped, approved BootstrapApproved| denied LifetimeTooLong         |
//	| 52 | expirationSeconds 599 < API minimum           | token        | API: less than 600 seconds        | API: less than 600 seconds     |
//	|  - | control: a valid bootstrap request            | fresh        | approved BootstrapApproved        | approved BootstrapApproved     |
//
// TestWhileControllerIsDown adds, with the webhooks off and nodecsr-controller
// stopped while the CSRs are filed:
//
//	| 53 | storm of 30 duplicate renewals from one node | the newest approved, every older one denied Superseded; other nodes' renewals approved meanwhile |
//	| 54 | CSR approved by someone else first           | left alone: no second condition, no nodecsr Event |
//	| 55 | CSR denied by someone else first             | left alone: stays Denied, never approved, no nodecsr Event |
var classes = []class{
	{name: "signer-kube-apiserver-client-kubelet-subject", by: byToken, opts: with(csrtest.WithSignerName(certificatesv1.KubeAPIServerClientSignerName)), on: ignored(), off: ignored()},
	{name: "san-dns", by: byToken, opts: with(csrtest.WithDNSSAN("kubernetes.default.svc")), on: rejected(approver.ReasonSANsNotAllowed), off: denied(approver.ReasonSANsNotAllowed)},
	{name: "san-ip", by: byToken, opts: with(csrtest.WithIPSAN("10.0.0.1")), on: rejected(approver.ReasonSANsNotAllowed), off: denied(approver.ReasonSANsNotAllowed)},
	{name: "san-email", by: byToken, opts: with(csrtest.WithEmailSAN("root@cluster.local")), on: rejected(approver.ReasonSANsNotAllowed), off: denied(approver.ReasonSANsNotAllowed)},
	{name: "san-uri", by: byToken, opts: with(csrtest.WithURISAN("spiffe://cluster.local/ns/kube-system/sa/admin")), on: rejected(approver.ReasonSANsNotAllowed), off: denied(approver.ReasonSANsNotAllowed)},
	{name: "o-missing", by: byToken, opts: with(csrtest.WithOrg()), on: rejected(approver.ReasonInvalidOrganization), off: denied(approver.ReasonInvalidOrganization)},
	{name: "o-extra-system-masters", by: byToken, opts: with(csrtest.WithOrg("system:nodes", "system:masters")), on: rejected(approver.ReasonInvalidOrganization), off: denied(approver.ReasonInvalidOrganization)},
	{name: "o-system-masters-only", by: byToken, opts: with(csrtest.WithOrg("system:masters")), on: rejected(approver.ReasonInvalidOrganization), off: denied(approver.ReasonInvalidOrganization)},
	{name: "o-duplicate", by: byToken, opts: func(n string) []csrtest.Option {
		return []csrtest.Option{subject(org("system:nodes"), org("system:nodes"), cn("system:node:"+n))}
	}, on: rejected(approver.ReasonInvalidOrganization), off: denied(approver.ReasonInvalidOrganization)},
	{name: "o-wrong-case", by: byToken, opts: with(csrtest.WithOrg("System:Nodes")), on: rejected(approver.ReasonInvalidOrganization), off: denied(approver.ReasonInvalidOrganization)},
	{name: "cn-without-prefix", by: byToken, opts: func(n string) []csrtest.Option { return []csrtest.Option{csrtest.WithCN(n)} },
		on: rejected(approver.ReasonInvalidCommonName), off: denied(approver.ReasonInvalidCommonName)},
	{name: "cn-empty-name", by: byToken, opts: with(csrtest.WithCN("system:node:")), on: rejected(approver.ReasonInvalidCommonName), off: denied(approver.ReasonInvalidCommonName)},
	{name: "name-not-dns", by: byToken, opts: func(n string) []csrtest.Option { return []csrtest.Option{csrtest.WithNodeName("Node_" + n)} },
		on: rejected(approver.ReasonInvalidNodeName), off: denied(approver.ReasonInvalidNodeName)},
	{name: "name-unicode-look-alike", by: byToken, opts: func(n string) []csrtest.Option { return []csrtest.Option{csrtest.WithNodeName("w\u043erker-" + n)} },
		on: rejected(approver.ReasonInvalidNodeName), off: denied(approver.ReasonInvalidNodeName)},
	{name: "name-300-characters", by: byToken, opts: func(n string) []csrtest.Option {
		return []csrtest.Option{csrtest.WithNodeName(n + "-" + strings.Repeat("a", 300-len(n)-1))}
	}, on: rejected(approver.ReasonInvalidNodeName), off: denied(approver.ReasonInvalidNodeName)},
	{name: "cn-twice-last-is-existing-node", by: byToken, opts: func(n string) []csrtest.Option {
		return []csrtest.Option{subject(org("system:nodes"), cn("system:node:"+n), cn("system:node:"+victimNode))}
	}, on: rejected(approver.ReasonExtraSubjectAttributes), off: denied(approver.ReasonExtraSubjectAttributes)},
	{name: "subject-ou", by: byToken, opts: with(csrtest.WithSubjectAttribute(csrtest.OIDOrganizationalUnit, "system:masters")), on: rejected(approver.ReasonExtraSubjectAttributes), off: denied(approver.ReasonExtraSubjectAttributes)},
	{name: "subject-c", by: byToken, opts: with(csrtest.WithSubjectAttribute(csrtest.OIDCountry, "US")), on: rejected(approver.ReasonExtraSubjectAttributes), off: denied(approver.ReasonExtraSubjectAttributes)},
	{name: "subject-serial-number", by: byToken, opts: with(csrtest.WithSubjectAttribute(csrtest.OIDSerialNumber, "1")), on: rejected(approver.ReasonExtraSubjectAttributes), off: denied(approver.ReasonExtraSubjectAttributes)},
	{name: "subject-multi-valued-rdn", by: byToken, opts: func(n string) []csrtest.Option {
		return []csrtest.Option{subject([]pkix.AttributeTypeAndValue{
			csrtest.ATV(csrtest.OIDOrganization, "system:nodes"), csrtest.ATV(csrtest.OIDCommonName, "system:node:"+n),
		})}
	}, on: rejected(approver.ReasonExtraSubjectAttributes), off: denied(approver.ReasonExtraSubjectAttributes)},
	{name: "usage-server-auth", by: byToken, opts: with(usages(certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth, certificatesv1.UsageServerAuth)), on: rejected(approver.ReasonInvalidUsages), off: denied(approver.ReasonInvalidUsages)},
	{name: "usage-any", by: byToken, opts: with(usages(certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth, certificatesv1.UsageAny)), on: rejected(approver.ReasonInvalidUsages), off: denied(approver.ReasonInvalidUsages)},
	{name: "usage-cert-sign", by: byToken, opts: with(usages(certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth, certificatesv1.UsageCertSign)), on: rejected(approver.ReasonInvalidUsages), off: denied(approver.ReasonInvalidUsages)},
	{name: "usage-no-client-auth", by: byToken, opts: with(usages(certificatesv1.UsageDigitalSignature)), on: rejected(approver.ReasonInvalidUsages), off: denied(approver.ReasonInvalidUsages)},
	{name: "usage-twice", by: byToken, opts: with(usages(certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth, certificatesv1.UsageClientAuth)), on: refusedByAPI("Duplicate value"), off: refusedByAPI("Duplicate value")},
	{name: "key-encipherment-with-ecdsa", by: byToken, opts: with(usages(csrtest.KeyEnciphermentUsages()...)), on: rejected(approver.ReasonKeyEnciphermentRequiresRSA), off: denied(approver.ReasonKeyEnciphermentRequiresRSA)},
	{name: "rsa-1024", by: byToken, opts: with(csrtest.WithKey(csrtest.RSAKey(1024))), on: rejected(approver.ReasonKeySizeNotAllowed), off: denied(approver.ReasonKeySizeNotAllowed)},
	{name: "rsa-16384", by: byToken, opts: func(string) []csrtest.Option { return []csrtest.Option{csrtest.WithRequest(rsa16384())} },
		on: rejected(approver.ReasonKeySizeNotAllowed), off: denied(approver.ReasonKeySizeNotAllowed)},
	{name: "ecdsa-p224", by: byToken, opts: with(csrtest.WithKey(csrtest.ECDSAKey(elliptic.P224()))), on: rejected(approver.ReasonKeyCurveNotAllowed), off: denied(approver.ReasonKeyCurveNotAllowed)},
	{name: "ed25519", by: byToken, opts: with(csrtest.WithKey(csrtest.Ed25519Key())), on: rejected(approver.ReasonKeyAlgorithmNotAllowed), off: denied(approver.ReasonKeyAlgorithmNotAllowed)},
	{name: "signed-by-another-key", by: byToken, opts: with(csrtest.SignedByOtherKey()), on: refusedByAPI("verification failure"), off: refusedByAPI("verification failure")},
	{name: "signature-bit-flipped", by: byToken, opts: with(csrtest.CorruptSignature()), on: refusedByAPI("verification failure"), off: refusedByAPI("verification failure")},
	{name: "signature-sha1", by: byToken, opts: with(csrtest.WithSignatureAlgorithm(x509.ECDSAWithSHA1)), on: rejected(approver.ReasonInvalidSignature), off: denied(approver.ReasonInvalidSignature)},
	{name: "pem-two-blocks", by: byToken, opts: with(csrtest.TwoBlocks()), on: rejected(approver.ReasonMalformedRequest), off: denied(approver.ReasonMalformedRequest)},
	{name: "pem-trailing-garbage", by: byToken, opts: with(csrtest.TrailingGarbage()), on: rejected(approver.ReasonMalformedRequest), off: denied(approver.ReasonMalformedRequest)},
	{name: "pem-leading-garbage", by: byToken, opts: with(csrtest.LeadingGarbage()), on: rejected(approver.ReasonMalformedRequest), off: denied(approver.ReasonMalformedRequest)},
	{name: "pem-headers", by: byToken, opts: with(csrtest.WithPEMHeaders(map[string]string{"X-Hostile": "1"})), on: rejected(approver.ReasonMalformedRequest), off: denied(approver.ReasonMalformedRequest)},
	{name: "not-pem", by: byToken, opts: with(csrtest.NotPEM()), on: refusedByAPI("PEM block type must be CERTIFICATE REQUEST"), off: refusedByAPI("PEM block type must be CERTIFICATE REQUEST")},
	{name: "pem-type-certificate", by: byToken, opts: with(csrtest.WithPEMType("CERTIFICATE")), on: refusedByAPI("PEM block type must be CERTIFICATE REQUEST"), off: refusedByAPI("PEM block type must be CERTIFICATE REQUEST")},
	{name: "der-trailing-bytes", by: byToken, opts: with(csrtest.TrailingDERBytes()), on: refusedByAPI("trailing data"), off: refusedByAPI("trailing data")},
	{name: "request-over-max-request-bytes", by: byToken, opts: with(bigExtension(20 << 10)), on: rejected(approver.ReasonRequestTooLarge), off: denied(approver.ReasonRequestTooLarge)},
	{name: "request-over-apiserver-body-limit", by: byToken, opts: with(bigExtension(4 << 20)), on: refusedByAPI("too large"), off: refusedByAPI("too large")},
	{name: "attribute-challenge-password", by: byToken, opts: with(csrtest.WithAttribute(csrtest.OIDChallengePassword, "hunter2")), on: rejected(approver.ReasonUnexpectedExtensions), off: denied(approver.ReasonUnexpectedExtensions)},
	{name: "extension-basic-constraints-ca", by: byToken, opts: with(basicConstraintsCA()), on: rejected(approver.ReasonUnexpectedExtensions), off: denied(approver.ReasonUnexpectedExtensions)},
	{name: "renewal-for-another-node", by: byOtherNode, opts: with(csrtest.WithNodeName(victimNode)), on: rejected(approver.ReasonRequesterMismatch), off: denied(approver.ReasonRequesterMismatch)},
	{name: "unrecognized-requester", by: byStranger, on: rejected(approver.ReasonUnrecognizedRequester), off: denied(approver.ReasonUnrecognizedRequester)},
	{name: "bootstrapper-not-authorized", by: byUnauthorizedBootstrapper, on: denied(approver.ReasonNotAuthorized), off: denied(approver.ReasonNotAuthorized)},
	{name: "bootstrap-existing-node", by: byToken, opts: with(csrtest.WithNodeName(victimNode)), on: rejected(approver.ReasonNodeAlreadyExists), off: denied(approver.ReasonNodeAlreadyExists)},
	{name: "token-bound-to-other-names", by: byBoundToken, on: rejected(approver.ReasonTokenNotBoundToName), off: denied(approver.ReasonTokenNotBoundToName)},
	{name: "node-name-denied-by-policy", by: byToken, opts: func(n string) []csrtest.Option { return []csrtest.Option{csrtest.WithNodeName("control-plane-" + n)} },
		on: rejected(approver.ReasonNodeNameDenied), off: denied(approver.ReasonNodeNameDenied)},
	{name: "expiration-over-cap", by: byFreshToken, opts: with(csrtest.WithExpiration(7 * 86400)), on: cappedThenApproved(), off: denied(approver.ReasonLifetimeTooLong)},
	{name: "expiration-under-api-minimum", by: byToken, opts: with(csrtest.WithExpiration(599)), on: refusedByAPI("less than 600 seconds"), off: refusedByAPI("less than 600 seconds")},
	{name: "control-valid-bootstrap", by: byFreshToken, on: approved(approver.ReasonBootstrapApproved), off: approved(approver.ReasonBootstrapApproved)},
}

func TestHostileCSRsWithWebhook(t *testing.T) {
	setWebhooks(t, true)
	runClasses(t, classes, func(c *class) outcome { return c.on })
}

func TestHostileCSRsWithoutWebhook(t *testing.T) {
	setWebhooks(t, false)
	runClasses(t, classes, func(c *class) outcome { return c.off })
}

// TestWhileControllerIsDown files CSRs while nodecsr-controller is stopped
// (and its webhooks off): a storm of duplicates from one node, other nodes'
// renewals, and CSRs someone else decides first. Started with that backlog,
// nodecsr collapses the storm to its newest, serves the other nodes (also the
// ones filed while it works through the backlog) and leaves the decided ones
// alone.
func TestWhileControllerIsDown(t *testing.T) {
	setWebhooks(t, false)
	stopController(t)
	started := false
	t.Cleanup(func() {
		if !started {
			startController(t)
		}
	})
	ctx := t.Context()
	create := func(client kubernetes.Interface, csr *certificatesv1.CertificateSigningRequest) string {
		t.Helper()
		csr.Spec.Username, csr.Spec.Groups, csr.Spec.UID = "", nil, ""
		created, err := client.CertificatesV1().CertificateSigningRequests().Create(ctx, csr, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create %s: %v", csr.Name, err)
		}
		return created.Name
	}

	const storm = 30
	dupClient := nodeClient(t, dupNode)
	prefix := uniqueName("dup")
	dups := make([]string, storm)
	for i := range dups {
		csr := csrtest.Build(csrtest.WithNodeName(dupNode))
		csr.Name = fmt.Sprintf("%s-%02d", prefix, i) // creation order = name order: the last is the newest
		dups[i] = create(dupClient, csr)
	}
	var others []string
	for _, n := range otherNodes[:3] {
		others = append(others, create(nodeClient(t, n), withName(csrtest.Build(csrtest.WithNodeName(n)))))
	}
	preApproved := create(freshTokenClient(t), withName(csrtest.Build(csrtest.WithNodeName(uniqueName("pre-approved")))))
	preDenied := create(freshTokenClient(t), withName(csrtest.Build(csrtest.WithNodeName(uniqueName("pre-denied")))))
	decideByHand(t, preApproved, certificatesv1.CertificateApproved, "ApprovedByAdmin")
	decideByHand(t, preDenied, certificatesv1.CertificateDenied, "DeniedByAdmin")

	startController(t)
	started = true
	// Filed while nodecsr works through the backlog.
	for _, n := range otherNodes[3:] {
		others = append(others, create(nodeClient(t, n), withName(csrtest.Build(csrtest.WithNodeName(n)))))
	}

	waitFor(t, "every CSR of the storm and the other nodes decided", func(all map[string]*certificatesv1.CertificateSigningRequest) (bool, string) {
		var missing []string
		for _, n := range append(append([]string(nil), dups...), others...) {
			if csr := all[n]; csr == nil || len(decisions(csr)) == 0 {
				missing = append(missing, n)
			}
		}
		return len(missing) == 0, strings.Join(missing, ", ")
	})
	time.Sleep(recheckAfter)
	all, err := listCSRs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	events := decisionEvents(t)

	t.Run("duplicate-storm/newest-approved", func(t *testing.T) {
		expectDecision(t, all[dups[storm-1]], events, certificatesv1.CertificateApproved, approver.ReasonRenewalApproved)
	})
	t.Run("duplicate-storm/older-superseded", func(t *testing.T) {
		var approvedOlder []string
		for _, n := range dups[:storm-1] {
			if csr := all[n]; csr != nil && approvedCondition(csr) {
				approvedOlder = append(approvedOlder, n)
				continue
			}
			expectDecision(t, all[n], events, certificatesv1.CertificateDenied, approver.ReasonSuperseded)
			expectNeverApproved(t, all[n])
		}
		if len(approvedOlder) > 0 {
			t.Errorf("the storm was not collapsed: %d of the %d older duplicates were approved besides the newest (%s): "+
				"an older duplicate decided after the newest was approved no longer sees a newer *pending* CSR", len(approvedOlder), storm-1, strings.Join(approvedOlder, ", "))
		}
	})
	t.Run("other-nodes-served", func(t *testing.T) {
		for _, n := range others {
			expectDecision(t, all[n], events, certificatesv1.CertificateApproved, approver.ReasonRenewalApproved)
		}
	})
	for name, c := range map[string]struct {
		csr    string
		typ    certificatesv1.RequestConditionType
		reason string
	}{
		"pre-approved-left-alone": {preApproved, certificatesv1.CertificateApproved, "ApprovedByAdmin"},
		"pre-denied-left-alone":   {preDenied, certificatesv1.CertificateDenied, "DeniedByAdmin"},
	} {
		t.Run(name, func(t *testing.T) {
			csr := all[c.csr]
			if csr == nil {
				t.Fatalf("CSR %s is gone", c.csr)
			}
			ds := decisions(csr)
			if len(ds) != 1 || ds[0].Type != c.typ || ds[0].Reason != c.reason {
				t.Errorf("decisions %+v, want only the hand-made %s/%s", ds, c.typ, c.reason)
			}
			if evs := nodecsrEvents(events[c.csr]); len(evs) != 0 {
				t.Errorf("nodecsr recorded %d Events about a CSR decided by someone else: %+v", len(evs), evs)
			}
			if c.typ == certificatesv1.CertificateDenied {
				expectNeverApproved(t, csr)
			}
		})
	}
}

type requester int

const (
	byToken requester = iota
	byBoundToken
	byFreshToken
	byOtherNode
	byUnauthorizedBootstrapper
	byStranger
	// byNode is the class's node itself (a real node credential).
	byNode
	// byNodeOutsideNodesGroup is system:node:<the class's node> impersonated
	// without the system:nodes group.
	byNodeOutsideNodesGroup
)

func (r requester) client(t *testing.T, node string) kubernetes.Interface {
	t.Helper()
	switch r {
	case byNode:
		return nodeClient(t, node)
	case byNodeOutsideNodesGroup:
		return impersonating("system:node:"+node, csrCreators, "system:authenticated")
	case byToken:
		return tokenClient(attackerToken)
	case byBoundToken:
		return tokenClient(boundToken)
	case byFreshToken:
		return freshTokenClient(t)
	case byOtherNode:
		return impersonating("system:node:"+uniqueName("attacker"), csrCreators, "system:authenticated")
	case byUnauthorizedBootstrapper:
		return impersonating("system:bootstrap:nauth0", "system:bootstrappers", csrCreators, "system:authenticated")
	case byStranger:
		return impersonating("hostile-mallory", csrCreators, "system:authenticated")
	}
	t.Fatalf("unknown requester %d", r)
	return nil
}

type outcomeKind int

const (
	kindRejected outcomeKind = iota
	kindRefusedByAPI
	kindDenied
	kindIgnored
	kindCapped
	kindApproved
)

// outcome is what must happen to a CSR.
type outcome struct {
	kind outcomeKind
	// reason is the reason code, or for kindRefusedByAPI a part of the API
	// server's error message.
	reason string
}

func rejected(reason string) outcome     { return outcome{kindRejected, reason} }
func refusedByAPI(text string) outcome   { return outcome{kindRefusedByAPI, text} }
func denied(reason string) outcome       { return outcome{kindDenied, reason} }
func ignored() outcome                   { return outcome{kind: kindIgnored} }
func approved(reason string) outcome     { return outcome{kindApproved, reason} }
func cappedThenApproved() outcome        { return outcome{kindCapped, approver.ReasonBootstrapApproved} }
func (o outcome) decidedByNodecsr() bool { return o.kind >= kindDenied && o.kind != kindIgnored }

// class is one kind of hostile CSR.
type class struct {
	name string
	by   requester
	// opts shape the request for the node name n, unique per CSR; the common
	// name is system:node:<n> unless they set another subject.
	opts    func(n string) []csrtest.Option
	on, off outcome
	// node, when set, is the node name instead of a unique one (a Node
	// created with addresses by the suite, for serving classes).
	node string
	// message, when set, must be in the webhook's rejection or the
	// decision's message.
	message string
}

func with(opts ...csrtest.Option) func(string) []csrtest.Option {
	return func(string) []csrtest.Option { return opts }
}

func usages(u ...certificatesv1.KeyUsage) csrtest.Option { return csrtest.WithUsages(u...) }

func subject(rdns ...[]pkix.AttributeTypeAndValue) csrtest.Option {
	return csrtest.WithRawSubject(csrtest.RawSubject(rdns...))
}

func org(v string) []pkix.AttributeTypeAndValue {
	return []pkix.AttributeTypeAndValue{csrtest.ATV(csrtest.OIDOrganization, v)}
}

func cn(v string) []pkix.AttributeTypeAndValue {
	return []pkix.AttributeTypeAndValue{csrtest.ATV(csrtest.OIDCommonName, v)}
}

// bigExtension adds a non-critical private extension of n bytes: the request
// stays valid, only large.
func bigExtension(n int) csrtest.Option {
	return csrtest.WithExtension(pkix.Extension{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 55555, 1}, Value: bytes.Repeat([]byte{'A'}, n)})
}

func basicConstraintsCA() csrtest.Option {
	v, err := asn1.Marshal(struct{ IsCA bool }{true})
	if err != nil {
		panic(err)
	}
	return csrtest.WithExtension(pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: v})
}

var rsa16384 = sync.OnceValue(func() []byte {
	root, err := cluster.RepoRoot()
	if err != nil {
		panic(err)
	}
	data, err := os.ReadFile(filepath.Join(root, "approver", "testdata", "rsa16384.csr"))
	if err != nil {
		panic(err)
	}
	return data
})

func withName(csr *certificatesv1.CertificateSigningRequest) *certificatesv1.CertificateSigningRequest {
	csr.Name = uniqueName("h")
	return csr
}

// submission is one CSR filed for a class.
type submission struct {
	class   *class
	want    outcome
	name    string
	created *certificatesv1.CertificateSigningRequest
	err     error
	// atDecision is the CSR when its decision was first seen.
	atDecision *certificatesv1.CertificateSigningRequest
}

// runClasses files one CSR per class, waits for every decision, waits
// recheckAfter more, then checks each class in a subtest of its name.
func runClasses(t *testing.T, classes []class, want func(*class) outcome) {
	subs := make([]*submission, len(classes))
	for i := range classes {
		c := &classes[i]
		node := uniqueName("h")
		if c.node != "" {
			node = c.node
		}
		opts := []csrtest.Option{csrtest.WithNodeName(node)}
		if c.opts != nil {
			opts = append(opts, c.opts(node)...)
		}
		csr := withName(csrtest.Build(opts...))
		csr.Spec.Username, csr.Spec.Groups, csr.Spec.UID = "", nil, "" // the API server sets them
		s := &submission{class: c, want: want(c), name: csr.Name}
		s.created, s.err = c.by.client(t, node).CertificatesV1().CertificateSigningRequests().Create(t.Context(), csr, metav1.CreateOptions{})
		subs[i] = s
	}
	waitFor(t, "every created CSR decided", func(all map[string]*certificatesv1.CertificateSigningRequest) (bool, string) {
		var missing []string
		for _, s := range subs {
			if s.err != nil || !s.want.decidedByNodecsr() || s.atDecision != nil {
				continue
			}
			csr := all[s.name]
			switch {
			case csr == nil || len(decisions(csr)) == 0:
				missing = append(missing, s.class.name)
			case s.want.kind != kindDenied && len(csr.Status.Certificate) == 0:
				missing = append(missing, s.class.name+" (certificate)")
			default:
				s.atDecision = csr
			}
		}
		return len(missing) == 0, strings.Join(missing, ", ")
	})
	time.Sleep(recheckAfter)
	later, err := listCSRs(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	events := decisionEvents(t)
	for _, s := range subs {
		t.Run(s.class.name, func(t *testing.T) { s.check(t, later[s.name], events) })
	}
}

func (s *submission) check(t *testing.T, later *certificatesv1.CertificateSigningRequest, events map[string][]corev1.Event) {
	t.Helper()
	switch s.want.kind {
	case kindRejected:
		// The webhook's 403 names every broken rule, the first in priority
		// order being the reason the approver would deny with.
		switch {
		case s.err == nil:
			t.Fatalf("created; want the validating webhook to reject it with %s", s.want.reason)
		case !apierrors.IsForbidden(s.err),
			!strings.Contains(s.err.Error(), fmt.Sprintf("admission webhook %q denied the request", webhook.WebhookNameValidate)),
			!strings.Contains(s.err.Error(), "can never be approved"),
			!strings.Contains(s.err.Error(), "(1) "+s.want.reason+": "):
			t.Fatalf("create failed with %v; want the validating webhook to reject it naming (1) %s", s.err, s.want.reason)
		}
		t.Logf("rejected at creation: %v", s.err)
		if m := s.class.message; m != "" && !strings.Contains(s.err.Error(), m) {
			t.Errorf("the rejection does not say %q: %v", m, s.err)
		}
		expectNotStored(t, later)
	case kindRefusedByAPI:
		switch {
		case s.err == nil:
			t.Fatalf("created; want the API server to refuse it (%q)", s.want.reason)
		case strings.Contains(s.err.Error(), "admission webhook"),
			!apierrors.IsInvalid(s.err) && !apierrors.IsRequestEntityTooLargeError(s.err),
			!strings.Contains(s.err.Error(), s.want.reason):
			t.Fatalf("create failed with %v; want the API server's own validation to refuse it with %q", s.err, s.want.reason)
		}
		t.Logf("refused by the API server: %.200s", s.err)
		expectNotStored(t, later)
	case kindIgnored:
		if s.err != nil {
			t.Fatalf("create: %v", s.err)
		}
		if later == nil {
			t.Fatal("the CSR is gone")
		}
		if len(later.Status.Conditions) != 0 || len(later.Status.Certificate) != 0 {
			t.Errorf("conditions %+v, certificate %d bytes; want nothing", later.Status.Conditions, len(later.Status.Certificate))
		}
		if evs := events[s.name]; len(evs) != 0 {
			t.Errorf("Events %s; want none", describe(evs))
		}
		for k := range later.Labels {
			if strings.HasPrefix(k, "nodecsr.io/") {
				t.Errorf("nodecsr labelled it: %v", later.Labels)
			}
		}
		for k := range later.Annotations {
			if strings.HasPrefix(k, "nodecsr.io/") {
				t.Errorf("nodecsr annotated it: %v", later.Annotations)
			}
		}
	default:
		if s.err != nil {
			t.Fatalf("create: %v", s.err)
		}
		if s.atDecision == nil {
			t.Fatal("no decision (see the wait above)")
		}
		typ := certificatesv1.CertificateApproved
		if s.want.kind == kindDenied {
			typ = certificatesv1.CertificateDenied
		}
		expectDecision(t, s.atDecision, events, typ, s.want.reason)
		expectDecision(t, later, events, typ, s.want.reason)
		if m := s.class.message; m != "" {
			if ds := decisions(s.atDecision); len(ds) == 0 || !strings.Contains(ds[0].Message, m) {
				t.Errorf("the decision does not say %q: %+v", m, ds)
			}
		}
		if s.want.kind == kindDenied {
			expectNeverApproved(t, s.atDecision)
			expectNeverApproved(t, later)
		}
		if s.want.kind == kindCapped {
			expectCapped(t, s.created, later)
		}
	}
}

func expectNotStored(t *testing.T, later *certificatesv1.CertificateSigningRequest) {
	t.Helper()
	if later != nil {
		t.Errorf("refused, yet stored: %+v", later.Status)
	}
}

// expectDecision checks that csr holds exactly one decision, typ with
// reason, and that nodecsr recorded exactly one Event for it with the same
// reason.
func expectDecision(t *testing.T, csr *certificatesv1.CertificateSigningRequest, events map[string][]corev1.Event, typ certificatesv1.RequestConditionType, reason string) {
	t.Helper()
	if csr == nil {
		t.Error("the CSR is gone")
		return
	}
	ds := decisions(csr)
	if len(ds) != 1 || ds[0].Type != typ || ds[0].Reason != reason {
		t.Errorf("CSR %s: decisions %+v; want exactly one, %s/%s", csr.Name, ds, typ, reason)
		return
	}
	evs := events[csr.Name]
	wantType := corev1.EventTypeNormal
	if typ == certificatesv1.CertificateDenied {
		wantType = corev1.EventTypeWarning
	}
	if len(evs) != 1 || evs[0].Reason != reason || evs[0].Type != wantType || evs[0].ReportingController != approver.Component {
		t.Errorf("CSR %s: Events %s; want exactly one %s %s from %s", csr.Name, describe(evs), wantType, reason, approver.Component)
	}
}

func expectNeverApproved(t *testing.T, csr *certificatesv1.CertificateSigningRequest) {
	t.Helper()
	if approvedCondition(csr) || len(csr.Status.Certificate) != 0 {
		t.Errorf("CSR %s was APPROVED or issued: conditions %+v, certificate %d bytes", csr.Name, csr.Status.Conditions, len(csr.Status.Certificate))
	}
}

func expectCapped(t *testing.T, created, later *certificatesv1.CertificateSigningRequest) {
	t.Helper()
	if e := created.Spec.ExpirationSeconds; e == nil || *e != maxExpiration {
		t.Errorf("expirationSeconds after admission = %v, want capped to %d", e, maxExpiration)
	}
	cert := env.ParseCert(t, later.Status.Certificate)
	// The signer backdates notBefore a little; notAfter is at most the cap
	// after the CSR's creation (plus clock granularity).
	if limit := created.CreationTimestamp.Add(maxExpiration*time.Second + time.Minute); cert.NotAfter.After(limit) {
		t.Errorf("certificate valid until %s, after the cap (%s)", cert.NotAfter, limit)
	}
}

func describe(evs []corev1.Event) string {
	if len(evs) == 0 {
		return "none"
	}
	parts := make([]string, len(evs))
	for i, e := range evs {
		parts[i] = fmt.Sprintf("%s/%s from %q (%s)", e.Type, e.Reason, e.ReportingController, e.Message)
	}
	return strings.Join(parts, "; ")
}

// decideByHand writes a decision through the approval subresource as the
// admin (someone other than nodecsr).
func decideByHand(t *testing.T, name string, typ certificatesv1.RequestConditionType, reason string) {
	t.Helper()
	csrs := admin.CertificatesV1().CertificateSigningRequests()
	csr, err := csrs.Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	csr.Status.Conditions = append(csr.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{
		Type: typ, Status: corev1.ConditionTrue, Reason: reason, Message: "decided by hand in a test",
	})
	if _, err := csrs.UpdateApproval(t.Context(), name, csr, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}
