package initramfs

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"go.yaml.in/yaml/v4"
)

// Extension is one system extension's flattened filesystem: manifest.yaml
// and rootfs/, nothing else.
type Extension interface {
	// Name identifies the extension in errors before its manifest is read.
	Name() string
	// Open returns a tar stream of the flattened filesystem. The caller
	// closes it; reading it after ctx is done fails.
	Open(ctx context.Context) (io.ReadCloser, error)
}

// FromImage is an extension image (one platform's image, not an index),
// flattened like crane export.
func FromImage(img v1.Image) Extension { return imageExtension{img: img} }

type imageExtension struct{ img v1.Image }

func (e imageExtension) Name() string {
	d, err := e.img.Digest()
	if err != nil {
		return "image (digest unavailable)"
	}

	return "image " + d.String()
}

func (e imageExtension) Open(ctx context.Context) (io.ReadCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	// mutate.Extract streams through an io.Pipe and has no context of its
	// own; checking ctx on every read stops a cancelled build promptly.
	return ctxReadCloser{ctx: ctx, ReadCloser: mutate.Extract(e.img)}, nil
}

type ctxReadCloser struct {
	ctx context.Context //nolint:containedctx // bounds the reads of this one stream
	io.ReadCloser
}

func (r ctxReadCloser) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}

	return r.ReadCloser.Read(p)
}

// Virtual extension constants (image-factory internal/artifacts/schematic.go
// and Talos pkg/imager/embed.go).
const (
	SchematicExtensionName      = "schematic"
	EmbeddedConfigExtensionName = "embedded-config"
	// EmbeddedConfigPath is where Talos looks for an embedded machine
	// configuration (constants.EmbeddedConfigDirectory + ConfigFilename).
	EmbeddedConfigPath = "usr/local/etc/talos/config.yaml"
	// EmbeddedConfigLabel is the SELinux label Talos gives that file
	// (constants.StateSelinuxLabel); it is stored as the squashfs xattr
	// security.selinux.
	EmbeddedConfigLabel = "system_u:object_r:system_state_t:s0"
	// paxSELinux is how tar carries that label (constants.TarPaxHeaderSELinux).
	paxSELinux = "SCHILY.xattr.security.selinux"
)

// SchematicExtension is the virtual extension image-factory appends to
// record the schematic: an empty marker file
// rootfs/usr/local/share/schematic/<id>, and the canonical schematic YAML
// as the manifest's extraInfo (Talos reports it in ExtensionStatus); the
// factory leaves extraInfo out for Talos before 1.7 (quirks'
// SupportsOverlay), where the caller passes nil. The manifest is the
// factory's (image-factory v1.4.0 internal/artifacts/schematic.go), its
// description included.
func SchematicExtension(id string, canonicalYAML []byte, factoryURL string) Extension {
	return virtualExtension{
		manifest: Manifest{
			Version: ManifestVersion,
			Metadata: Metadata{
				Name:          SchematicExtensionName,
				Version:       id,
				Author:        "Image Factory (" + factoryURL + ")",
				Description:   "Virtual extension which specifies the schematic of the image built with " + SchematicExtensionName + ".",
				Compatibility: Compatibility{Talos: Constraint{Version: ">= 1.0.0"}},
				ExtraInfo:     string(canonicalYAML),
			},
		},
		files: []virtualFile{{path: "usr/local/share/schematic/" + id, mode: 0o644}},
	}
}

// EmbeddedConfigExtension is the virtual extension that embeds a machine
// configuration: rootfs/usr/local/etc/talos/config.yaml, mode 0400,
// labelled EmbeddedConfigLabel. Its version is the config's SHA-256, so a
// different config is a different layer. Talos reads embedded configs
// from 1.12 on; gating on the version is the caller's (the plan's) job.
func EmbeddedConfigExtension(config []byte) Extension {
	sum := sha256.Sum256(config)

	return virtualExtension{
		manifest: Manifest{
			Version: ManifestVersion,
			Metadata: Metadata{
				Name:        EmbeddedConfigExtensionName,
				Version:     hex.EncodeToString(sum[:]),
				Author:      "Imager",
				Description: "Virtual extension which embeds the machine configuration.",
			},
		},
		files: []virtualFile{{
			path:   EmbeddedConfigPath,
			mode:   0o400,
			data:   config,
			selinx: EmbeddedConfigLabel,
		}},
	}
}

type virtualFile struct {
	path   string
	mode   int64
	data   []byte
	selinx string
}

// virtualExtension is generated in memory: its content is a manifest and
// a config file or an empty marker, a few KiB at most.
type virtualExtension struct {
	manifest Manifest
	files    []virtualFile
}

func (e virtualExtension) Name() string { return e.manifest.Metadata.Name }

func (e virtualExtension) Open(ctx context.Context) (io.ReadCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	manifest, err := yaml.Marshal(e.manifest)
	if err != nil {
		return nil, fmt.Errorf("extension %s: manifest: %w", e.Name(), err)
	}

	var buf bytes.Buffer

	tw := tar.NewWriter(&buf)
	// A fixed time: the builder replaces every timestamp anyway, and this
	// keeps the stream itself deterministic.
	mtime := time.Unix(0, 0)

	hdrs := []struct {
		h    tar.Header
		data []byte
	}{
		{tar.Header{Name: "manifest.yaml", Mode: 0o644, Size: int64(len(manifest)), ModTime: mtime}, manifest},
		{tar.Header{Name: "rootfs/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mtime}, nil},
	}

	for _, f := range e.files {
		h := tar.Header{Name: "rootfs/" + f.path, Mode: f.mode, Size: int64(len(f.data)), ModTime: mtime, Format: tar.FormatPAX}
		if f.selinx != "" {
			h.PAXRecords = map[string]string{paxSELinux: f.selinx}
		}

		hdrs = append(hdrs, struct {
			h    tar.Header
			data []byte
		}{h, f.data})
	}

	for _, x := range hdrs {
		if err := tw.WriteHeader(&x.h); err != nil {
			return nil, fmt.Errorf("extension %s: %w", e.Name(), err)
		}

		if _, err := tw.Write(x.data); err != nil {
			return nil, fmt.Errorf("extension %s: %w", e.Name(), err)
		}
	}

	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("extension %s: %w", e.Name(), err)
	}

	return io.NopCloser(&buf), nil
}
