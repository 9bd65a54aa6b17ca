package requester

import (
	"context"
	"crypto/sha256"
	"errors"
	"time"

	"k8s.io/klog/v2"
)

// The retry backoff; the same numbers as client-go's certificate manager.
const (
	backoffBase   = 2 * time.Second
	backoffCap    = 5 * time.Minute
	backoffJitter = 0.1
	// maxSleep bounds one wait of the rotation loop, so that a suspended
	// machine or a clock jump is noticed within this long.
	maxSleep = 5 * time.Minute
)

// RotationDeadline is when a certificate valid from notBefore to notAfter
// should be renewed: at 70% of its lifetime plus jitter (in [0, 1]) times
// 20%, so a random point between 70% and 90% for a uniform jitter, as
// client-go's certificate manager computes it (nextRotationDeadline). Jitter
// outside [0, 1] is clamped; a certificate with no lifetime rotates at
// notBefore.
func RotationDeadline(notBefore, notAfter time.Time, jitter float64) time.Time {
	total := notAfter.Sub(notBefore)
	if total <= 0 {
		return notBefore
	}
	jitter = min(max(jitter, 0), 1)
	// The window's ends in integer arithmetic (exact, no overflow), floating
	// point only for the jittered part.
	start := total/10*7 + total%10*7/10
	end := total/10*9 + total%10*9/10
	return notBefore.Add(start + time.Duration(float64(end-start)*jitter))
}

// RotationWindow is the span within which RotationDeadline falls: the points
// at 70% and 90% of the certificate's lifetime.
func RotationWindow(notBefore, notAfter time.Time) (start, end time.Time) {
	return RotationDeadline(notBefore, notAfter, 0), RotationDeadline(notBefore, notAfter, 1)
}

// Backoff is the wait after the given number of consecutive failures (1 for
// the first): 2s doubling each time, capped at 5 minutes, shortened by up to
// 10% by jitter (in [0, 1]) so that nodes that failed together spread out.
func Backoff(failures int, jitter float64) time.Duration {
	if failures < 1 {
		return 0
	}
	d := backoffCap
	if failures <= 20 { // 2s << 20 is far past the cap; avoids overflow
		d = min(backoffBase<<(failures-1), backoffCap)
	}
	jitter = min(max(jitter, 0), 1)
	return d - time.Duration(float64(d)*backoffJitter*jitter)
}

// Rotate keeps the certificate fresh until ctx ends: it requests one at once
// when there is no valid certificate, otherwise at the certificate's rotation
// deadline, and retries failed requests with Backoff. It returns nil when ctx
// ends and an error only for a configuration error, which retrying cannot fix.
func (r *Requester) Rotate(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	var (
		failures     int
		deadline     time.Time
		deadlineFor  [sha256.Size]byte
		wroteConfig  bool
		haveDeadline bool
	)
	for ctx.Err() == nil {
		if cur, err := r.store.Current(); err == nil && cur.ValidAt(r.clock.Now()) {
			if fp := sha256.Sum256(cur.Leaf().Raw); !haveDeadline || fp != deadlineFor {
				leaf := cur.Leaf()
				deadline, deadlineFor, haveDeadline = RotationDeadline(leaf.NotBefore, leaf.NotAfter, r.jitter()), fp, true
				if deadline.After(r.clock.Now()) {
					logger.Info("Next certificate rotation", "deadline", deadline, "notAfter", leaf.NotAfter)
				} else {
					logger.Info("The certificate is due for rotation; renewing now", "deadline", deadline, "notAfter", leaf.NotAfter)
				}
			}
			if !wroteConfig && r.opts.WriteKubeconfig != "" {
				if err := r.writeKubeconfigFor(ctx, cur); err != nil {
					logger.Info("Could not write the kubeconfig", "err", err)
				}
				wroteConfig = true
			}
			if wait := deadline.Sub(r.clock.Now()); wait > 0 {
				r.sleep(ctx, min(wait, maxSleep))
				continue
			}
		}
		_, err := r.RequestOnce(ctx)
		if ctx.Err() != nil {
			break
		}
		if err != nil {
			var usage *UsageError
			if errors.As(err, &usage) {
				return err
			}
			failures++
			wait := Backoff(failures, r.jitter())
			logger.Error(err, "Certificate request failed; retrying", "failures", failures, "retryIn", wait)
			r.sleep(ctx, wait)
			continue
		}
		failures = 0
		wroteConfig = true
	}
	logger.Info("Stopping certificate rotation")
	return nil
}

func (r *Requester) writeKubeconfigFor(ctx context.Context, cur *Pair) error {
	creds, err := chooseCredentials(ctx, r.opts, cur, r.clock.Now())
	if err != nil {
		return err
	}
	return writeKubeconfig(r.opts.WriteKubeconfig, creds.Server, r.store.CurrentPath())
}

func (r *Requester) sleep(ctx context.Context, d time.Duration) {
	t := r.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C():
	}
}
