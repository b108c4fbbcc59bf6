package main

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/access"
	"github.com/kiln-dev/kiln/internal/testfixture"
	"github.com/kiln-dev/kiln/server"
)

// emptySchematic is the ID of the schematic "{}".
const emptySchematic = "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba"

// startDemo runs kiln serve --demo in process on a random port, with the
// empty schematic created, and returns its base URL.
func startDemo(t *testing.T, cfg server.Config) string {
	t.Helper()

	cfg.Demo = true
	cfg.Listen = "127.0.0.1:0"
	cfg.ShutdownTimeout = 5 * time.Second

	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}

	logger := slog.New(slog.DiscardHandler)
	ctx, cancel := context.WithCancel(context.Background())

	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}

	cfg = cfg.WithListener(lis.Addr(), logger)

	deps, err := server.Build(ctx, cfg, logger)
	if err != nil {
		t.Fatal(err)
	}

	srv, err := server.New(ctx, cfg, logger, deps)
	if err != nil {
		t.Fatal(err)
	}

	done := make(chan error, 1)

	go func() { done <- srv.Serve(ctx, lis) }()

	t.Cleanup(func() {
		cancel()

		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})

	scheme := "http"
	if cfg.TLSCert != "" {
		scheme = "https"
	}

	base := scheme + "://" + lis.Addr().String()

	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // test certificate
	t.Cleanup(client.CloseIdleConnections)

	resp, err := client.Post(base+"/schematics", "application/yaml", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}

	resp.Body.Close()

	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /schematics = %s", resp.Status)
	}

	return base
}

// get fetches a route with the given Authorization (or none), skipping
// certificate checks.
func get(t *testing.T, u, authorization string) (int, string) {
	t.Helper()

	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // test certificate
	defer client.CloseIdleConnections()

	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}

	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}

	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()

	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}

	return resp.StatusCode, string(b)
}

// TestConfigAirgap: kiln config airgap prints what the route serves, byte
// for byte, with the route's options as flags; mistakes are named before
// any request, and kiln's 400s come through with its message.
func TestConfigAirgap(t *testing.T) {
	base := startDemo(t, server.Config{})

	for _, tc := range []struct {
		flags []string
		query string
	}{
		{nil, ""},
		{[]string{"--form", "legacy", "--platform", "nocloud", "--install-disk", "/dev/vda", "--cache-volume", "none"},
			"?cache-volume=none&form=legacy&install-disk=%2Fdev%2Fvda&platform=nocloud"},
	} {
		code, want := get(t, base+"/config/"+emptySchematic+"/v1.13.0/airgap.yaml"+tc.query, "")
		if code != 200 {
			t.Fatalf("GET = %d %s", code, want)
		}

		args := append([]string{"config", "airgap", "--kiln", base + "/", "--schematic", emptySchematic, "--talos-version", "1.13.0"}, tc.flags...)

		exit, stdout, stderr := runKiln(t, "", args...)
		if exit != 0 || stdout != want {
			t.Errorf("kiln %s = exit %d\n%s\nstderr: %s\nwant:\n%s", strings.Join(args, " "), exit, stdout, stderr, want)
		}

		if !strings.Contains(stderr, "warning: kiln ("+strings.TrimPrefix(base, "http://")+") is plain HTTP") {
			t.Errorf("the patch's warnings are not repeated on stderr: %q", stderr)
		}
	}

	common := []string{"config", "airgap", "--kiln", base, "--schematic", emptySchematic}

	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"config"}, "usage: kiln config airgap"},
		{[]string{"config", "airgap", "--kiln", base}, "--kiln, --schematic and --talos-version are required"},
		{[]string{"config", "airgap", "--kiln", "kiln.lan:8080", "--schematic", emptySchematic, "--talos-version", "v1.13.0"},
			`--kiln "kiln.lan:8080": want http(s)://host[:port]`},
		{[]string{"config", "airgap", "--kiln", base, "--schematic", "nothex", "--talos-version", "v1.13.0"},
			`--schematic "nothex": want a schematic ID, 64 lower-case hex digits`},
		{append(common, "--talos-version", "v1.9.0"), "--talos-version: invalid machine-config patch request: Talos version v1.9.0: machine-config patches are written for Talos v1.10.0 and later"},
		{append(common, "--talos-version", "v1.13.0", "--form", "yaml"), `--form: invalid machine-config patch request: form "yaml": want legacy or documents`},
		{append(common, "--talos-version", "v1.13.0", "--insecure"), "is plain HTTP: --ca-file and --insecure are for https"},
		{append(common, "--talos-version", "v1.13.0", "--username", "admin"), "--username needs --password or --password-file"},
		// kiln's own refusals, with its message.
		{append(common, "--talos-version", "v1.13.0", "--platform", "Metal"),
			`400 Bad Request: platform "Metal": want a Talos platform name such as metal or nocloud`},
		{append(common, "--talos-version", "v1.14.0"), "404 Not Found: version v1.14.0 is not available"},
		{[]string{"config", "airgap", "--kiln", base, "--schematic", strings.Repeat("0", 64), "--talos-version", "v1.13.0"},
			"404 Not Found: schematic not found"},
	} {
		exit, stdout, stderr := runKiln(t, "", tc.args...)
		if exit == 0 || stdout != "" || !strings.Contains(stderr, tc.msg) {
			t.Errorf("kiln %s = exit %d %q, stderr %q; want an error with %q", strings.Join(tc.args, " "), exit, stdout, stderr, tc.msg)
		}
	}
}

