package deploy

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sdkata/queue-worker/internal/testbed"
)

// ociArchive is an image archive read into memory: its top-level files
// and blobs by digest.
type ociArchive struct {
	files map[string][]byte
}

func readArchive(t *testing.T, path string) ociArchive {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	a := ociArchive{files: map[string][]byte{}}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		a.files[h.Name] = b
	}
	return a
}

type ociDescriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations"`
}

// blob returns the blob a descriptor names, checking its digest and size.
func (a ociArchive) blob(t *testing.T, d ociDescriptor) []byte {
	t.Helper()
	hexDigest, ok := strings.CutPrefix(d.Digest, "sha256:")
	if !ok {
		t.Fatalf("digest %q is not sha256", d.Digest)
	}
	b, ok := a.files["blobs/sha256/"+hexDigest]
	if !ok {
		t.Fatalf("blob %s missing", d.Digest)
	}
	sum := sha256.Sum256(b)
	if hex.EncodeToString(sum[:]) != hexDigest || int64(len(b)) != d.Size {
		t.Fatalf("blob %s: content does not match its digest or size %d", d.Digest, d.Size)
	}
	return b
}

func (a ociArchive) json(t *testing.T, b []byte, into any) {
	t.Helper()
	if err := json.Unmarshal(b, into); err != nil {
		t.Fatal(err)
	}
}

// layerEntry is one file of the image's layer.
type layerEntry struct {
	hdr  *tar.Header
	data []byte
}

