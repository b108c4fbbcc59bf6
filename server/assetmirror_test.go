package server

import (
	"crypto/sha512"
	"encoding/hex"
	"strconv"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/internal/checksums"
	"github.com/kiln-dev/kiln/schematic"
)

// TestAssetMirror: checksums.txt lists every file of a schematic's mirror
// directory with the sha512 of the bytes each file's route answers; a
// schematic with an image cache adds the cache (an OCI layout tar) and the
// disk carrying it, its plain disk being the same schematic's without the
// cache; HEAD answers from the cache; bad names are 404 and 400.
func TestAssetMirror(t *testing.T) {
	ts := startServer(t, Config{Demo: true})
	createSchematic(t, ts, "{}")
	cacheID := createSchematic(t, ts, "customization: {imageCache: {kubernetes: true}}")

	plain, err := schematic.Parse([]byte("{}"))
	if err != nil {
		t.Fatal(err)
	}

	plainID, err := plain.ID()
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		id    string
		files []string
	}{
		{emptyID, []string{"metal-amd64.raw.xz", "vmlinuz-amd64", "initramfs-amd64.xz"}},
		{cacheID, []string{"metal-amd64.raw.xz", "vmlinuz-amd64", "initramfs-amd64.xz", "image-cache.oci", "metal-amd64-with-cache.raw.xz"}},
	} {
		base := "/assets/" + tc.id + "/v1.13.0/"

		for _, f := range append(tc.files, "checksums.txt") {
			if tc.id == cacheID && f == "metal-amd64.raw.xz" {
				continue // the plain schematic's disk, built above
			}

			resp, _ := ts.do(t, "HEAD", base+f, "")
			if resp.StatusCode != 200 || resp.Header.Get("X-Kiln-Cache") != "miss" || resp.Header.Get("Content-Length") != "" {
				t.Errorf("HEAD of unbuilt %s: %d %v", f, resp.StatusCode, resp.Header)
			}
		}

		resp, body := ts.do(t, "GET", base+"checksums.txt", "")
		if resp.StatusCode != 200 {
			t.Fatalf("GET checksums.txt: %d %s", resp.StatusCode, body)
		}

		entries, err := checksums.Parse([]byte(body))
		if err != nil {
			t.Fatalf("checksums.txt %q: %v", body, err)
		}

		if len(entries) != len(tc.files) {
			t.Fatalf("checksums.txt lists %v, want %v", entries, tc.files)
		}

		got := map[string]string{}

		for i, e := range entries {
			if e.Name != tc.files[i] {
				t.Errorf("line %d names %s, want %s", i+1, e.Name, tc.files[i])
			}

			resp, data := ts.do(t, "GET", base+e.Name, "")
			sum := sha512.Sum512([]byte(data))

			if resp.StatusCode != 200 || hex.EncodeToString(sum[:]) != e.SHA512 {
				t.Errorf("GET %s: %d, sha512 %x, checksums.txt says %s", e.Name, resp.StatusCode, sum, e.SHA512)
			}

			if resp.Header.Get("X-Kiln-Cache") != "hit" {
				t.Errorf("GET %s after checksums.txt built it: X-Kiln-Cache %q", e.Name, resp.Header.Get("X-Kiln-Cache"))
			}

			got[e.Name] = data
		}

		if got["vmlinuz-amd64"] == "" {
			t.Fatal("empty kernel")
		}

		if _, kernel := ts.do(t, "GET", "/image/"+tc.id+"/v1.13.0/kernel-amd64", ""); kernel != got["vmlinuz-amd64"] {
			t.Error("vmlinuz-amd64 is not /image/.../kernel-amd64")
		}

		if _, initramfs := ts.do(t, "GET", "/image/"+tc.id+"/v1.13.0/initramfs-amd64.xz", ""); initramfs != got["initramfs-amd64.xz"] {
			t.Error("initramfs-amd64.xz is not /image/.../initramfs-amd64.xz")
		}

		_, disk := ts.do(t, "GET", "/image/"+tc.id+"/v1.13.0/metal-amd64.raw.xz", "")
		if tc.id == cacheID {
			if disk != got["metal-amd64-with-cache.raw.xz"] || disk == got["metal-amd64.raw.xz"] {
				t.Error("metal-amd64-with-cache.raw.xz is not the schematic's disk, or metal-amd64.raw.xz is")
			}

			if _, plainDisk := ts.do(t, "GET", "/image/"+plainID+"/v1.13.0/metal-amd64.raw.xz", ""); plainDisk != got["metal-amd64.raw.xz"] {
				t.Error("metal-amd64.raw.xz of a cache schematic is not the disk of the schematic without the cache")
			}

			if !strings.Contains(got["image-cache.oci"], "oci-layout") {
				t.Error("image-cache.oci is not a tar of an OCI layout")
			}
		} else if disk != got["metal-amd64.raw.xz"] {
			t.Error("metal-amd64.raw.xz is not /image/.../metal-amd64.raw.xz")
		}

		for _, f := range tc.files {
			resp, _ := ts.do(t, "HEAD", base+f, "")
			if resp.StatusCode != 200 || resp.Header.Get("X-Kiln-Cache") != "hit" || resp.Header.Get("Content-Length") != strconv.Itoa(len(got[f])) {
				t.Errorf("HEAD of built %s: %d %v", f, resp.StatusCode, resp.Header)
			}
		}

		resp, _ = ts.do(t, "HEAD", base+"checksums.txt", "")
		if resp.StatusCode != 200 || resp.Header.Get("Content-Length") == "" || resp.Header.Get("X-Kiln-Cache") != "hit" {
			t.Errorf("HEAD checksums.txt: %d %v", resp.StatusCode, resp.Header)
		}
	}

	for path, want := range map[string]int{
		"/assets/" + emptyID + "/v1.13.0/metal-amd64.iso":               404,
		"/assets/" + emptyID + "/v1.13.0/image-cache.oci":               404,
		"/assets/" + emptyID + "/v9.9.9/vmlinuz-amd64":                  404,
		"/assets/" + emptyID + "/nonsense/vmlinuz-amd64":                400,
		"/assets/" + strings.Repeat("0", 64) + "/v1.13.0/vmlinuz-amd64": 404,
		"/assets/not-an-id/v1.13.0/checksums.txt":                       404,
	} {
		resp, body := ts.do(t, "GET", path, "")
		if resp.StatusCode != want || strings.TrimSpace(body) == "" {
			t.Errorf("GET %s = %d %q, want %d with a message", path, resp.StatusCode, body, want)
		}
	}
}
