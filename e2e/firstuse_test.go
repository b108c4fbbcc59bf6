//go:build integration

package e2e

import (
	"encoding/json"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestFirstUse checks, against the real binary started as make run starts
// it, what a new user ran into (issue 12): each answer as a client sees it.
func TestFirstUse(t *testing.T) {
	k := startKiln(t, nil, "--data-dir", t.TempDir(), "--demo")
	base := "http://" + k.addr
	client := &http.Client{Timeout: 30 * time.Second}

	if code, _, body := httpDo(t, client, "POST", base+"/schematics", "{}"); code != 201 {
		t.Fatalf("POST /schematics = %d %s", code, body)
	}

	t.Run("root", func(t *testing.T) {
		code, hdr, body := httpDo(t, client, "GET", base+"/", "")
		if code != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "text/plain") || !strings.Contains(body, "README") || !strings.Contains(body, "/image/") {
			t.Errorf("GET / = %d %q\n%s", code, hdr.Get("Content-Type"), body)
		}
	})

	t.Run("catalog", func(t *testing.T) {
		code, _, body := httpDo(t, client, "GET", base+"/v2/_catalog?n=100", "")

		var cat struct {
			Repositories []string `json:"repositories"`
		}

		if err := json.Unmarshal([]byte(body), &cat); code != 200 || err != nil || !strings.Contains(strings.Join(cat.Repositories, " "), "kiln-demo/siderolabs/imager") {
			t.Errorf("GET /v2/_catalog?n=100 = %d %s", code, body)
		}
	})

	t.Run("build refusals", func(t *testing.T) {
		for _, tc := range []struct {
			version, path string
			status        int
			message       string
		}{
			{"v1.99.0", "kernel-amd64", 404, "version v1.99.0 is not available"},
			{"v1.13.0", "metal-amd64.ssd", 400, "invalid profile path"},
			{"v1.13.0", "aws-amd64.raw.xz", 501, "platform aws"},
		} {
			code, hdr, body := httpDo(t, client, "POST", base+"/v1/images:build",
				`{"schematicId":"`+emptyID+`","version":"`+tc.version+`","path":"`+tc.path+`"}`)
			if code != tc.status || !strings.Contains(body, tc.message) || strings.Contains(body, `"result"`) {
				t.Errorf("POST /v1/images:build %s %s = %d %s; want %d", tc.version, tc.path, code, body, tc.status)
			}

			for h := range hdr {
				if strings.HasPrefix(h, "Grpc-") {
					t.Errorf("gateway header %s: %s", h, hdr.Get(h))
				}
			}
		}
	})

	t.Run("asset answers", func(t *testing.T) {
		code, hdr, _ := httpDo(t, client, "HEAD", base+"/image/"+emptyID+"/v1.13.0/metal-amd64.raw.zst", "")
		if code != 200 || hdr.Get("Content-Type") != "application/zstd" {
			t.Errorf("HEAD metal-amd64.raw.zst = %d %q, want 200 application/zstd", code, hdr.Get("Content-Type"))
		}

		code, _, body := httpDo(t, client, "GET", base+"/image/"+emptyID+"/v1.13.0/metal-amd64.ssd", "")
		if code != 400 || !strings.HasPrefix(body, `error parsing profile from path: invalid profile path: "metal-amd64.ssd"`) ||
			!strings.Contains(body, "<platform>-<arch>[-secureboot].iso") {
			t.Errorf("GET metal-amd64.ssd = %d %q", code, body)
		}

		if code, _, body = httpDo(t, client, "GET", base+"/image/"+emptyID+"/v1.13.0/aws-amd64.raw.xz", ""); code != 501 {
			t.Errorf("GET aws-amd64.raw.xz = %d %q", code, body)
		}

		code, hdr, _ = httpDo(t, client, "GET", base+"/v1/versions", "")
		if code != 200 || hdr.Get("Grpc-Metadata-Content-Type") != "" {
			t.Errorf("GET /v1/versions = %d, Grpc-Metadata-Content-Type %q", code, hdr.Get("Grpc-Metadata-Content-Type"))
		}
	})

	t.Run("help", func(t *testing.T) {
		for _, args := range [][]string{{"schematic", "id", "--help"}, {"cache", "--help"}, {"schematic", "--help"}} {
			out, err := exec.Command(binary(t, "KILN_BIN"), args...).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "Usage") {
				t.Errorf("kiln %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		}
	})

	k.stop(t)

	logs := k.logs.String()

	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, `"level":"ERROR"`) {
			t.Errorf("logged at ERROR: %s", line)
		}
	}

	if !strings.Contains(logs, `"msg":"kiln stopped"`) {
		t.Errorf("no \"kiln stopped\" line at shutdown:\n%s", logs)
	}
}
