package requester

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	certutil "k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/keyutil"
	"k8s.io/klog/v2"
)

// File names in the certificate directory; the same as kubelet's
// (k8s.io/client-go/util/certificate FileStore with the prefix
// "kubelet-client", and kubelet's bootstrap key file).
const (
	pairPrefix = "kubelet-client"
	// CurrentFile is the symlink to the certificate and key in use.
	CurrentFile = pairPrefix + "-current.pem"
	// updatedFile is the symlink built next to CurrentFile and renamed over it.
	updatedFile = pairPrefix + "-updated.pem"
	// PendingKeyFile holds the private key of a request that has not been
	// issued yet; a restarted run reuses it and so finds its own CSR.
	PendingKeyFile = pairPrefix + ".key.tmp"
	// timestampLayout names each issued pair, kubelet-client-<timestamp>.pem.
	timestampLayout = "2006-01-02-15-04-05"
	// tempMarker is in the name of every temporary file this package writes,
	// so a crash leaves only files that are recognisably incomplete.
	tempMarker = ".tmp-"
)

// ErrNoCertificate means there is no readable current certificate.
var ErrNoCertificate = errors.New("no current certificate")

// Store keeps the node's client certificate and key in kubelet's layout:
// every issued pair in its own kubelet-client-<timestamp>.pem (certificate
// chain and key, 0600), and the kubelet-client-current.pem symlink pointing
// at the one in use. It is meant for a single writer per directory.
//
// Unlike client-go's FileStore (whose layout it shares) it never writes a file
// in place: every file is written under a temporary name, synced, renamed into
// place and the directory synced, and the symlink is replaced by renaming a
// new one over it, so a crash at any point leaves either the old or the new
// certificate current, never a partial file.
type Store struct {
	// Dir is the certificate directory.
	Dir string
	now func() time.Time
}

// NewStore returns a Store for dir that names files by now's time.
func NewStore(dir string, now func() time.Time) *Store {
	return &Store{Dir: dir, now: now}
}

// CurrentPath is the path of the kubelet-client-current.pem symlink.
func (s *Store) CurrentPath() string { return filepath.Join(s.Dir, CurrentFile) }

// PendingKeyPath is the path of the pending private key.
func (s *Store) PendingKeyPath() string { return filepath.Join(s.Dir, PendingKeyFile) }

func (s *Store) path(name string) string { return filepath.Join(s.Dir, name) }

// Pair is a certificate chain and its private key read from one file.
type Pair struct {
	// Path is the file the pair was read from (the symlink's target).
	Path string
	// Certs is the chain, leaf first.
	Certs []*x509.Certificate
	// Key is the private key; nil when the file holds none.
	Key crypto.Signer
	// CertPEM and KeyPEM are the PEM encodings of Certs and Key.
	CertPEM, KeyPEM []byte
}

// Leaf is the pair's certificate.
func (p *Pair) Leaf() *x509.Certificate { return p.Certs[0] }

// KeyMatches reports whether the private key belongs to the certificate.
func (p *Pair) KeyMatches() bool {
	if p.Key == nil {
		return false
	}
	pub, ok := p.Key.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(p.Leaf().PublicKey)
}

// ValidAt reports whether the pair can authenticate at t: the key matches and
// t is within the certificate's validity.
func (p *Pair) ValidAt(t time.Time) bool {
	leaf := p.Leaf()
	return p.KeyMatches() && !t.Before(leaf.NotBefore) && !t.After(leaf.NotAfter)
}

// LoadPair reads a file holding PEM certificates and a private key.
func LoadPair(path string) (*Pair, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	certs, err := certutil.ParseCertsPEM(data)
	if err != nil {
		return nil, fmt.Errorf("failed to parse certificates in %s: %w", path, err)
	}
	p := &Pair{Path: path, Certs: certs}
	for _, c := range certs {
		p.CertPEM = append(p.CertPEM, pem.EncodeToMemory(&pem.Block{Type: certutil.CertificateBlockType, Bytes: c.Raw})...)
	}
	key, err := keyutil.ParsePrivateKeyPEM(data)
	if err != nil {
		// The certificate is still worth reporting (status); the pair just
		// cannot authenticate.
		return p, nil
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return p, nil
	}
	p.Key = signer
	if p.KeyPEM, err = keyutil.MarshalPrivateKeyToPEM(key); err != nil {
		return nil, fmt.Errorf("failed to encode the private key in %s: %w", path, err)
	}
	return p, nil
}

