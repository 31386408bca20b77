// Command image assembles the queue-worker container image without a
// container engine: one layer on an empty base (the binary from `make
// build`, the config files, CA certificates, a passwd entry for the
// non-root user, /tmp), written as an OCI image layout in a tar archive that
// also carries Docker's manifest.json, so `docker load`, `podman load`,
// `skopeo copy oci-archive:` and containerd's `ctr import` all read it.
//
// The output is reproducible: entries sorted, owners and times fixed
// (SOURCE_DATE_EPOCH, else the Unix epoch), gzip without name or time.
//
//	go run ./scripts/image -binary bin/queue-worker -config config -tag queue-worker:dev -out bin/image/queue-worker.tar
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// The image's user: distroless's "nonroot", so the Dockerfile's image and
// this one run alike.
const (
	uid, gid   = 65532, 65532
	binaryPath = "usr/local/bin/queue-worker"
	configDir  = "etc/queue-worker"
	caBundle   = "etc/ssl/certs/ca-certificates.crt"
)

type options struct {
	binary, config, caFile, out, tag, version string
	created                                   time.Time
}

func main() {
	var o options
	flag.StringVar(&o.binary, "binary", "bin/queue-worker", "static linux binary (make build)")
	flag.StringVar(&o.config, "config", "config", "directory of default.yaml and custom-environment-variables.yaml")
	flag.StringVar(&o.caFile, "ca", "/etc/ssl/certs/ca-certificates.crt", "CA bundle to ship (Debian's ca-certificates)")
	flag.StringVar(&o.out, "out", "bin/image/queue-worker.tar", "output archive")
	flag.StringVar(&o.tag, "tag", "queue-worker:dev", "image name:tag recorded in the archive")
	flag.StringVar(&o.version, "version", "dev", "version label")
	flag.Parse()
	o.created = time.Unix(0, 0).UTC()
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		sec, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			fail(fmt.Errorf("SOURCE_DATE_EPOCH=%q: %w", s, err))
		}
		o.created = time.Unix(sec, 0).UTC()
	}
	digest, err := build(o)
	if err != nil {
		fail(err)
	}
	fmt.Printf("%s %s %s\n", o.out, o.tag, digest)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "image:", err)
	os.Exit(1)
}

// file is one entry of the layer.
type file struct {
	name     string // without a leading slash
	mode     int64
	uid, gid int
	dir      bool
	data     []byte
}

// checkStatic refuses a dynamically linked binary: there is no libc in an
// image built on nothing.
func checkStatic(bin string) error {
	f, err := elf.Open(bin)
	if err != nil {
		return fmt.Errorf("%s is not a linux ELF binary: %w", bin, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked: build it with CGO_ENABLED=0 (make build)", bin)
		}
	}
	return nil
}

func layerFiles(o options) ([]file, error) {
	if err := checkStatic(o.binary); err != nil {
		return nil, err
	}
	bin, err := os.ReadFile(o.binary)
	if err != nil {
		return nil, err
	}
	ca, err := os.ReadFile(o.caFile)
	if err != nil {
		return nil, fmt.Errorf("CA bundle: %w (install Debian's ca-certificates)", err)
	}
	files := []file{
		{name: binaryPath, mode: 0o755, data: bin},
		{name: caBundle, mode: 0o644, data: ca},
		{name: "etc/passwd", mode: 0o644, data: []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")},
		{name: "etc/group", mode: 0o644, data: []byte("root:x:0:\nnonroot:x:65532:\n")},
		{name: "tmp", mode: 0o1777, dir: true},
		{name: "home/nonroot", mode: 0o700, dir: true, uid: uid, gid: gid},
	}
	entries, err := os.ReadDir(o.config)
	if err != nil {
		return nil, err
	}
	n := 0
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".yaml") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(o.config, e.Name()))
		if err != nil {
			return nil, err
		}
		files = append(files, file{name: path.Join(configDir, e.Name()), mode: 0o644, data: b})
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("no .yaml files in %s", o.config)
	}
	// Every parent directory gets its own entry, root-owned, 0755.
	have := map[string]bool{}
	for _, f := range files {
		have[f.name] = true
	}
	for _, f := range files {
		for d := path.Dir(f.name); d != "."; d = path.Dir(d) {
			if !have[d] {
				have[d] = true
				files = append(files, file{name: d, mode: 0o755, dir: true})
			}
		}
	}
	sort.Slice(files, func(i, j int) bool { return files[i].name < files[j].name })
	return files, nil
}