// The image the manifests run, built as `make image` builds it (no
// container engine), is well-formed and runnable as deployed: the OCI
// layout's digests hold, Docker's manifest.json points at the same blobs,
// the user is numeric and not root (the Deployment sets runAsNonRoot), the
// entrypoint is the static binary, the config files are the repository's,
// the CA bundle and /etc/passwd are there, /tmp is writable, and the binary
// from the layer prints the version it was built with.
func TestImage_BuiltWithoutEngine(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "queue-worker.tar")
	version := "test-" + testbed.Suffix()
	cmd := exec.Command("../scripts/build-image.sh")
	cmd.Env = append(os.Environ(), "IMAGE_TAG=imagetest", "IMAGE_OUT="+out, "VERSION="+version)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("scripts/build-image.sh: %v\n%s", err, b)
	}
	a := readArchive(t, out)

	if string(a.files["oci-layout"]) != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout: %s", a.files["oci-layout"])
	}
	var index struct {
		SchemaVersion int             `json:"schemaVersion"`
		Manifests     []ociDescriptor `json:"manifests"`
	}
	a.json(t, a.files["index.json"], &index)
	if index.SchemaVersion != 2 || len(index.Manifests) != 1 {
		t.Fatalf("index.json: %s", a.files["index.json"])
	}
	md := index.Manifests[0]
	if md.Annotations["org.opencontainers.image.ref.name"] != "imagetest" || md.Annotations["io.containerd.image.name"] != "queue-worker:imagetest" {
		t.Errorf("index annotations %v: want the tag imagetest and the name queue-worker:imagetest", md.Annotations)
	}
	var manifest struct {
		MediaType string          `json:"mediaType"`
		Config    ociDescriptor   `json:"config"`
		Layers    []ociDescriptor `json:"layers"`
	}
	a.json(t, a.blob(t, md), &manifest)
	if manifest.MediaType != "application/vnd.oci.image.manifest.v1+json" || len(manifest.Layers) != 1 ||
		manifest.Layers[0].MediaType != "application/vnd.oci.image.layer.v1.tar+gzip" {
		t.Fatalf("manifest: %+v", manifest)
	}
	var config struct {
		Architecture, OS string
		Config           struct {
			User         string
			Entrypoint   []string
			Cmd          []string
			Env          []string
			ExposedPorts map[string]any
			Labels       map[string]string
		} `json:"config"`
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	a.json(t, a.blob(t, manifest.Config), &config)

	var docker []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	a.json(t, a.files["manifest.json"], &docker)
	if len(docker) != 1 || docker[0].Config != "blobs/sha256/"+strings.TrimPrefix(manifest.Config.Digest, "sha256:") ||
		!slices.Equal(docker[0].Layers, []string{"blobs/sha256/" + strings.TrimPrefix(manifest.Layers[0].Digest, "sha256:")}) ||
		!slices.Equal(docker[0].RepoTags, []string{"queue-worker:imagetest"}) {
		t.Errorf("manifest.json does not describe the same image: %s", a.files["manifest.json"])
	}

	// The layer: its uncompressed digest is the config's diff_id.
	gz := a.blob(t, manifest.Layers[0])
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(raw)
	if len(config.RootFS.DiffIDs) != 1 || config.RootFS.DiffIDs[0] != "sha256:"+hex.EncodeToString(sum[:]) {
		t.Errorf("diff_ids %v do not match the layer", config.RootFS.DiffIDs)
	}
	layer := map[string]layerEntry{}
	tr := tar.NewReader(bytes.NewReader(raw))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		layer["/"+strings.TrimSuffix(h.Name, "/")] = layerEntry{h, b}
	}

	// Runs as deployed: a numeric non-root user, the binary as entrypoint,
	// the shipped config directory as --config-dir (as in the Deployment).
	if config.Architecture != "amd64" || config.OS != "linux" {
		t.Errorf("platform %s/%s", config.OS, config.Architecture)
	}
	user, group, _ := strings.Cut(config.Config.User, ":")
	if user == "" || user == "0" || user == "root" || strings.Trim(user, "0123456789") != "" || group == "0" {
		t.Errorf("user %q: want a numeric non-root uid (runAsNonRoot)", config.Config.User)
	}
	if !strings.Contains(string(layer["/etc/passwd"].data), ":"+user+":") {
		t.Errorf("uid %s has no /etc/passwd entry", user)
	}
	if !slices.Equal(config.Config.Entrypoint, []string{"/usr/local/bin/queue-worker"}) {
		t.Errorf("entrypoint %v", config.Config.Entrypoint)
	}
	if _, ok := config.Config.ExposedPorts["8080/tcp"]; !ok {
		t.Errorf("exposed ports %v: the Deployment's containerPort is 8080", config.Config.ExposedPorts)
	}
	if config.Config.Labels["org.opencontainers.image.version"] != version {
		t.Errorf("version label %q, want %q", config.Config.Labels["org.opencontainers.image.version"], version)
	}
	dep := find(render(t, "base"), "Deployment", "queue-worker")
	c := list(dep, "spec", "template", "spec", "containers")[0].(obj)
	if img := str(c, "image"); !strings.HasPrefix(img, "queue-worker:") {
		t.Errorf("the Deployment runs %q, not this image's name", img)
	}
	args := fmt.Sprint(c["args"])
	if !strings.Contains(args, "--config-dir /etc/queue-worker ") || !slices.Contains(config.Config.Cmd, "/etc/queue-worker") {
		t.Errorf("the Deployment's args %s and the image's cmd %v must use --config-dir /etc/queue-worker", args, config.Config.Cmd)
	}

	// The files.
	bin, ok := layer["/usr/local/bin/queue-worker"]
	if !ok || bin.hdr.Mode&0o111 == 0 {
		t.Fatal("no executable /usr/local/bin/queue-worker")
	}
	configs, _ := filepath.Glob("../config/*.yaml")
	if len(configs) == 0 {
		t.Fatal("no config/*.yaml in the repository")
	}
	for _, f := range configs {
		want, _ := os.ReadFile(f)
		e, ok := layer["/etc/queue-worker/"+filepath.Base(f)]
		if !ok || !bytes.Equal(e.data, want) || e.hdr.Mode&0o004 == 0 {
			t.Errorf("/etc/queue-worker/%s missing, different from config/, or not world-readable", filepath.Base(f))
		}
	}
	if ca := layer["/etc/ssl/certs/ca-certificates.crt"]; !bytes.Contains(ca.data, []byte("BEGIN CERTIFICATE")) {
		t.Error("no CA certificates: HTTPS to the CI API and TLS to Redis would fail")
	}
	if tmp := layer["/tmp"]; tmp.hdr == nil || tmp.hdr.Mode&0o1777 != 0o1777 {
		t.Error("no world-writable /tmp")
	}
	for name, e := range layer {
		if e.hdr.Uid == 0 && e.hdr.Typeflag == tar.TypeReg && e.hdr.Mode&0o002 != 0 {
			t.Errorf("%s is root-owned and world-writable", name)
		}
	}

	// The binary from the layer: static (nothing else is in the image) and
	// the version it was built with.
	exe := filepath.Join(dir, "queue-worker")
	if err := os.WriteFile(exe, bin.data, 0o755); err != nil {
		t.Fatal(err)
	}
	ef, err := elf.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary is dynamically linked: it cannot run in an image without libc")
		}
	}
	ef.Close()
	got, err := exec.Command(exe, "version").Output()
	if err != nil {
		t.Fatalf("queue-worker version: %v", err)
	}
	if strings.TrimSpace(string(got)) != version {
		t.Errorf("queue-worker version printed %q, want %q", got, version)
	}

	// A second reader, where installed (Debian's skopeo): it checks every
	// digest while copying the archive out.
	if _, err := exec.LookPath("skopeo"); err == nil {
		for _, src := range []string{"oci-archive:" + out, "docker-archive:" + out} {
			if b, err := exec.Command("skopeo", "copy", "--quiet", src, "dir:"+t.TempDir()).CombinedOutput(); err != nil {
				t.Errorf("skopeo copy %s: %v\n%s", src, err, b)
			}
		}
	} else {
		t.Log("skopeo not installed: the archive was checked by this test's own reader only")
	}
}