// Current reads the pair kubelet-client-current.pem points at. It returns an
// error wrapping ErrNoCertificate when there is none, including when the
// symlink dangles.
func (s *Store) Current() (*Pair, error) {
	cur := s.CurrentPath()
	p, err := LoadPair(cur)
	if err == nil {
		if target, err := filepath.EvalSymlinks(cur); err == nil {
			p.Path = target
		}
		return p, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if target, lerr := os.Readlink(cur); lerr == nil {
		return nil, fmt.Errorf("%w: %s points to %s, which does not exist", ErrNoCertificate, cur, target)
	}
	return nil, fmt.Errorf("%w: %s does not exist", ErrNoCertificate, cur)
}

// Recover repairs what an interrupted Update can leave behind: when
// kubelet-client-current.pem is missing or dangles but
// kubelet-client-updated.pem points at a readable pair, the latter becomes
// current (as client-go's FileStore does on start); temporary files are
// removed. A timestamped file that no symlink points at is left alone: it is
// not used, and the next request finds its CSR again through the pending key.
func (s *Store) Recover(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	entries, err := os.ReadDir(s.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("failed to read %s: %w", s.Dir, err)
	}
	for _, e := range entries {
		if n := e.Name(); strings.HasPrefix(n, "."+pairPrefix) && strings.Contains(n, tempMarker) {
			logger.V(1).Info("Removing a temporary file left by an interrupted write", "file", n)
			if err := os.Remove(s.path(n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("failed to remove %s: %w", n, err)
			}
		}
	}
	if _, err := os.Stat(s.CurrentPath()); !errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	updated := s.path(updatedFile)
	fi, err := os.Lstat(updated)
	if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
		return nil
	}
	if _, err := LoadPair(updated); err != nil {
		return nil
	}
	logger.Info("Completing an interrupted certificate update", "from", updated, "to", s.CurrentPath())
	if err := os.Rename(updated, s.CurrentPath()); err != nil {
		return fmt.Errorf("failed to rename %s to %s: %w", updated, s.CurrentPath(), err)
	}
	return syncDir(s.Dir)
}

// Update stores a newly issued certificate chain with its key as
// kubelet-client-<timestamp>.pem and points kubelet-client-current.pem at it.
// It refuses a certificate that is not for key.
func (s *Store) Update(certPEM []byte, key crypto.Signer) (*Pair, error) {
	certs, err := certutil.ParseCertsPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("failed to parse the issued certificate: %w", err)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(certs[0].PublicKey) {
		return nil, errors.New("the issued certificate is not for the requested key")
	}
	keyPEM, err := keyutil.MarshalPrivateKeyToPEM(key)
	if err != nil {
		return nil, fmt.Errorf("failed to encode the private key: %w", err)
	}
	var data []byte
	for _, c := range certs {
		data = append(data, pem.EncodeToMemory(&pem.Block{Type: certutil.CertificateBlockType, Bytes: c.Raw})...)
	}
	data = append(data, keyPEM...)

	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("failed to create %s: %w", s.Dir, err)
	}
	name, err := s.newPairName()
	if err != nil {
		return nil, err
	}
	target := s.path(name)
	if err := writeFileAtomic(target, data, 0o600); err != nil {
		return nil, err
	}
	if err := s.pointCurrentAt(target); err != nil {
		return nil, err
	}
	return s.Current()
}

// newPairName returns kubelet-client-<timestamp>.pem, with a counter when a
// file of that name exists (two updates within a second must not overwrite
// the file the current symlink may point at).
func (s *Store) newPairName() (string, error) {
	base := pairPrefix + "-" + s.now().Format(timestampLayout)
	for i := 0; i < 1000; i++ {
		name := base + ".pem"
		if i > 0 {
			name = fmt.Sprintf("%s-%d.pem", base, i)
		}
		if _, err := os.Lstat(s.path(name)); errors.Is(err, fs.ErrNotExist) {
			return name, nil
		} else if err != nil {
			return "", fmt.Errorf("failed to check %s: %w", name, err)
		}
	}
	return "", fmt.Errorf("too many certificate files named %s*.pem", base)
}