// layer returns the uncompressed tar and its gzip.
func layer(files []file, mtime time.Time) (raw, gz []byte, err error) {
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	for _, f := range files {
		h := &tar.Header{Name: f.name, Mode: f.mode, Uid: f.uid, Gid: f.gid, ModTime: mtime, Format: tar.FormatPAX}
		if f.dir {
			h.Typeflag, h.Name = tar.TypeDir, f.name+"/"
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, nil, err
	}
	var gb bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gb, gzip.BestCompression)
	if err != nil {
		return nil, nil, err
	}
	if _, err := zw.Write(tb.Bytes()); err != nil {
		return nil, nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, nil, err
	}
	return tb.Bytes(), gb.Bytes(), nil
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    map[string]string `json:"platform,omitempty"`
}

func build(o options) (string, error) {
	files, err := layerFiles(o)
	if err != nil {
		return "", err
	}
	raw, gz, err := layer(files, o.created)
	if err != nil {
		return "", err
	}
	created := o.created.Format(time.RFC3339)
	config := map[string]any{
		"created":      created,
		"architecture": "amd64",
		"os":           "linux",
		"config": map[string]any{
			"User":         fmt.Sprintf("%d:%d", uid, gid),
			"Entrypoint":   []string{"/" + binaryPath},
			"Cmd":          []string{"run", "--config-dir", "/" + configDir},
			"Env":          []string{"PATH=/usr/local/bin:/usr/bin:/bin", "SSL_CERT_FILE=/" + caBundle, "HOME=/home/nonroot"},
			"WorkingDir":   "/",
			"ExposedPorts": map[string]any{"8080/tcp": map[string]any{}},
			"Labels": map[string]string{
				"org.opencontainers.image.title":   "queue-worker",
				"org.opencontainers.image.version": o.version,
				"org.opencontainers.image.source":  "https://github.com/sdkata/queue-worker",
			},
		},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": []string{sha(raw)}},
		"history": []map[string]string{{"created": created, "created_by": "scripts/image: make build's binary and config/, on no base image"}},
	}
	cfg, err := json.Marshal(config)
	if err != nil {
		return "", err
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        descriptor{MediaType: "application/vnd.oci.image.config.v1+json", Digest: sha(cfg), Size: int64(len(cfg))},
		"layers":        []descriptor{{MediaType: "application/vnd.oci.image.layer.v1.tar+gzip", Digest: sha(gz), Size: int64(len(gz))}},
	})
	if err != nil {
		return "", err
	}
	name, tag, ok := strings.Cut(o.tag, ":")
	if !ok || name == "" || tag == "" || strings.Contains(tag, "/") {
		return "", fmt.Errorf("-tag %q: want name:tag", o.tag)
	}
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests": []descriptor{{
			MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: sha(manifest), Size: int64(len(manifest)),
			// The OCI ref name is the tag; containerd reads the full name.
			Annotations: map[string]string{"org.opencontainers.image.ref.name": tag, "io.containerd.image.name": o.tag},
			Platform:    map[string]string{"architecture": "amd64", "os": "linux"},
		}},
	})
	if err != nil {
		return "", err
	}
	blob := func(b []byte) string { return "blobs/sha256/" + strings.TrimPrefix(sha(b), "sha256:") }
	dockerManifest, err := json.Marshal([]map[string]any{{"Config": blob(cfg), "RepoTags": []string{o.tag}, "Layers": []string{blob(gz)}}})
	if err != nil {
		return "", err
	}
	entries := []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", index},
		{"manifest.json", dockerManifest},
		{blob(cfg), cfg},
		{blob(gz), gz},
		{blob(manifest), manifest},
	}
	if err := os.MkdirAll(filepath.Dir(o.out), 0o755); err != nil {
		return "", err
	}
	tmp := o.out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return "", err
	}
	tw := tar.NewWriter(f)
	dirs := []string{"blobs/", "blobs/sha256/"}
	for _, d := range dirs {
		if err := tw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755, ModTime: o.created}); err != nil {
			return "", errors.Join(err, f.Close())
		}
	}
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(e.data)), ModTime: o.created}
		if err := tw.WriteHeader(h); err != nil {
			return "", errors.Join(err, f.Close())
		}
		if _, err := tw.Write(e.data); err != nil {
			return "", errors.Join(err, f.Close())
		}
	}
	if err := errors.Join(tw.Close(), f.Close()); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, o.out); err != nil {
		return "", err
	}
	return sha(manifest), nil
}
