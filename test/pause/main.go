// Command pause builds the sandbox ("pause") image that the node e2e suite's
// containerd uses, without a container daemon and without network access (no
// registry is reachable from the test machines):
//
//	cd test && go run ./pause --output bin/pause-image.tar [--ref nodecsr.invalid/pause:e2e]
//
// It builds ./pause/pause statically and writes a `docker save`-style
// tarball with one layer holding it at /pause, entrypoint /pause, user
// 65535:65535 (as registry.k8s.io/pause), which `ctr images import` reads.
// The default reference is in the reserved .invalid domain, so that nothing
// could ever pull it from anywhere.
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/nodecsr/nodecsr/internal/image"
)

// DefaultRef is the image reference of the sandbox image.
const DefaultRef = "nodecsr.invalid/pause:e2e"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		stop()
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("pause", flag.ContinueOnError)
	output := fs.String("output", "bin/pause-image.tar", "Where to write the image tarball.")
	ref := fs.String("ref", DefaultRef, "Image reference (repository:tag) in the tarball.")
	arch := fs.String("arch", runtime.GOARCH, "GOARCH of the image.")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if _, err := name.NewTag(*ref); err != nil {
		return fmt.Errorf("invalid --ref %q: %w", *ref, err)
	}
	dir, err := os.MkdirTemp("", "nodecsr-pause-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	bin := filepath.Join(dir, "pause")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "./pause/pause")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+*arch)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build ./pause/pause (run from the test module, test/): %w\n%s", err, stderr.String())
	}
	img, err := build(bin, *arch)
	if err != nil {
		return err
	}
	if err := image.WriteTarball(*output, *ref, img); err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("wrote %s (%s, %s)\n", *output, *ref, digest)
	return nil
}

// build returns the image: one layer with the binary at /pause.
func build(bin, arch string) (v1.Image, error) {
	data, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0).UTC()
	if err := tw.WriteHeader(&tar.Header{
		Typeflag: tar.TypeReg, Name: "pause", Mode: 0o755, Size: int64(len(data)), ModTime: epoch, Format: tar.FormatPAX,
	}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(data); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	layerTar := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{Layer: layer, MediaType: types.OCILayer})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	if cf == nil {
		return nil, errors.New("the empty image has no config file")
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = arch, "linux"
	cf.Created = v1.Time{Time: epoch}
	cf.Config.Entrypoint = []string{"/pause"}
	cf.Config.User = "65535:65535"
	cf.Config.WorkingDir = "/"
	return mutate.ConfigFile(img, cf)
}