// pointCurrentAt replaces the current symlink atomically: a new symlink
// kubelet-client-updated.pem is renamed over kubelet-client-current.pem. The
// target is absolute, as kubelet writes it.
func (s *Store) pointCurrentAt(target string) error {
	updated := s.path(updatedFile)
	if err := os.Remove(updated); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("failed to remove a stale %s: %w", updated, err)
	}
	if err := os.Symlink(target, updated); err != nil {
		return fmt.Errorf("failed to create symlink %s: %w", updated, err)
	}
	if err := os.Rename(updated, s.CurrentPath()); err != nil {
		return fmt.Errorf("failed to rename %s to %s: %w", updated, s.CurrentPath(), err)
	}
	return syncDir(s.Dir)
}

// PendingKey returns the private key for the next request. It reuses the key
// in kubelet-client.key.tmp when that is of the wanted algorithm and is not
// the key of the current certificate (an update that finished but was
// interrupted before removing it); otherwise it generates a new key and writes
// it there (0600) before returning, so that the CSR made from it can be found
// again after a crash.
func (s *Store) PendingKey(ctx context.Context, alg KeyAlgorithm, current crypto.PublicKey) (key crypto.Signer, reused bool, err error) {
	logger := klog.FromContext(ctx)
	path := s.PendingKeyPath()
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		k, reason := usablePendingKey(data, alg, current)
		if k != nil {
			return k, true, nil
		}
		logger.Info("Not reusing the pending private key", "file", path, "reason", reason)
	case !errors.Is(err, fs.ErrNotExist):
		return nil, false, fmt.Errorf("failed to read %s: %w", path, err)
	}
	if key, err = GenerateKey(alg); err != nil {
		return nil, false, fmt.Errorf("failed to generate a %s key: %w", alg, err)
	}
	keyPEM, err := keyutil.MarshalPrivateKeyToPEM(key)
	if err != nil {
		return nil, false, fmt.Errorf("failed to encode the private key: %w", err)
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return nil, false, fmt.Errorf("failed to create %s: %w", s.Dir, err)
	}
	if err := writeFileAtomic(path, keyPEM, 0o600); err != nil {
		return nil, false, err
	}
	return key, false, nil
}

func usablePendingKey(data []byte, alg KeyAlgorithm, current crypto.PublicKey) (crypto.Signer, string) {
	k, err := keyutil.ParsePrivateKeyPEM(data)
	if err != nil {
		return nil, "unreadable: " + err.Error()
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, "not a signing key"
	}
	if got := AlgorithmOf(signer.Public()); got != alg {
		return nil, fmt.Sprintf("it is %s, not %s", orUnknown(string(got)), alg)
	}
	if pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool }); ok && current != nil && pub.Equal(current) {
		return nil, "it is the key of the current certificate (already issued)"
	}
	return signer, ""
}

// DiscardPendingKey removes the pending key: after issuance, or after a
// denial so that the next run files a fresh request.
func (s *Store) DiscardPendingKey() error {
	if err := os.Remove(s.PendingKeyPath()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("failed to remove %s: %w", s.PendingKeyPath(), err)
	}
	return syncDir(s.Dir)
}

// writeFileAtomic writes data to path so that path holds either its old
// content or all of data, even across a crash: temporary file in the same
// directory, fsync, rename, fsync of the directory.
func writeFileAtomic(path string, data []byte, perm os.FileMode) (err error) {
	dir, base := filepath.Split(path)
	f, err := os.CreateTemp(dir, "."+base+tempMarker+"*")
	if err != nil {
		return fmt.Errorf("failed to create a temporary file for %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	if err = f.Chmod(perm); err != nil {
		return fmt.Errorf("failed to set the mode of %s: %w", tmp, err)
	}
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("failed to write %s: %w", tmp, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("failed to sync %s: %w", tmp, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("failed to close %s: %w", tmp, err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("failed to rename %s to %s: %w", tmp, path, err)
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	if dir == "" {
		dir = "."
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("failed to open %s: %w", dir, err)
	}
	defer func() { _ = d.Close() }()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("failed to sync %s: %w", dir, err)
	}
	return nil
}
