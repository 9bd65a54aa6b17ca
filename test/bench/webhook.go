package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodecsr/nodecsr/test/cluster"
	"github.com/nodecsr/nodecsr/webhook"
)

// webhookResult compares the latency of creating a kubelet client CSR
// through the API server with and without nodecsr's admission webhooks
// (mutating and validating, both on CREATE) registered.
type webhookResult struct {
	// Skipped says why nothing was measured.
	Skipped string `json:"skipped,omitempty"`
	// PerBlock creates are made one after another per block; blocks
	// alternate without/with for Rounds rounds so that drift cancels out.
	PerBlock int     `json:"perBlock"`
	Rounds   int     `json:"rounds"`
	Without  latency `json:"without"`
	With     latency `json:"with"`
	// RatioP50 and RatioMean are With over Without.
	RatioP50  float64 `json:"ratioP50"`
	RatioMean float64 `json:"ratioMean"`
	// RoundRatiosP50 is the p50 ratio of each round.
	RoundRatiosP50 []float64 `json:"roundRatiosP50"`
	// WebhookCallMillis is the API server's mean time per webhook call
	// (apiserver_admission_webhook_admission_duration_seconds), by webhook.
	WebhookCallMillis map[string]float64 `json:"webhookCallMillis,omitempty"`
	// HandlerMillis is nodecsr's mean time per webhook request
	// (controller_runtime_webhook_latency_seconds), by path.
	HandlerMillis map[string]float64 `json:"handlerMillis,omitempty"`
	Settings      string             `json:"settings"`
}

// webhookFlags are the flags the bench needs from nodecsr-controller.
var webhookFlags = []string{"--webhook-cert-dir", "--webhook-port"}

// controllerMissingFlags reports which of flags the built nodecsr-controller lacks.
func (e *env) controllerMissingFlags(flags ...string) ([]string, error) {
	out, err := exec.Command(e.controllerBin, "--help").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("nodecsr-controller --help: %w\n%s", err, out)
	}
	var missing []string
	for _, f := range flags {
		if !strings.Contains(string(out), f+" ") {
			missing = append(missing, f)
		}
	}
	return missing, nil
}

