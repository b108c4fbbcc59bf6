package main

import (
	"context"
	"crypto/sha512"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestExportRefusesBadAnswers: against a server that lies, kiln export
// fails naming what is wrong and leaves neither the file nor a temporary
// one behind: bytes that are not what checksums.txt says, a checksums.txt
// naming a path, and one cut off.
func TestExportRefusesBadAnswers(t *testing.T) {
	const id = "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba"

	sum := func(s string) string {
		h := sha512.Sum512([]byte(s))

		return hex.EncodeToString(h[:])
	}

	for name, tc := range map[string]struct {
		sums, want string
	}{
		"wrong bytes":   {sum("kernel") + "  vmlinuz-amd64\n", "kiln sent a file of sha512 " + sum("not the kernel")},
		"path":          {sum("kernel") + "  ../vmlinuz-amd64\n", "path separator"},
		"cut off":       {sum("kernel") + "  vmlinuz-amd64", "no newline"},
		"lists itself":  {sum("kernel") + "  checksums.txt\n", "not an asset"},
		"a temp's name": {sum("kernel") + "  .kiln-export-x\n", "not an asset"},
	} {
		t.Run(name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				switch r.URL.Path {
				case "/assets/" + id + "/v1.13.0/checksums.txt":
					io.WriteString(w, tc.sums) //nolint:errcheck // test server
				case "/assets/" + id + "/v1.13.0/vmlinuz-amd64":
					io.WriteString(w, "not the kernel") //nolint:errcheck // test server
				default:
					http.NotFound(w, r)
				}
			}))
			defer srv.Close()

			out := t.TempDir()

			var stderr strings.Builder

			err := exportCmd(context.Background(), []string{"--kiln", srv.URL, "--schematic", id, "--version", "v1.13.0", "--output", out},
				io.Discard, &stderr, func(string) string { return "" })
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("export: %v, want an error saying %q\n%s", err, tc.want, stderr.String())
			}

			entries, _ := os.ReadDir(filepath.Join(out, "v1.13.0"))
			for _, e := range entries {
				t.Errorf("left %s behind", e.Name())
			}
		})
	}
}
