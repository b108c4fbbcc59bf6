package server

import (
	"crypto/tls"
	"encoding/base64"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/siderolabs/talos/pkg/machinery/config/configloader"

	"github.com/kiln-dev/kiln/access"
	"github.com/kiln-dev/kiln/internal/testfixture"
	"github.com/kiln-dev/kiln/signing"
)

// loadPatch reads a served patch as talosctl reads a --config-patch,
// strictly (package machineconfig checks what it does to a config).
func loadPatch(t *testing.T, body string) {
	t.Helper()

	if _, err := configloader.NewFromBytes([]byte(body), configloader.WithAllowPatchDelete()); err != nil {
		t.Fatalf("the patch does not load: %v\n%s", err, body)
	}
}

func TestAirgapPatchRoute(t *testing.T) {
	ts := startServer(t, Config{Demo: true})

	resp, _ := ts.do(t, "POST", "/schematics", "{}")
	if resp.StatusCode != 201 {
		t.Fatal(resp.Status)
	}

	cacheID := createSchematic(t, ts, "customization: {imageCache: {kubernetes: true}}")

	base := "/config/" + emptyID + "/v1.13.0/airgap.yaml"

	resp, body := ts.do(t, "GET", base, "")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/yaml" {
		t.Fatalf("GET %s = %d %s: %s", base, resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}

	loadPatch(t, body)

	host := ts.addr
	for _, want := range []string{
		"image: " + host + "/metal-installer/" + emptyID + ":v1.13.0",
		"kind: RegistryMirrorConfig\nname: registry.k8s.io\nendpoints:\n- url: http://" + host + "/v2/kiln-demo/registry.k8s.io\n  overridePath: true\nskipFallback: true\n",
		"kind: RegistryMirrorConfig\nname: ghcr.io\nendpoints:\n- url: http://" + host + "/v2/kiln-demo\n  overridePath: true\n",
		"kind: RegistryMirrorConfig\nname: " + host + "\nendpoints:\n- url: http://" + host + "\n",
		"# WARNING: kiln (" + host + ") is plain HTTP",
		"is a loopback address",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the patch lacks %q:\n%s", want, body)
		}
	}

	// Every kiln has its signing key (made on first start), so the
	// installers it signs are verified by the node.
	if !strings.Contains(body, "kind: ImageVerificationConfig\nrules:\n- image: "+host+"/installer/*\n") {
		t.Errorf("the patch does not verify kiln's installers:\n%s", body)
	}

	for _, unwanted := range []string{"imageCache", "kind: VolumeConfig", "kind: RegistryTLSConfig", "--auth-reads"} {
		if strings.Contains(body, unwanted) {
			t.Errorf("a patch for a schematic without an image cache, over HTTP, has %s:\n%s", unwanted, body)
		}
	}

	resp, _ = ts.do(t, "HEAD", base, "")
	if resp.StatusCode != 200 {
		t.Errorf("HEAD = %d", resp.StatusCode)
	}

	// The legacy form, the image cache and its volume.
	_, body = ts.do(t, "GET", "/config/"+cacheID+"/v1.12.0/airgap.yaml?form=legacy&platform=nocloud", "")
	loadPatch(t, body)

	for _, want := range []string{
		"  registries:\n    mirrors:\n", "      registry.k8s.io:\n        endpoints:\n        - http://" + host + "/v2/kiln-demo/registry.k8s.io\n        overridePath: true\n",
		"  features:\n    imageCache:\n      localEnabled: true\n",
		"kind: VolumeConfig\nname: IMAGECACHE\n", "  minSize: 2GiB\n  maxSize: 2GiB\n",
		"image: " + host + "/nocloud-installer/" + cacheID + ":v1.12.0",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the legacy patch lacks %q:\n%s", want, body)
		}
	}

	_, body = ts.do(t, "GET", "/config/"+cacheID+"/v1.13.0/airgap.yaml?cache-volume=none", "")
	if !strings.Contains(body, "localEnabled: true") || strings.Contains(body, "VolumeConfig") {
		t.Errorf("cache-volume=none:\n%s", body)
	}

	for _, tc := range []struct {
		path   string
		status int
		msg    string
	}{
		{"/config/" + argsID + "/v1.13.0/airgap.yaml", 404, "schematic not found\n"},
		{"/config/nothex/v1.13.0/airgap.yaml", 404, "schematic not found\n"},
		{"/config/" + emptyID + "/v1.14.0/airgap.yaml", 404, "version v1.14.0 is not available\n"},
		{"/config/" + emptyID + "/1.x/airgap.yaml", 400, "Talos version \"1.x\": want vMAJOR.MINOR.PATCH\n"},
		{"/config/" + emptyID + "/v1.9.0/airgap.yaml", 400, "Talos version v1.9.0: machine-config patches are written for Talos v1.10.0 and later\n"},
		{base + "?form=yaml", 400, "form \"yaml\": want legacy or documents\n"},
		{base + "?forms=legacy", 400, "unknown parameter \"forms\": want form, platform, install-disk or cache-volume\n"},
		{base + "?platform=Metal", 400, "platform \"Metal\": want a Talos platform name such as metal or nocloud\n"},
		{base + "?install-disk=sda", 400, "install disk \"sda\": want a device path such as /dev/sda or /dev/disk/by-id/...\n"},
		{"/config/" + cacheID + "/v1.13.0/airgap.yaml?cache-volume=lots", 400,
			"cache volume size \"lots\": want a whole number of MiB, GiB, TiB, MB, GB or TB, e.g. 2GiB\n"},
	} {
		resp, body := ts.do(t, "GET", tc.path, "")
		if resp.StatusCode != tc.status || body != tc.msg {
			t.Errorf("GET %s = %d %q, want %d %q", tc.path, resp.StatusCode, body, tc.status, tc.msg)
		}
	}
}

