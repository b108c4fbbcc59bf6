package main

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestMirrorRefusesBadArguments: a bad image list or version is refused,
// naming the line or flag, before any endpoint is contacted (the source
// here is a closed port) or anything is written.
func TestMirrorRefusesBadArguments(t *testing.T) {
	dir := t.TempDir()
	list := filepath.Join(dir, "images.txt")

	if err := os.WriteFile(list, []byte("# add-ons\nnginx:1.27\n\nquay.io/x/Y:1\nregistry.k8s.io/etcd:3.5.21-0 # etcd\nnginx@sha256:1\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	archive := filepath.Join(dir, "out.tar")

	badSchematic := filepath.Join(dir, "schematic.yaml")
	if err := os.WriteFile(badSchematic, []byte("customization:\n  systemExtension: {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--images", list}, []string{list + ":4: ", `"quay.io/x/Y:1"`, list + ":6: ", "sha256:<64 lower-case hex digits>"}},
		{[]string{"--images", filepath.Join(dir, "none.txt")}, []string{"--images: open"}},
		{[]string{"--talos-defaults", "v1.13"}, []string{"--talos-defaults: "}},
		{[]string{"--talos-defaults", "v1.9.0"}, []string{"--talos-defaults: no Kubernetes image list for Talos v1.9.0"}},
		{nil, []string{"nothing to copy: give --version, --talos-defaults and/or --images"}},
		{[]string{"--schematic", badSchematic, "--version", "v1.13.0"}, []string{"--schematic " + badSchematic + ": "}},
		{[]string{"--schematic", filepath.Join(dir, "none.yaml"), "--version", "v1.13.0"}, []string{"--schematic: open"}},
	} {
		args := append([]string{"mirror", "--from", "127.0.0.1:1", "--to", archive, "--insecure-skip-verify"}, tc.args...)

		code, stdout, stderr := runKiln(t, "", args...)
		if code == 0 {
			t.Errorf("kiln %s succeeded: %s", strings.Join(args, " "), stdout)
			continue
		}

		for _, w := range tc.want {
			if !strings.Contains(stderr, w) {
				t.Errorf("kiln %s: stderr %q lacks %q", strings.Join(args, " "), stderr, w)
			}
		}

		if strings.Contains(stderr, "127.0.0.1:1") {
			t.Errorf("kiln %s contacted the source: %s", strings.Join(args, " "), stderr)
		}
	}

	// From stdin, named as such.
	code, _, stderr := runKiln(t, "busybox\nNginx\n", "mirror", "--from", "127.0.0.1:1", "--to", archive, "--insecure-skip-verify", "--images", "-")
	if code == 0 || !strings.Contains(stderr, "--images -:2: ") {
		t.Errorf("kiln mirror --images - with a bad line 2: exit %d, %s", code, stderr)
	}

	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Errorf("refused runs left files: %v", entries)
	}
}

func TestSchematicSelection(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a.yaml")
	b := filepath.Join(dir, "b.yaml")

	if err := os.WriteFile(a, []byte("customization:\n  systemExtensions:\n    officialExtensions: [siderolabs/gvisor, siderolabs/i915-ucode]\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	if err := os.WriteFile(b, []byte("overlay: {image: siderolabs/sbc-raspberrypi, name: rpi_generic}\ncustomization:\n  systemExtensions:\n    officialExtensions: [siderolabs/gvisor]\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		args       []string
		exts, ovls string
	}{
		{nil, "siderolabs/gvisor,siderolabs/i915-ucode", "rpi_generic"},
		{[]string{"--extensions", "siderolabs/drbd"}, "siderolabs/drbd,siderolabs/gvisor,siderolabs/i915-ucode", "rpi_generic"},
		{[]string{"--overlays", "all"}, "siderolabs/gvisor,siderolabs/i915-ucode", "all,rpi_generic"},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		e := fs.String("extensions", "all", "")
		o := fs.String("overlays", "all", "")

		if err := fs.Parse(tc.args); err != nil {
			t.Fatal(err)
		}

		exts, ovls, err := schematicSelection(fs, a+","+b, namesOrAll(*e), namesOrAll(*o))
		if err != nil {
			t.Fatal(err)
		}

		if got := strings.Join(exts, ","); got != tc.exts {
			t.Errorf("%v: extensions %q, want %q", tc.args, exts, tc.exts)
		}

		if got := strings.Join(ovls, ","); got != tc.ovls {
			t.Errorf("%v: overlays %q, want %q", tc.args, ovls, tc.ovls)
		}
	}
}
