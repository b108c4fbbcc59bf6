//go:build e2e

package e2e

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestAssetMirrorExport: `kiln export` writes a schematic's asset mirror
// directory from the real binary serving --demo; coreutils' `sha512sum -c`
// passes in it; a second export writes nothing (every file keeps its inode
// and mtime); a damaged and a missing file are all a third one writes; the
// exported bytes are the HTTP route's; bad flags and unknown names fail
// with kiln's message and leave no directory behind.
func TestAssetMirrorExport(t *testing.T) {
	sha512sum, err := exec.LookPath("sha512sum")
	if err != nil {
		t.Fatal("sha512sum (GNU coreutils) is needed: ", err)
	}

	k := startKiln(t, nil, "--data-dir", t.TempDir(), "--demo")
	base := "http://" + k.addr
	client := &http.Client{Timeout: time.Minute}

	resp, err := client.Post(base+"/schematics", "application/yaml", strings.NewReader("customization:\n  extraKernelArgs: [console=ttyS0]\n"))
	if err != nil {
		t.Fatal(err)
	}

	var created struct{ ID string }
	if err := json.NewDecoder(resp.Body).Decode(&created); err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /schematics: %d %v", resp.StatusCode, err)
	}

	resp.Body.Close()

	out := t.TempDir()
	dir := filepath.Join(out, "v1.13.0")

	export := func(args ...string) (string, error) {
		t.Helper()

		cmd := exec.Command(binary(t, "KILN_BIN"), append([]string{"export", "--kiln", base}, args...)...)

		var stderr bytes.Buffer
		cmd.Stderr = &stderr

		err := cmd.Run()

		return stderr.String(), err
	}

	args := []string{"--schematic", created.ID, "--version", "1.13.0", "--output", out}

	log, err := export(args...)
	if err != nil {
		t.Fatalf("kiln export: %v\n%s", err, log)
	}

	files := []string{"metal-amd64.raw.xz", "vmlinuz-amd64", "initramfs-amd64.xz", "checksums.txt"}
	for _, want := range []string{"metal-amd64.raw.xz: downloading", "metal-amd64.raw.xz: done", "4 files, 4 written, 0 up to date"} {
		if !strings.Contains(log, want) {
			t.Errorf("the export's progress lacks %q:\n%s", want, log)
		}
	}

	check := func() {
		t.Helper()

		cmd := exec.Command(sha512sum, "-c", "--strict", "checksums.txt")
		cmd.Dir = dir

		b, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("sha512sum -c: %v\n%s", err, b)
		}

		if n := strings.Count(string(b), ": OK\n"); n != len(files)-1 {
			t.Fatalf("sha512sum -c checked %d files, want %d:\n%s", n, len(files)-1, b)
		}
	}

	check()

	type stamp struct {
		ino   uint64
		mtime time.Time
	}

	stamps := func() map[string]stamp {
		t.Helper()

		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}

		m := map[string]stamp{}

		for _, e := range entries {
			fi, err := e.Info()
			if err != nil {
				t.Fatal(err)
			}

			m[e.Name()] = stamp{fi.Sys().(*syscall.Stat_t).Ino, fi.ModTime()}
		}

		return m
	}

	first := stamps()
	if len(first) != len(files) {
		t.Fatalf("the directory holds %v, want %v", first, files)
	}

	log, err = export(args...)
	if err != nil {
		t.Fatalf("second kiln export: %v\n%s", err, log)
	}

	if !strings.Contains(log, "4 files, 0 written, 4 up to date") || strings.Contains(log, "downloading") {
		t.Errorf("the second export wrote something:\n%s", log)
	}

	for name, s := range stamps() {
		if first[name] != s {
			t.Errorf("%s changed on the second export: %+v, was %+v", name, s, first[name])
		}
	}

	// The exported bytes are what the route answers.
	for _, f := range files {
		resp, err := client.Get(base + "/assets/" + created.ID + "/v1.13.0/" + f)
		if err != nil {
			t.Fatal(err)
		}

		served, err := io.ReadAll(resp.Body)
		resp.Body.Close()

		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d %v", f, resp.StatusCode, err)
		}

		exported, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}

		if !bytes.Equal(served, exported) {
			t.Errorf("%s: the route's %d bytes differ from the exported %d", f, len(served), len(exported))
		}
	}

	// Resumed: a damaged file and a missing one are written again, and
	// only they; a temporary file an interrupted run left is removed.
	if err := os.WriteFile(filepath.Join(dir, "vmlinuz-amd64"), []byte("damaged"), 0o644); err != nil {
		t.Fatal(err)
	}

	if err := os.Remove(filepath.Join(dir, "initramfs-amd64.xz")); err != nil {
		t.Fatal(err)
	}

	if err := os.WriteFile(filepath.Join(dir, ".kiln-export-metal-amd64.raw.xz-123"), []byte("half"), 0o644); err != nil {
		t.Fatal(err)
	}

	log, err = export(args...)
	if err != nil {
		t.Fatalf("third kiln export: %v\n%s", err, log)
	}

	if !strings.Contains(log, "4 files, 2 written, 2 up to date") || !strings.Contains(log, "metal-amd64.raw.xz: up to date") {
		t.Errorf("the third export did not write exactly the two changed files:\n%s", log)
	}

	check()

	if s := stamps(); len(s) != len(files) || s["metal-amd64.raw.xz"] != first["metal-amd64.raw.xz"] {
		t.Errorf("after the third export the directory holds %v", s)
	}

	// Refused before anything is written.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--schematic", created.ID, "--version", "../../etc", "--output", out}, "--version"},
		{[]string{"--schematic", "../x", "--version", "v1.13.0", "--output", out}, "--schematic"},
		{[]string{"--schematic", created.ID, "--version", "v9.9.9", "--output", out}, "404 Not Found: version v9.9.9"},
		{[]string{"--schematic", strings.Repeat("0", 64), "--version", "v1.13.0", "--output", out}, "schematic not found"},
	} {
		log, err := export(tc.args...)
		if err == nil || !strings.Contains(log, tc.want) {
			t.Errorf("kiln export %v: %v, want a failure saying %q:\n%s", tc.args, err, tc.want, log)
		}
	}

	if entries, _ := os.ReadDir(out); len(entries) != 1 {
		t.Errorf("failed exports left directories in %s: %v", out, entries)
	}

	// A schematic embedding an image cache adds the cache and the disk
	// carrying it.
	resp, err = client.Post(base+"/schematics", "application/yaml", strings.NewReader("customization:\n  imageCache: {kubernetes: true}\n"))
	if err != nil {
		t.Fatal(err)
	}

	if err := json.NewDecoder(resp.Body).Decode(&created); err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /schematics: %d %v", resp.StatusCode, err)
	}

	resp.Body.Close()

	out = t.TempDir()
	dir = filepath.Join(out, "v1.13.0")

	log, err = export("--schematic", created.ID, "--version", "v1.13.0", "--output", out)
	if err != nil {
		t.Fatalf("kiln export of a cache schematic: %v\n%s", err, log)
	}

	files = []string{"metal-amd64.raw.xz", "vmlinuz-amd64", "initramfs-amd64.xz", "image-cache.oci", "metal-amd64-with-cache.raw.xz", "checksums.txt"}
	check()

	if got := stamps(); len(got) != len(files) {
		t.Errorf("the cache schematic's directory holds %v, want %v", got, files)
	}

	plain, err := os.Stat(filepath.Join(dir, "metal-amd64.raw.xz"))
	if err != nil {
		t.Fatal(err)
	}

	withCache, err := os.Stat(filepath.Join(dir, "metal-amd64-with-cache.raw.xz"))
	if err != nil {
		t.Fatal(err)
	}

	// GNU tar reads the cache as an OCI image layout.
	list, err := exec.Command("tar", "-tf", filepath.Join(dir, "image-cache.oci")).CombinedOutput()
	if err != nil {
		t.Fatalf("tar -tf image-cache.oci: %v\n%s", err, list)
	}

	for _, want := range []string{"oci-layout\n", "index.json\n", "blobs/sha256/"} {
		if !strings.Contains(string(list), want) {
			t.Errorf("image-cache.oci has no %s:\n%s", strings.TrimSpace(want), list)
		}
	}

	if withCache.Size() <= plain.Size() {
		t.Errorf("the disk with the cache (%d bytes) is no larger than the one without (%d)", withCache.Size(), plain.Size())
	}

	k.stop(t)
}