// createSchematic posts a schematic and returns its ID.
func createSchematic(t *testing.T, ts *testServer, body string) string {
	t.Helper()

	resp, out := ts.do(t, "POST", "/schematics", body)
	if resp.StatusCode != 201 {
		t.Fatalf("POST /schematics = %d %s", resp.StatusCode, out)
	}

	_, id, ok := strings.Cut(out, `"id":"`)
	if !ok || len(id) < 64 {
		t.Fatalf("no id in %s", out)
	}

	return id[:64]
}

// TestAirgapPatchTLSAndKey: over TLS the patch trusts the CA of kiln's own
// certificate chain, and once kiln has a signing key the installers are
// verified with it.
func TestAirgapPatchTLSAndKey(t *testing.T) {
	dir := t.TempDir()
	cert, key := testfixture.SelfSignedCert(t, dir)
	data := filepath.Join(dir, "data")

	signer, _, err := signing.LoadOrCreateSigner(filepath.Join(data, signing.SigningKeyFile))
	if err != nil {
		t.Fatal(err)
	}

	ts := startServer(t, Config{Demo: true, TLSCert: cert, TLSKey: key, DataDir: data})
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // test certificate

	req, _ := http.NewRequest("POST", "https://"+ts.addr+"/schematics", strings.NewReader("{}"))
	if resp, err := client.Do(req); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
	}

	resp, err := client.Get("https://" + ts.addr + "/config/" + emptyID + "/v1.13.0/airgap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()

	b, _ := io.ReadAll(resp.Body)
	body := string(b)

	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}

	loadPatch(t, body)

	pemCert, err := os.ReadFile(cert)
	if err != nil {
		t.Fatal(err)
	}

	indent := func(s string, n int) string {
		pad := strings.Repeat(" ", n)

		return pad + strings.ReplaceAll(strings.TrimSuffix(s, "\n"), "\n", "\n"+pad) + "\n"
	}

	for _, want := range []string{
		"kind: RegistryTLSConfig\nname: " + ts.addr + "\nca: |\n" + indent(string(pemCert), 2),
		"kind: ImageVerificationConfig\nrules:\n- image: " + ts.addr + "/installer/*\n  publicKey:\n    certificate: |\n" + indent(string(signer.PublicKeyPEM()), 6),
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the patch lacks\n%s\n---\n%s", want, body)
		}
	}

	if strings.Contains(body, "plain HTTP") || strings.Contains(body, "http://") {
		t.Errorf("a patch for kiln over TLS names plain HTTP:\n%s", body)
	}
}

// TestAirgapPatchAuthReads: with --auth-reads the patch, which lists what
// the mirror holds, needs a credential as the registry's catalog does.
func TestAirgapPatchAuthReads(t *testing.T) {
	ts := startServer(t, Config{Demo: true, AuthReads: true})
	path := "/config/" + createSchematic(t, ts, "{}") + "/v1.13.0/airgap.yaml"

	resp, body := ts.do(t, "GET", path, "")
	if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") != access.Challenge || !strings.Contains(body, "--auth-reads") {
		t.Errorf("anonymous: %d %q %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"), body)
	}

	resp, body = ts.doWith(t, "GET", path, "", http.Header{"Authorization": {"Basic " + base64.StdEncoding.EncodeToString([]byte("admin:wrong"))}})
	if resp.StatusCode != 401 || body != "invalid credentials\n" {
		t.Errorf("wrong password: %d %q", resp.StatusCode, body)
	}

	resp, body = ts.doWith(t, "GET", path, "", http.Header{"Authorization": {ts.adminAuthorization(t)}})
	if resp.StatusCode != 200 {
		t.Fatalf("admin: %d %s", resp.StatusCode, body)
	}

	loadPatch(t, body)

	if !strings.Contains(body, "# WARNING: kiln ("+ts.addr+") requires credentials for reads (--auth-reads)") {
		t.Errorf("no warning that nodes need a credential:\n%s", body)
	}
}

// TestAirgapPatchBadExternalURL: an external URL that cannot name a
// registry in an image reference is kiln's setting, not the client's
// mistake: 412 naming it, not 400.
func TestAirgapPatchBadExternalURL(t *testing.T) {
	ts := startServer(t, Config{Demo: true, ExternalURL: "http://[fd00::5]:8080"})
	path := "/config/" + createSchematic(t, ts, "{}") + "/v1.13.0/airgap.yaml"

	resp, body := ts.do(t, "GET", path, "")
	if resp.StatusCode != 412 || !strings.Contains(body, `this kiln cannot write machine-config patches: kiln URL "http://[fd00::5]:8080"`) ||
		!strings.Contains(body, "--external-url") {
		t.Errorf("GET %s = %d %q", path, resp.StatusCode, body)
	}
}
