package approver

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	certificatesv1 "k8s.io/api/certificates/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/nodecsr/nodecsr/config"
	"github.com/nodecsr/nodecsr/internal/csrtest"
)

var updateSeeds = flag.Bool("update-fuzz-seeds", false, "rewrite testdata/fuzz/FuzzEvaluate from csrtest")

// FuzzEvaluate feeds arbitrary requests and requesters to Inspect and Decide
// with every fact favourable, so that anything the checks let through would
// be approved. It asserts that they never panic, are deterministic (a second
// Decide of the same Request and a fresh Inspect agree), agree with
// NodeNameOf, and never approve anything that an independent re-check finds
// ill-formed.
//
// The same request is also decided as a kubelet serving CSR (serving on,
// serving usages, the Node worker-1 of goodFacts(PathServing)): an approved
// one must name only that Node's addresses, and its requester must be the
// node itself.
func FuzzEvaluate(f *testing.F) {
	p := config.Default()
	sp := fuzzServingPolicy()
	f.Fuzz(func(t *testing.T, request []byte, username, groups string) {
		defer fuzzServing(t, sp, request, username, groups)
		csr := &certificatesv1.CertificateSigningRequest{Spec: certificatesv1.CertificateSigningRequestSpec{
			Request:    request,
			SignerName: certificatesv1.KubeAPIServerClientKubeletSignerName,
			Usages:     usagesDSCA,
			Username:   username,
		}}
		if groups != "" {
			csr.Spec.Groups = strings.Split(groups, ",")
		}
		r := Inspect(p, csr)
		facts := goodFacts(r.Path)
		d := Decide(p, r, facts)
		if d2 := Decide(p, r, facts); !reflect.DeepEqual(d, d2) {
			t.Fatalf("not deterministic:\n%+v\n%+v", d, d2)
		}
		if d3 := Decide(p, Inspect(p, csr), facts); !reflect.DeepEqual(d, d3) {
			t.Fatalf("a fresh inspection decides otherwise:\n%+v\n%+v", d, d3)
		}
		if d.Reason == "" || d.Message == "" || len(d.Message) > 1000 {
			t.Fatalf("bad reason or message: %q %q", d.Reason, d.Message)
		}
		if d.Verdict != Approve {
			return
		}
		if err := wellFormed(request, username, csr.Spec.Groups); err != nil {
			t.Fatalf("approved an ill-formed request: %v\n%+v", err, d)
		}
		if name, ok := NodeNameOf(csr); !ok || name != d.NodeName {
			t.Fatalf("NodeNameOf = %q, %v; decision says %q", name, ok, d.NodeName)
		}
	})
}

func fuzzServingPolicy() *config.Effective {
	src := config.Default().Source
	src.Spec.Serving.Enabled = true
	sp, err := config.Compile(&src)
	if err != nil {
		panic(err)
	}
	return sp
}

