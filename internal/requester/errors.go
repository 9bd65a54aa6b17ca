package requester

import (
	"errors"
	"fmt"
	"time"
)

// Exit codes of nodecsr-request. ExitCode is the only place that maps errors
// to them; the help text and docs/nodecsr-request.md list them.
const (
	// ExitOK: the certificate was issued (or, for status, is valid and not past its rotation window).
	ExitOK = 0
	// ExitError: any other error (API server unreachable, unexpected response, I/O error).
	ExitError = 1
	// ExitUsage: wrong flags or configuration (bad flag value, unreadable kubeconfig, no usable credentials).
	ExitUsage = 2
	// ExitDenied: the CSR was denied.
	ExitDenied = 3
	// ExitFailed: the signer reported the CSR as Failed.
	ExitFailed = 4
	// ExitTimedOut: the certificate was not issued within --timeout.
	ExitTimedOut = 5
	// ExitMissing (status): there is no current certificate, or it cannot be read.
	ExitMissing = 6
	// ExitExpired (status): the current certificate has expired or is not yet valid.
	ExitExpired = 7
	// ExitRotationOverdue (status): at least 90% of the certificate's lifetime has elapsed.
	ExitRotationOverdue = 8
	// ExitKeyMismatch (status): the private key does not belong to the certificate.
	ExitKeyMismatch = 9
)

// exitCodeHelp is the exit-code table shown in --help.
const exitCodeHelp = `Exit codes:
  0  certificate issued (status: valid and not past its rotation window)
  1  other error (API server unreachable, unexpected response, I/O error)
  2  usage or configuration error
  3  the CSR was denied (the approver's reason and message are printed)
  4  the signer reported the CSR as Failed
  5  timed out waiting for the certificate (--timeout)
  6  status: no current certificate, or it cannot be read
  7  status: the current certificate has expired or is not yet valid
  8  status: the certificate is past its rotation window (>= 90% of its lifetime elapsed)
  9  status: the private key does not match the certificate`

// UsageError is a wrong flag or configuration: nothing was attempted against
// the API server.
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

func usageErrorf(format string, args ...any) error {
	return &UsageError{Err: fmt.Errorf(format, args...)}
}

// DeniedError is a CSR that was denied; Reason and Message come from the
// Denied condition the approver wrote.
type DeniedError struct {
	CSR     string
	Reason  string
	Message string
}

func (e *DeniedError) Error() string {
	return fmt.Sprintf("denied: %s: %s (CSR %s)", orUnknown(e.Reason), e.Message, e.CSR)
}

// FailedError is a CSR the signer marked Failed.
type FailedError struct {
	CSR     string
	Reason  string
	Message string
}

func (e *FailedError) Error() string {
	return fmt.Sprintf("failed: %s: %s (CSR %s)", orUnknown(e.Reason), e.Message, e.CSR)
}

// TimeoutError is a certificate that was not issued within --timeout.
type TimeoutError struct {
	CSR    string
	Waited time.Duration
	// State is what the CSR looked like when the wait ended ("pending",
	// "approved, not yet signed"), empty when unknown.
	State string
}

func (e *TimeoutError) Error() string {
	msg := fmt.Sprintf("timed out after %s waiting for CSR %s to be issued", e.Waited, e.CSR)
	if e.State != "" {
		msg += " (" + e.State + ")"
	}
	return msg
}

// CertificateStateError is a current certificate that status finds unusable
// or due for rotation.
type CertificateStateError struct {
	State  CertState
	Detail string
}

func (e *CertificateStateError) Error() string {
	if e.Detail == "" {
		return "certificate " + string(e.State)
	}
	return fmt.Sprintf("certificate %s: %s", e.State, e.Detail)
}

// ExitCode maps an error returned by the command tree to the process exit code.
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var (
		usage   *UsageError
		denied  *DeniedError
		failed  *FailedError
		timeout *TimeoutError
		state   *CertificateStateError
	)
	switch {
	case errors.As(err, &usage):
		return ExitUsage
	case errors.As(err, &denied):
		return ExitDenied
	case errors.As(err, &failed):
		return ExitFailed
	case errors.As(err, &timeout):
		return ExitTimedOut
	case errors.As(err, &state):
		switch state.State {
		case StateMissing:
			return ExitMissing
		case StateExpired, StateNotYetValid:
			return ExitExpired
		case StateRotationOverdue:
			return ExitRotationOverdue
		case StateKeyMismatch:
			return ExitKeyMismatch
		}
		return ExitError
	default:
		return ExitError
	}
}

func orUnknown(s string) string {
	if s == "" {
		return "(no reason given)"
	}
	return s
}
