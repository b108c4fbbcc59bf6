//go:build e2e

package e2e

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// startRegistry runs Debian's distribution registry (docker-registry) on a
// free loopback port and returns host:port. It has no referrers API, like
// many registries users run, so signatures travel as tags.
func startRegistry(t *testing.T) string {
	t.Helper()

	bin := binary(t, "DOCKER_REGISTRY")

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}

	addr := l.Addr().String()
	l.Close()

	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yml")
	conf := fmt.Sprintf("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\n", filepath.Join(dir, "data"), addr)

	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(bin, "serve", cfg)

	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = writerFunc(logs.WriteString), writerFunc(logs.WriteString)

	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() {
		cmd.Process.Kill() //nolint:errcheck
		cmd.Wait()         //nolint:errcheck

		if t.Failed() {
			t.Logf("registry log:\n%s", logs.String())
		}
	})

	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()

			if resp.StatusCode == http.StatusOK {
				return addr
			}
		}

		time.Sleep(100 * time.Millisecond)
	}

	t.Fatalf("registry did not answer on %s\n%s", addr, logs.String())

	return ""
}

type writerFunc func(string)

func (f writerFunc) Write(p []byte) (int, error) {
	f(string(p))

	return len(p), nil
}