// TestConfigAirgapTLSAndAuth: over TLS the command trusts --ca-file (or
// nothing with --insecure), and a kiln with --auth-reads gets the
// credential of --password-file.
func TestConfigAirgapTLSAndAuth(t *testing.T) {
	dir := t.TempDir()
	cert, key := testfixture.SelfSignedCert(t, dir)
	data := filepath.Join(dir, "data")
	base := startDemo(t, server.Config{TLSCert: cert, TLSKey: key, DataDir: data, AuthReads: true})
	passwordFile := filepath.Join(data, "auth", "admin-password")

	args := []string{"config", "airgap", "--kiln", base, "--schematic", emptySchematic, "--talos-version", "v1.13.0"}

	exit, _, stderr := runKiln(t, "", append(args, "--ca-file", cert)...)
	if exit == 0 || !strings.Contains(stderr, "401 Unauthorized") || !strings.Contains(stderr, "--password-file <kiln data-dir>/auth/admin-password") {
		t.Errorf("without a credential: exit %d, stderr %q", exit, stderr)
	}

	exit, _, stderr = runKiln(t, "", append(args, "--password-file", passwordFile)...)
	if exit == 0 || !strings.Contains(stderr, "certificate") {
		t.Errorf("without --ca-file, a self-signed kiln: exit %d, stderr %q", exit, stderr)
	}

	password, err := access.ReadPassword(passwordFile)
	if err != nil {
		t.Fatal(err)
	}

	_, want := get(t, base+"/config/"+emptySchematic+"/v1.13.0/airgap.yaml", "Basic "+base64.StdEncoding.EncodeToString([]byte("admin:"+password)))
	if !strings.Contains(want, "kind: RegistryTLSConfig") {
		t.Fatalf("the patch of a kiln over TLS:\n%s", want)
	}

	for _, extra := range [][]string{
		{"--ca-file", cert, "--password-file", passwordFile},
		{"--insecure", "--username", "admin", "--password", password},
	} {
		exit, stdout, stderr := runKiln(t, "", append(args, extra...)...)
		if exit != 0 || stdout != want {
			t.Errorf("kiln config airgap %s = exit %d\n%s\nstderr: %s", strings.Join(extra, " "), exit, stdout, stderr)
		}

		if insecure := strings.Contains(stderr, "--insecure: kiln's certificate is not verified"); insecure != (extra[0] == "--insecure") {
			t.Errorf("%s: stderr %q", extra[0], stderr)
		}
	}
}
