package image

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// moduleDir is the repository root (the directory of go.mod).
func moduleDir(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		t.Fatal("not inside the nodecsr module")
	}
	return filepath.Dir(gomod)
}

// TestImageTarball builds the real binary and the image tarball, reads the
// tarball back and checks what the chart and the Dockerfile rely on.
func TestImageTarball(t *testing.T) {
	// No inner deadline: the build takes as long as the machine needs; the
	// test's own (go test -timeout) bounds it.
	ctx := t.Context()
	dir := t.TempDir()
	bin := filepath.Join(dir, "nodecsr-controller")
	const version = "v0.1.0-test"
	if err := BuildBinary(ctx, moduleDir(t), bin, version, runtime.GOARCH); err != nil {
		t.Fatal(err)
	}
	binData, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	assertStatic(t, bin)

	created := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	opts := Options{Binary: bin, Version: version, Revision: "0123456789abcdef", Created: created, Arch: runtime.GOARCH}
	img, err := Build(opts)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "out", "nodecsr-controller-image.tar")
	const ref = DefaultRepository + ":v0.1.0-test"
	if err := WriteTarball(path, ref, img); err != nil {
		t.Fatal(err)
	}

	// The image is OCI (what a registry gets when it is pushed from memory).
	manifest, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if manifest.MediaType != types.OCIManifestSchema1 || manifest.Config.MediaType != types.OCIConfigJSON ||
		len(manifest.Layers) != 1 || manifest.Layers[0].MediaType != types.OCILayer {
		t.Errorf("media types: manifest %q, config %q, layers %+v; want OCI", manifest.MediaType, manifest.Config.MediaType, manifest.Layers)
	}

	// Everything below reads the tarball, not the in-memory image. A
	// `docker save` tarball keeps the configuration (the image ID) and the
	// layers byte for byte; the manifest is rebuilt by whoever loads it.
	read, err := tarball.ImageFromPath(path, nil)
	if err != nil {
		t.Fatalf("the tarball does not load: %v", err)
	}
	if got, want := configName(t, read), configName(t, img); got != want {
		t.Errorf("image ID in the tarball %s, built %s", got, want)
	}
	cf, err := read.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if got := cf.Config.Entrypoint; len(got) != 1 || got[0] != "/nodecsr-controller" {
		t.Errorf("entrypoint = %q, want [/nodecsr-controller]", got)
	}
	if len(cf.Config.Cmd) != 0 {
		t.Errorf("cmd = %q, want none", cf.Config.Cmd)
	}
	if cf.Config.User != "65532:65532" {
		t.Errorf("user = %q, want 65532:65532 (non-root)", cf.Config.User)
	}
	if cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
		t.Errorf("platform = %s/%s, want linux/%s", cf.OS, cf.Architecture, runtime.GOARCH)
	}
	if !cf.Created.Equal(created) {
		t.Errorf("created = %v, want %v", cf.Created.Time, created)
	}
	wantLabels := map[string]string{
		"org.opencontainers.image.title":    "nodecsr-controller",
		"org.opencontainers.image.version":  version,
		"org.opencontainers.image.revision": "0123456789abcdef",
		"org.opencontainers.image.source":   "https://github.com/nodecsr/nodecsr",
		"org.opencontainers.image.created":  "2026-01-02T03:04:05Z",
	}
	for k, want := range wantLabels {
		if got := cf.Config.Labels[k]; got != want {
			t.Errorf("label %s = %q, want %q", k, got, want)
		}
	}
	if cf.Config.Labels[LabelDescription] == "" {
		t.Errorf("label %s is empty", LabelDescription)
	}

	layers, err := read.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("%d layers, want exactly 1 (scratch base + the binary)", len(layers))
	}
	entries := layerEntries(t, layers[0])
	if len(entries) != 1 {
		names := make([]string, 0, len(entries))
		for _, e := range entries {
			names = append(names, e.hdr.Name)
		}
		t.Fatalf("layer holds %q, want only nodecsr-controller", names)
	}
	e := entries[0]
	if e.hdr.Name != "nodecsr-controller" || e.hdr.Typeflag != tar.TypeReg {
		t.Errorf("layer entry %q (type %c), want the regular file nodecsr-controller", e.hdr.Name, e.hdr.Typeflag)
	}
	if e.hdr.Mode&0o777 != 0o755 || e.hdr.Uid != 0 || e.hdr.Gid != 0 {
		t.Errorf("binary mode %o owner %d:%d, want 755 owned by 0:0", e.hdr.Mode, e.hdr.Uid, e.hdr.Gid)
	}
	if !e.hdr.ModTime.Equal(created) {
		t.Errorf("binary mtime %v, want %v", e.hdr.ModTime, created)
	}
	if sha256.Sum256(e.data) != sha256.Sum256(binData) {
		t.Error("the binary in the layer differs from the one built")
	}

	// The binary in the image is the one the version was linked into: run it
	// (the test host is linux/GOARCH, the image's platform).
	if runtime.GOOS == "linux" {
		extracted := filepath.Join(dir, "extracted")
		if err := os.WriteFile(extracted, e.data, 0o755); err != nil {
			t.Fatal(err)
		}
		out, err := exec.CommandContext(ctx, extracted, "version").Output()
		if err != nil {
			t.Fatalf("nodecsr-controller version: %v", err)
		}
		if got := strings.TrimSpace(string(out)); got != version {
			t.Errorf("nodecsr-controller version printed %q, want %q: the -X linker flag missed internal/version.Version", got, version)
		}
	}

	// The tarball is tagged with the reference given.
	if _, err := tarball.ImageFromPath(path, ptrTag(t, ref)); err != nil {
		t.Errorf("the tarball has no image tagged %s: %v", ref, err)
	}

	// Reproducible: the same inputs give the same digest and image ID.
	again, err := Build(opts)
	if err != nil {
		t.Fatal(err)
	}
	if d1, d2 := digest(t, again), digest(t, img); d1 != d2 {
		t.Errorf("rebuilding gave digest %s, then %s: the build is not reproducible", d1, d2)
	}
	if c1, c2 := configName(t, again), configName(t, read); c1 != c2 {
		t.Errorf("rebuilding gave image ID %s, the tarball has %s", c1, c2)
	}
}