func (e *env) runWebhook(ctx context.Context, o *options) (*webhookResult, error) {
	res := &webhookResult{PerBlock: o.webhookN, Rounds: o.webhookRounds}
	missing, err := e.controllerMissingFlags(webhookFlags...)
	if err != nil {
		return nil, err
	}
	if len(missing) > 0 {
		res.Skipped = fmt.Sprintf("not measured: nodecsr-controller has no %s flag yet (the webhook package is not wired into the binary)", strings.Join(missing, ", "))
		e.logf("webhook: %s", res.Skipped)
		return res, nil
	}
	missingOptional, err := e.controllerMissingFlags("--webhook-host", "--self-username")
	if err != nil {
		return nil, err
	}

	// Serving certificate for 127.0.0.1 from the cluster CA.
	certDir := filepath.Join(e.dir, "webhook-certs")
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		return nil, err
	}
	serving, err := e.c.ClusterCA().IssueServing("127.0.0.1")
	if err != nil {
		return nil, err
	}
	if _, _, err := serving.WriteFiles(certDir, "tls"); err != nil { // tls.crt, tls.key as a mounted Secret
		return nil, err
	}
	port, err := cluster.FreePort()
	if err != nil {
		return nil, err
	}
	self, err := adminUsername(e.c.AdminConfig().CertData)
	if err != nil {
		return nil, err
	}
	args := []string{fmt.Sprintf("--webhook-port=%d", port), "--webhook-cert-dir=" + certDir}
	if !contains(missingOptional, "--webhook-host") {
		args = append(args, "--webhook-host=127.0.0.1")
	}
	if !contains(missingOptional, "--self-username") {
		args = append(args, "--self-username="+self)
	}
	res.Settings = "nodecsr-controller --webhook-port=<free port> --webhook-cert-dir=<tls.crt, tls.key for 127.0.0.1>"
	if !contains(missingOptional, "--webhook-host") {
		res.Settings += " --webhook-host=127.0.0.1"
	}
	if !contains(missingOptional, "--self-username") {
		res.Settings += " --self-username=<the admin user it runs as>"
	}
	res.Settings += ", defaults otherwise; webhook configurations with failurePolicy Ignore, timeout 3 s, match conditions on the signer"
	if err := e.ensureSigning(ctx); err != nil {
		return nil, err
	}
	c, err := e.startController("nodecsr-webhook", args...)
	if err != nil {
		return nil, err
	}
	defer c.stop(10 * time.Second)
	if err := c.waitReady(ctx, time.Minute); err != nil {
		return nil, err
	}

	const group, nodes = "webhook", 20
	for i := range nodes {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("bench-wh-%02d", i), Labels: map[string]string{groupLabel: group}}}
		if _, err := e.admin.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, err
		}
	}
	defer func() {
		if err := e.cleanupGroup(context.WithoutCancel(ctx), group); err != nil {
			e.logf("cleanup of %s: %v", group, err)
		}
		e.unregisterWebhooks(context.WithoutCancel(ctx))
	}()

	opts := webhook.ConfigOptions{Name: "nodecsr-bench", CABundle: e.c.ClusterCA().CertPEM, URL: fmt.Sprintf("https://%s", cluster.HostPort(port)), Self: self}
	mwc, err := webhook.MutatingWebhookConfiguration(opts)
	if err != nil {
		return nil, err
	}
	vwc, err := webhook.ValidatingWebhookConfiguration(opts)
	if err != nil {
		return nil, err
	}

	seq := 0
	createOne := func() (time.Duration, *certificatesv1.CertificateSigningRequest, error) {
		seq++
		node := fmt.Sprintf("bench-wh-%02d", seq%nodes)
		csr := kubeletCSR(node, group)
		csr.Name = fmt.Sprintf("bench-wh-%05d", seq)
		var out certificatesv1.CertificateSigningRequest
		t := time.Now()
		err := e.createAsNode(ctx, node, csr, &out)
		return time.Since(t), &out, err
	}
	// The API server picks up webhook configurations from a watch: probe
	// until the mutating webhook's label shows (or stops showing).
	waitEffective := func(want bool) error {
		deadline := time.Now().Add(30 * time.Second)
		for {
			_, out, err := createOne()
			if err != nil {
				return err
			}
			if _, labelled := out.Labels[webhook.LabelNodeName]; labelled == want {
				time.Sleep(time.Second) // the validating configuration too
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("the webhook configurations did not take effect (want registered=%v) within 30s", want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	block := func() ([]time.Duration, error) {
		ds := make([]time.Duration, 0, o.webhookN)
		for range o.webhookN {
			d, _, err := createOne()
			if err != nil {
				return nil, err
			}
			ds = append(ds, d)
		}
		return ds, nil
	}
	register := func() error {
		if _, err := e.admin.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, mwc.DeepCopy(), metav1.CreateOptions{}); err != nil {
			return err
		}
		if _, err := e.admin.AdmissionregistrationV1().ValidatingWebhookConfigurations().Create(ctx, vwc.DeepCopy(), metav1.CreateOptions{}); err != nil {
			return err
		}
		return waitEffective(true)
	}
	unregister := func() error {
		e.unregisterWebhooks(ctx)
		return waitEffective(false)
	}

	// Warm up both paths (connections, caches) before measuring.
	if _, err := block(); err != nil {
		return nil, err
	}
	if err := register(); err != nil {
		return nil, err
	}
	if _, err := block(); err != nil {
		return nil, err
	}
	registered := true
	beforeAPI, err := apiServerMetrics(ctx, e.admin)
	if err != nil {
		return nil, err
	}
	beforeCtl, err := c.metrics(ctx)
	if err != nil {
		return nil, err
	}
	var without, with []time.Duration
	for r := range o.webhookRounds {
		var w, wo []time.Duration
		// Alternate the order: without-with, with-without, ...
		for _, on := range []bool{r%2 == 1, r%2 == 0} {
			if on != registered {
				if on {
					err = register()
				} else {
					err = unregister()
				}
				if err != nil {
					return nil, err
				}
				registered = on
			}
			ds, err := block()
			if err != nil {
				return nil, err
			}
			if on {
				w = ds
			} else {
				wo = ds
			}
		}
		with, without = append(with, w...), append(without, wo...)
		rr := ratio(summarize(w).P50, summarize(wo).P50)
		res.RoundRatiosP50 = append(res.RoundRatiosP50, rr)
		e.logf("webhook: round %d: p50 %.2f ms with, %.2f ms without (%.2fx)", r+1, 1000*summarize(w).P50, 1000*summarize(wo).P50, rr)
	}
	afterAPI, err := apiServerMetrics(ctx, e.admin)
	if err != nil {
		return nil, err
	}
	afterCtl, err := c.metrics(ctx)
	if err != nil {
		return nil, err
	}
	res.With, res.Without = summarize(with), summarize(without)
	res.RatioP50, res.RatioMean = ratio(res.With.P50, res.Without.P50), ratio(res.With.Mean, res.Without.Mean)
	res.WebhookCallMillis = meanBy(beforeAPI, afterAPI, "apiserver_admission_webhook_admission_duration_seconds", "name")
	res.HandlerMillis = meanBy(beforeCtl, afterCtl, "controller_runtime_webhook_latency_seconds", "webhook")
	return res, nil
}

func (e *env) unregisterWebhooks(ctx context.Context) {
	err := e.admin.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(ctx, "nodecsr-bench", metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		e.logf("webhook: %v", err)
	}
	err = e.admin.AdmissionregistrationV1().ValidatingWebhookConfigurations().Delete(ctx, "nodecsr-bench", metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		e.logf("webhook: %v", err)
	}
}

// meanBy is the mean of a histogram between two scrapes, in milliseconds, by one label.
func meanBy(before, after samples, histogram, label string) map[string]float64 {
	sums, counts := map[string]float64{}, map[string]float64{}
	for _, set := range []struct {
		ss   samples
		sign float64
	}{{before, -1}, {after, 1}} {
		for _, s := range set.ss {
			switch s.name {
			case histogram + "_sum":
				sums[s.labels[label]] += set.sign * s.value
			case histogram + "_count":
				counts[s.labels[label]] += set.sign * s.value
			}
		}
	}
	out := map[string]float64{}
	for k, n := range counts {
		if n > 0 {
			out[k] = 1000 * sums[k] / n
		}
	}
	return out
}

// adminUsername is the common name of the admin client certificate.
func adminUsername(certPEM []byte) (string, error) {
	blk, _ := pem.Decode(certPEM)
	if blk == nil {
		return "", errors.New("the admin certificate is not PEM")
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return "", err
	}
	return cert.Subject.CommonName, nil
}
