package main

import (
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

	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--images", list}, []string{list + ":4: ", `"quay.io/x/Y:1"`, list + ":6: ", "sha256:<64 lower-case hex digits>"}},
		{[]string{"--images", filepath.Join(dir, "none.txt")}, []string{"--images: open"}},
		{[]string{"--talos-defaults", "v1.13"}, []string{"--talos-defaults: "}},
		{[]string{"--talos-defaults", "v1.9.0"}, []string{"--talos-defaults: no Kubernetes image list for Talos v1.9.0"}},
		{nil, []string{"nothing to copy: give --version, --talos-defaults and/or --images"}},
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

	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("refused runs left files: %v", entries)
	}
}