// fuzzServing decides the request as a serving CSR and re-checks an
// approval independently of the engine.
func fuzzServing(t *testing.T, sp *config.Effective, request []byte, username, groups string) {
	csr := &certificatesv1.CertificateSigningRequest{Spec: certificatesv1.CertificateSigningRequestSpec{
		Request:    request,
		SignerName: certificatesv1.KubeletServingSignerName,
		Usages:     csrtest.ServingUsages(),
		Username:   username,
	}}
	if groups != "" {
		csr.Spec.Groups = strings.Split(groups, ",")
	}
	r := Inspect(sp, csr)
	facts := goodFacts(r.Path)
	d := Decide(sp, r, facts)
	if d2 := Decide(sp, Inspect(sp, csr), facts); !reflect.DeepEqual(d, d2) {
		t.Fatalf("serving: not deterministic:\n%+v\n%+v", d, d2)
	}
	if d.Reason == "" || d.Message == "" || len(d.Message) > 1000 {
		t.Fatalf("serving: bad reason or message: %q %q", d.Reason, d.Message)
	}
	if d.Verdict != Approve {
		return
	}
	blk, _ := pem.Decode(bytes.TrimSpace(request))
	cr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		t.Fatalf("serving: approved a request crypto/x509 does not parse: %v", err)
	}
	na := NodeAddressesOf(servingNode)
	for _, ip := range cr.IPAddresses {
		a, _ := netip.AddrFromSlice(ip)
		if !slices.Contains(na.IPs, a.Unmap()) {
			t.Fatalf("serving: approved IP %s, not worker-1's", ip)
		}
	}
	for _, n := range cr.DNSNames {
		if !slices.Contains(na.DNSNames, n) {
			t.Fatalf("serving: approved DNS name %q, not worker-1's", n)
		}
	}
	switch {
	case len(cr.EmailAddresses)+len(cr.URIs) > 0, len(cr.DNSNames)+len(cr.IPAddresses) == 0:
		t.Fatalf("serving: approved SANs %v %v %v %v", cr.DNSNames, cr.IPAddresses, cr.EmailAddresses, cr.URIs)
	case cr.Subject.CommonName != username || username != "system:node:worker-1" || !slices.Contains(csr.Spec.Groups, "system:nodes"):
		t.Fatalf("serving: approved CN %q for requester %q in %v", cr.Subject.CommonName, username, csr.Spec.Groups)
	case !reflect.DeepEqual(cr.Subject.Organization, []string{"system:nodes"}):
		t.Fatalf("serving: approved organizations %v", cr.Subject.Organization)
	}
}

// wellFormed re-checks an approved request independently of the engine,
// against the default policy.
func wellFormed(request []byte, username string, groups []string) error {
	trimmed := bytes.TrimSpace(request)
	if !bytes.HasPrefix(trimmed, []byte("-----BEGIN CERTIFICATE REQUEST-----")) ||
		bytes.Count(trimmed, []byte("-----BEGIN")) != 1 || bytes.Count(trimmed, []byte("-----END")) != 1 {
		return fmt.Errorf("not exactly one CERTIFICATE REQUEST block")
	}
	blk, rest := pem.Decode(trimmed)
	if blk == nil || len(rest) != 0 || len(blk.Headers) != 0 || blk.Type != "CERTIFICATE REQUEST" {
		return fmt.Errorf("bad PEM")
	}
	cr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return fmt.Errorf("does not parse: %w", err)
	}
	if err := cr.CheckSignature(); err != nil {
		return fmt.Errorf("signature: %w", err)
	}
	switch cr.SignatureAlgorithm {
	case x509.SHA1WithRSA, x509.ECDSAWithSHA1, x509.MD5WithRSA:
		return fmt.Errorf("weak signature algorithm")
	}
	switch k := cr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("curve %s", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if b := k.N.BitLen(); b < 2048 || b > 4096 {
			return fmt.Errorf("RSA-%d", b)
		}
	default:
		return fmt.Errorf("key %T", k)
	}
	var rdns pkix.RDNSequence
	if rest, err := asn1.Unmarshal(cr.RawSubject, &rdns); err != nil || len(rest) != 0 || len(rdns) != 2 {
		return fmt.Errorf("subject is not two RDNs")
	}
	var cn, org string
	for _, rdn := range rdns {
		if len(rdn) != 1 {
			return fmt.Errorf("multi-valued RDN")
		}
		v, ok := rdn[0].Value.(string)
		switch {
		case !ok:
			return fmt.Errorf("non-string attribute")
		case rdn[0].Type.Equal(asn1.ObjectIdentifier{2, 5, 4, 3}) && cn == "":
			cn = v
		case rdn[0].Type.Equal(asn1.ObjectIdentifier{2, 5, 4, 10}) && org == "":
			org = v
		default:
			return fmt.Errorf("attribute %v", rdn[0].Type)
		}
	}
	name, ok := strings.CutPrefix(cn, "system:node:")
	if org != "system:nodes" || !ok || len(validation.IsDNS1123Subdomain(name)) > 0 {
		return fmt.Errorf("subject O=%q CN=%q", org, cn)
	}
	if len(cr.Extensions) != 0 || len(cr.DNSNames)+len(cr.IPAddresses)+len(cr.EmailAddresses)+len(cr.URIs) != 0 {
		return fmt.Errorf("extensions")
	}
	if username == cn {
		return nil
	}
	if strings.HasPrefix(username, "system:node:") {
		return fmt.Errorf("node %q approved for %q", username, cn)
	}
	for _, g := range groups {
		if g == "system:bootstrappers" {
			return nil
		}
	}
	return fmt.Errorf("requester %q %v is neither the node nor a bootstrapper", username, groups)
}

