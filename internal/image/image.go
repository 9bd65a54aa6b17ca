// Package image builds nodecsr-controller's container image without a
// container daemon and without pulling anything: one layer holding the static
// binary at /nodecsr-controller on an empty (scratch) base, run as
// 65532:65532, with the org.opencontainers.image.* labels. The Dockerfile at
// the repository root builds the same image with a container builder.
//
// The result is reproducible: file times and the creation time come from
// Options.Created (SOURCE_DATE_EPOCH in hack/image), so the same binary and
// options give the same image digest.
package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Fixed properties of the image.
const (
	// BinaryPath is where the binary lives in the image; it is the entrypoint.
	BinaryPath = "/nodecsr-controller"
	// User is the non-root user and group the image runs as (distroless's
	// "nonroot"); the chart's securityContext uses the same numbers.
	User = "65532:65532"
	// DefaultRepository is the image repository the chart pulls by default.
	DefaultRepository = "ghcr.io/nodecsr/nodecsr-controller"
	// DefaultSource is the org.opencontainers.image.source label.
	DefaultSource = "https://github.com/nodecsr/nodecsr"
	// VersionVariable is the linker variable that carries the version.
	VersionVariable = "github.com/nodecsr/nodecsr/internal/version.Version"
	// Package is the main package of nodecsr-controller.
	Package = "./cmd/nodecsr-controller"
)

// OCI label keys (https://github.com/opencontainers/image-spec/blob/main/annotations.md).
const (
	LabelTitle       = "org.opencontainers.image.title"
	LabelDescription = "org.opencontainers.image.description"
	LabelVersion     = "org.opencontainers.image.version"
	LabelRevision    = "org.opencontainers.image.revision"
	LabelSource      = "org.opencontainers.image.source"
	LabelCreated     = "org.opencontainers.image.created"
)

// Options describes the image.
type Options struct {
	// Binary is the path of the statically linked nodecsr-controller.
	Binary string
	// Version, Revision and Source fill the OCI labels. Version is
	// required; Source defaults to DefaultSource.
	Version, Revision, Source string
	// Created is the image's creation time and every file's modification
	// time. Default: the Unix epoch, for reproducible digests.
	Created time.Time
	// Arch is the GOARCH the binary was built for (amd64, arm64, ...).
	// Required.
	Arch string
}

// Validate reports what is missing.
func (o *Options) Validate() error {
	var errs []error
	if o.Binary == "" {
		errs = append(errs, errors.New("image: the binary's path is required"))
	}
	if o.Version == "" {
		errs = append(errs, errors.New("image: a version is required"))
	}
	if o.Arch == "" {
		errs = append(errs, errors.New("image: the architecture is required"))
	}
	return errors.Join(errs...)
}

// Labels returns the image's OCI labels for o.
func (o *Options) Labels() map[string]string {
	source := o.Source
	if source == "" {
		source = DefaultSource
	}
	labels := map[string]string{
		LabelTitle:       "nodecsr-controller",
		LabelDescription: "Decides kubelet client certificate requests and serves nodecsr's admission webhooks",
		LabelVersion:     o.Version,
		LabelSource:      source,
		LabelCreated:     o.created().Format(time.RFC3339),
	}
	if o.Revision != "" {
		labels[LabelRevision] = o.Revision
	}
	return labels
}

func (o *Options) created() time.Time {
	if o.Created.IsZero() {
		return time.Unix(0, 0).UTC()
	}
	return o.Created.UTC()
}

// Build returns the image: an OCI image with one layer that holds only the
// binary at BinaryPath (mode 0755, owned by root), entrypoint BinaryPath,
// user User and the OCI labels.
func Build(o Options) (v1.Image, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	bin, err := os.ReadFile(o.Binary)
	if err != nil {
		return nil, fmt.Errorf("failed to read the binary: %w", err)
	}
	layerTar, err := binaryLayer(bin, o.created())
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("failed to build the layer: %w", err)
	}

	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	created := v1.Time{Time: o.created()}
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History: v1.History{
			Created:   created,
			CreatedBy: "COPY nodecsr-controller " + BinaryPath + " # internal/image",
			Comment:   "nodecsr-controller " + o.Version,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("failed to add the layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture = o.Arch
	cf.OS = "linux"
	cf.Created = created
	cf.Config.Entrypoint = []string{BinaryPath}
	cf.Config.Cmd = nil
	cf.Config.User = User
	cf.Config.WorkingDir = "/"
	cf.Config.Labels = o.Labels()
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("failed to set the image configuration: %w", err)
	}
	return img, nil
}

// binaryLayer is an uncompressed tar holding only the binary.
func binaryLayer(bin []byte, modTime time.Time) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := &tar.Header{
		Typeflag: tar.TypeReg,
		Name:     strings.TrimPrefix(BinaryPath, "/"),
		Mode:     0o755,
		Size:     int64(len(bin)),
		ModTime:  modTime,
		Uid:      0,
		Gid:      0,
		Format:   tar.FormatPAX,
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, err
	}
	if _, err := tw.Write(bin); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// WriteTarball writes img as a `docker save`-style tarball (also read by
// `podman load`, `crane push`, `kind load image-archive` and
// tarball.ImageFromPath) tagged ref.
func WriteTarball(path, ref string, img v1.Image) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("invalid image reference %q: %w", ref, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	// Write to a temporary file first: a failed build leaves no half tarball.
	tmp := path + ".tmp"
	if err := tarball.WriteToFile(tmp, tag, img); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("failed to write %s: %w", path, err)
	}
	return os.Rename(tmp, path)
}

// BuildBinary builds the static nodecsr-controller binary of the module in
// dir into out, for linux/goarch, exactly as the Dockerfile does:
// CGO_ENABLED=0, -trimpath, stripped, the version set through the linker.
func BuildBinary(ctx context.Context, dir, out, version, goarch string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath",
		"-ldflags", "-s -w -X "+VersionVariable+"="+version,
		"-o", out, Package)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s failed: %w\n%s", Package, err, stderr.String())
	}
	return nil
}
