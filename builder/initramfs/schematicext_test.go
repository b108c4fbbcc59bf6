package initramfs

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"testing"

	"github.com/siderolabs/talos/pkg/machinery/extensions"
	"go.yaml.in/yaml/v4"
)

// The schematic extension's manifest is byte for byte the factory's:
// image-factory v1.4.0 internal/artifacts/schematic.go fills Talos's own
// extensions.Manifest and marshals it with yaml v4; extraInfo only where
// the caller passes the schematic (Talos 1.7 and later).
func TestSchematicExtensionManifestIsTheFactorys(t *testing.T) {
	const id = "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba"

	for _, info := range [][]byte{[]byte("customization:\n    extraKernelArgs:\n        - a=b\n"), nil} {
		factory, err := yaml.Marshal(extensions.Manifest{
			Version: "v1alpha1",
			Metadata: extensions.Metadata{
				Name:          "schematic",
				Version:       id,
				Author:        "Image Factory (https://factory.kiln.invalid)",
				Description:   "Virtual extension which specifies the schematic of the image built with schematic.",
				Compatibility: extensions.Compatibility{Talos: extensions.Constraint{Version: ">= 1.0.0"}},
				ExtraInfo:     string(info),
			},
		})
		if err != nil {
			t.Fatal(err)
		}

		rc, err := SchematicExtension(id, info, "https://factory.kiln.invalid").Open(context.Background())
		if err != nil {
			t.Fatal(err)
		}

		tr := tar.NewReader(rc)

		hdr, err := tr.Next()
		if err != nil || hdr.Name != "manifest.yaml" {
			t.Fatalf("first entry %v, %v", hdr, err)
		}

		got, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}

		if !bytes.Equal(got, factory) {
			t.Errorf("manifest (extraInfo %q):\n%s\nthe factory's:\n%s", info, got, factory)
		}
	}
}