// TestWriteFuzzSeeds rewrites the committed seed corpus:
//
//	go test ./approver/ -run TestWriteFuzzSeeds -update-fuzz-seeds
func TestWriteFuzzSeeds(t *testing.T) {
	if !*updateSeeds {
		t.Skip("run with -update-fuzz-seeds to rewrite testdata/fuzz/FuzzEvaluate")
	}
	node := "system:node:worker-1"
	nodeGroups := "system:nodes,system:authenticated"
	boot, bootGroups := "system:bootstrap:abcdef", "system:bootstrappers,system:authenticated"
	seeds := map[string]struct {
		req             []byte
		username, group string
	}{
		"renewal-ecdsa-p256":     {csrtest.Request(), node, nodeGroups},
		"renewal-ecdsa-p384":     {csrtest.Request(ecKey(elliptic.P384())), node, nodeGroups},
		"renewal-rsa-2048":       {csrtest.Request(rsaKey(2048)), node, nodeGroups},
		"bootstrap-ecdsa":        {csrtest.Request(withNodeName("new-node")), boot, bootGroups},
		"bootstrap-other-name":   {csrtest.Request(withNodeName("control-plane-1")), boot, bootGroups},
		"node-for-another-node":  {csrtest.Request(withNodeName("worker-2")), node, nodeGroups},
		"ed25519":                {csrtest.Request(ed25519Key()), node, nodeGroups},
		"p224":                   {csrtest.Request(ecKey(elliptic.P224())), node, nodeGroups},
		"dns-san":                {csrtest.Request(withDNSSAN("a.example.com")), node, nodeGroups},
		"ou":                     {csrtest.Request(withSubjectAttr(csrtest.OIDOrganizationalUnit, "x")), node, nodeGroups},
		"masters":                {csrtest.Request(withOrg("system:nodes", "system:masters")), node, nodeGroups},
		"other-key":              {csrtest.Request(signedByOtherKey()), node, nodeGroups},
		"two-blocks":             {csrtest.Request(twoBlocks()), node, nodeGroups},
		"trailing-garbage":       {csrtest.Request(trailingGarbage()), node, nodeGroups},
		"trailing-der":           {csrtest.Request(trailingDER()), node, nodeGroups},
		"challenge-password":     {csrtest.Request(withAttribute(csrtest.OIDChallengePassword, "x")), node, nodeGroups},
		"multi-valued-rdn":       {csrtest.Request(withRawSubject(rawSubject([]pkix.AttributeTypeAndValue{atv(csrtest.OIDOrganization, "system:nodes"), atv(csrtest.OIDCommonName, node)}))), node, nodeGroups},
		"lookalike-name":         {csrtest.Request(withNodeName("w\u043erker-1")), "system:node:w\u043erker-1", nodeGroups},
		"not-pem":                {[]byte("hello"), node, nodeGroups},
		"empty":                  {nil, boot, bootGroups},
		"unrecognized-requester": {csrtest.Request(), "alice", "system:authenticated"},
		// Serving CSRs (FuzzEvaluate decides every request as one too).
		"serving-own-addresses":   {csrtest.Request(withServing("worker-1", "10.0.0.1", "fd00::1")), node, nodeGroups},
		"serving-neighbour-ip":    {csrtest.Request(withServing("worker-1", "10.0.0.2")), node, nodeGroups},
		"serving-wildcard-uri":    {csrtest.Request(withServing("*.worker-1", "10.0.0.1"), withURISAN("spiffe://x/y")), node, nodeGroups},
		"serving-by-bootstrapper": {csrtest.Request(withServing("worker-1")), boot, bootGroups},
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzEvaluate")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, s := range seeds {
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\nstring(%q)\nstring(%q)\n", s.req, s.username, s.group)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