func TestOptionsValidate(t *testing.T) {
	err := (&Options{}).Validate()
	if err == nil {
		t.Fatal("empty options validated")
	}
	for _, want := range []string{"binary", "version", "architecture"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention the %s", err, want)
		}
	}
}

type entry struct {
	hdr  *tar.Header
	data []byte
}

func layerEntries(t *testing.T, l v1.Layer) []entry {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = rc.Close() }()
	var out []entry
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if _, err := io.Copy(&buf, tr); err != nil {
			t.Fatal(err)
		}
		out = append(out, entry{hdr: hdr, data: buf.Bytes()})
	}
}

// assertStatic fails if the binary needs a dynamic loader or shared
// libraries: the image has neither.
func assertStatic(t *testing.T, path string) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatalf("%s is not an ELF binary: %v", path, err)
	}
	defer func() { _ = f.Close() }()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary has a dynamic loader (PT_INTERP): it is not static")
		}
	}
	if libs, err := f.ImportedLibraries(); err == nil && len(libs) > 0 {
		t.Errorf("the binary needs shared libraries %q", libs)
	}
}

func digest(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func ptrTag(t *testing.T, ref string) *name.Tag {
	t.Helper()
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	return &tag
}

func configName(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	h, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// TestDockerfileBuildsTheSameImage keeps the Dockerfile and this package in
// step: the same base, user, entrypoint, build flags and labels, and every
// package the binary is built from copied into the build.
func TestDockerfileBuildsTheSameImage(t *testing.T) {
	root := moduleDir(t)
	data, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	df := string(data)
	lastFrom := df[strings.LastIndex(df, "\nFROM "):]
	for _, want := range []string{
		"\nFROM scratch\n",
		"USER " + User + "\n",
		`ENTRYPOINT ["` + BinaryPath + `"]`,
		"COPY --from=build /out/nodecsr-controller " + BinaryPath + "\n",
	} {
		if !strings.Contains(lastFrom, want) {
			t.Errorf("the Dockerfile's final stage lacks %q", want)
		}
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-s -w -X " + VersionVariable + "=${VERSION}", Package} {
		if !strings.Contains(df, want) {
			t.Errorf("the Dockerfile's build lacks %q", want)
		}
	}
	for _, label := range []string{LabelTitle, LabelDescription, LabelVersion, LabelRevision, LabelSource, LabelCreated} {
		if !strings.Contains(lastFrom, label+"=") {
			t.Errorf("the Dockerfile does not set the label %s", label)
		}
	}
	// Every package of the module the binary imports is copied in.
	cmd := exec.Command("go", "list", "-deps", "-f", "{{if .Module}}{{if .Module.Main}}{{.Dir}}{{end}}{{end}}", Package)
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, dir := range strings.Fields(string(out)) {
		rel, err := filepath.Rel(root, dir)
		if err != nil {
			t.Fatal(err)
		}
		top := strings.Split(filepath.ToSlash(rel), "/")[0]
		if !strings.Contains(df, "\nCOPY "+top+"/ "+top+"/\n") {
			t.Errorf("the Dockerfile does not copy %s/, which the binary imports (%s)", top, rel)
		}
	}
}
