package requester

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
	"time"
)

// CertState is the state status reports for the current certificate.
type CertState string

// The states, each with its exit code (see ExitCode).
const (
	// StateOK: valid, before its rotation window.
	StateOK CertState = "ok"
	// StateRotationWindow: valid, between 70% and 90% of its lifetime; a
	// rotating requester renews it within this window.
	StateRotationWindow CertState = "rotation-window"
	// StateRotationOverdue: valid, but 90% or more of its lifetime has elapsed.
	StateRotationOverdue CertState = "rotation-overdue"
	// StateExpired: past NotAfter.
	StateExpired CertState = "expired"
	// StateNotYetValid: before NotBefore.
	StateNotYetValid CertState = "not-yet-valid"
	// StateKeyMismatch: the private key is missing or not the certificate's.
	StateKeyMismatch CertState = "key-mismatch"
	// StateMissing: no current certificate, or it cannot be read.
	StateMissing CertState = "missing"
)

// CertificateStatus is what `nodecsr-request status` reports.
type CertificateStatus struct {
	// Path is the kubelet-client-current.pem symlink.
	Path string `json:"path"`
	// File is the file the symlink points at.
	File string `json:"file,omitempty"`
	// State summarises the certificate; it decides the exit code.
	State CertState `json:"state"`
	// Error says why the certificate is missing, when it is.
	Error string `json:"error,omitempty"`

	Subject      string     `json:"subject,omitempty"`
	Issuer       string     `json:"issuer,omitempty"`
	SerialNumber string     `json:"serialNumber,omitempty"`
	NotBefore    *time.Time `json:"notBefore,omitempty"`
	NotAfter     *time.Time `json:"notAfter,omitempty"`
	// Remaining is NotAfter minus now (negative when expired), as a Go duration.
	Remaining string `json:"remaining,omitempty"`
	// RemainingSeconds is Remaining in whole seconds.
	RemainingSeconds int64 `json:"remainingSeconds"`
	// LifetimeElapsed is the fraction of the lifetime that has passed.
	LifetimeElapsed float64 `json:"lifetimeElapsed"`
	// RotationWindowStart and RotationWindowEnd are the 70% and 90% points.
	RotationWindowStart *time.Time `json:"rotationWindowStart,omitempty"`
	RotationWindowEnd   *time.Time `json:"rotationWindowEnd,omitempty"`
	// KeyAlgorithm is the certificate's public key algorithm.
	KeyAlgorithm string `json:"keyAlgorithm,omitempty"`
	// KeyMatches says whether the private key belongs to the certificate.
	KeyMatches bool `json:"keyMatches"`
}

// Status inspects the current certificate in the store at now.
func Status(s *Store, now time.Time) *CertificateStatus {
	st := &CertificateStatus{Path: s.CurrentPath()}
	pair, err := s.Current()
	if err != nil {
		st.State, st.Error = StateMissing, err.Error()
		return st
	}
	leaf := pair.Leaf()
	nb, na := leaf.NotBefore.UTC(), leaf.NotAfter.UTC()
	ws, we := RotationWindow(nb, na)
	ws, we = ws.UTC(), we.UTC()
	st.File = pair.Path
	st.Subject = leaf.Subject.String()
	st.Issuer = leaf.Issuer.String()
	st.SerialNumber = leaf.SerialNumber.Text(16)
	st.NotBefore, st.NotAfter = &nb, &na
	st.RotationWindowStart, st.RotationWindowEnd = &ws, &we
	remaining := na.Sub(now).Truncate(time.Second)
	st.Remaining, st.RemainingSeconds = remaining.String(), int64(remaining/time.Second)
	if total := na.Sub(nb); total > 0 {
		st.LifetimeElapsed = math.Round(float64(now.Sub(nb))/float64(total)*1000) / 1000
	}
	st.KeyAlgorithm = describeKey(leaf.PublicKey)
	st.KeyMatches = pair.KeyMatches()

	switch {
	case now.After(na):
		st.State = StateExpired
	case now.Before(nb):
		st.State = StateNotYetValid
	case !st.KeyMatches:
		st.State = StateKeyMismatch
	case !now.Before(we):
		st.State = StateRotationOverdue
	case !now.Before(ws):
		st.State = StateRotationWindow
	default:
		st.State = StateOK
	}
	return st
}

// Err is the error whose exit code reports the state; nil for a certificate
// that is fine (ok, or inside its rotation window).
func (st *CertificateStatus) Err() error {
	switch st.State {
	case StateOK, StateRotationWindow:
		return nil
	case StateMissing:
		return &CertificateStateError{State: st.State, Detail: strings.TrimPrefix(st.Error, ErrNoCertificate.Error()+": ")}
	case StateExpired:
		return &CertificateStateError{State: st.State, Detail: "expired at " + st.NotAfter.Format(time.RFC3339)}
	case StateNotYetValid:
		return &CertificateStateError{State: st.State, Detail: "valid from " + st.NotBefore.Format(time.RFC3339)}
	case StateKeyMismatch:
		return &CertificateStateError{State: st.State, Detail: "the private key in " + st.File + " does not belong to the certificate"}
	case StateRotationOverdue:
		return &CertificateStateError{State: st.State, Detail: fmt.Sprintf("%.0f%% of its lifetime has elapsed; it should have been renewed by %s", st.LifetimeElapsed*100, st.RotationWindowEnd.Format(time.RFC3339))}
	}
	return &CertificateStateError{State: st.State}
}

// Write prints the status as text or json.
func (st *CertificateStatus) Write(w io.Writer, format string) error {
	if format == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	row("path", st.Path)
	if st.State == StateMissing {
		row("state", string(st.State))
		row("error", st.Error)
		return tw.Flush()
	}
	row("file", st.File)
	row("subject", st.Subject)
	row("issuer", st.Issuer)
	row("serial", st.SerialNumber)
	row("not before", st.NotBefore.Format(time.RFC3339))
	row("not after", st.NotAfter.Format(time.RFC3339))
	row("remaining", fmt.Sprintf("%s (%.1f%% of the lifetime elapsed)", st.Remaining, st.LifetimeElapsed*100))
	row("rotation window", fmt.Sprintf("%s to %s (70%% to 90%% of the lifetime)", st.RotationWindowStart.Format(time.RFC3339), st.RotationWindowEnd.Format(time.RFC3339)))
	key := "does NOT match the certificate"
	if st.KeyMatches {
		key = "matches the certificate"
	}
	row("private key", st.KeyAlgorithm+", "+key)
	row("state", string(st.State))
	return tw.Flush()
}

func describeKey(pub any) string {
	if alg := AlgorithmOf(pub); alg != "" {
		return string(alg)
	}
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return "ecdsa-" + strings.ToLower(k.Curve.Params().Name)
	case *rsa.PublicKey:
		return fmt.Sprintf("rsa-%d", k.N.BitLen())
	}
	return fmt.Sprintf("%T", pub)
}
