// Command image builds nodecsr-controller's container image as a tarball
// without a container daemon and without network access (the base is empty):
//
//	go run ./hack/image --output bin/nodecsr-controller-image.tar
//
// It builds the static binary (or takes --binary), puts it at
// /nodecsr-controller in one layer, and writes a `docker save`-style tarball
// that `docker load`, `podman load`, `crane push` and `kind load
// image-archive` read. The Dockerfile builds the same image with a container
// builder. Times come from SOURCE_DATE_EPOCH, else the commit time, so one
// commit gives one image digest.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/nodecsr/nodecsr/internal/image"
)

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
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	output := fs.String("output", "bin/nodecsr-controller-image.tar", "Where to write the image tarball.")
	binary := fs.String("binary", "", "A prebuilt static linux nodecsr-controller; empty builds it.")
	version := fs.String("version", os.Getenv("VERSION"), "Version label and tag (default $VERSION, else git describe).")
	revision := fs.String("revision", "", "Revision label (default: git rev-parse HEAD).")
	repository := fs.String("repository", image.DefaultRepository, "Image repository of the tag in the tarball.")
	source := fs.String("source", image.DefaultSource, "org.opencontainers.image.source label.")
	arch := fs.String("arch", runtime.GOARCH, "GOARCH of the image.")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *version == "" {
		*version = gitOr("dev", "describe", "--tags", "--always", "--dirty")
	}
	if *revision == "" {
		*revision = gitOr("", "rev-parse", "HEAD")
	}
	created, err := createdTime()
	if err != nil {
		return err
	}

	bin := *binary
	if bin == "" {
		dir, err := os.MkdirTemp("", "nodecsr-image-")
		if err != nil {
			return err
		}
		defer func() { _ = os.RemoveAll(dir) }()
		bin = filepath.Join(dir, "nodecsr-controller")
		if err := image.BuildBinary(ctx, ".", bin, *version, *arch); err != nil {
			return err
		}
	}
	img, err := image.Build(image.Options{
		Binary: bin, Version: *version, Revision: *revision, Source: *source, Created: created, Arch: *arch,
	})
	if err != nil {
		return err
	}
	ref := *repository + ":" + tagFor(*version)
	if err := image.WriteTarball(*output, ref, img); err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("wrote %s (%s, %s)\n", *output, ref, digest)
	return nil
}

// createdTime is SOURCE_DATE_EPOCH, else the last commit's time, else the
// Unix epoch.
func createdTime() (time.Time, error) {
	epoch := os.Getenv("SOURCE_DATE_EPOCH")
	if epoch == "" {
		epoch = gitOr("0", "log", "-1", "--format=%ct")
	}
	sec, err := strconv.ParseInt(epoch, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH must be seconds since the epoch, got %q", epoch)
	}
	return time.Unix(sec, 0).UTC(), nil
}

// tagFor turns a version into a valid image tag.
func tagFor(version string) string {
	tag := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '.', r == '-':
			return r
		default:
			return '-'
		}
	}, version)
	tag = strings.TrimLeft(tag, ".-")
	if len(tag) > 128 {
		tag = tag[:128]
	}
	if tag == "" {
		return "dev"
	}
	return tag
}

// gitOr runs git and returns its trimmed output, or def when git fails (no
// git, not a checkout).
func gitOr(def string, args ...string) string {
	out, err := exec.Command("git", args...).Output()
	if err != nil {
		return def
	}
	if s := strings.TrimSpace(string(out)); s != "" {
		return s
	}
	return def
}
