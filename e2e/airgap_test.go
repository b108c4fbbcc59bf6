//go:build e2e

package e2e

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/config/configloader"

	"github.com/kiln-dev/kiln/internal/testfixture"
)

// TestAirgapPatchPulls: a registry client configured from nothing but the
// mirrors of kiln's machine-config patch, as Talos reads them, pulls every
// image of kiln's mirror by its upstream name with the digest kiln holds.
//
// The client is skopeo (containers/image): its registries.conf gets one
// mirror per RegistryMirrorConfig (or machine.registries.mirrors entry) of
// the patch, translated as containerd reads Talos's hosts.toml: an endpoint
// with overridePath is the registry's /v2 root, so http://kiln/v2/ns/host
// is the containers/image location kiln/ns/host. The upstream registries
// themselves point at a closed port, as skipFallback would have it, so a
// pull that the mirror did not answer fails.
func TestAirgapPatchPulls(t *testing.T) {
	t.Run("http", func(t *testing.T) {
		k := startKiln(t, nil, "--data-dir", t.TempDir(), "--demo")
		airgapPulls(t, k, "http", "", &http.Client{Timeout: time.Minute})
		k.stop(t)
	})

	// Over TLS, the CA the patch names for kiln's host is the only one
	// skopeo trusts (its --cert-dir), and the mirrors are https.
	t.Run("tls", func(t *testing.T) {
		dir := t.TempDir()
		cert, key := testfixture.SelfSignedCert(t, dir)
		k := startKiln(t, nil, "--data-dir", filepath.Join(dir, "data"), "--demo", "--tls-cert", cert, "--tls-key", key)

		pool := x509.NewCertPool()
		if pem, err := os.ReadFile(cert); err != nil || !pool.AppendCertsFromPEM(pem) {
			t.Fatalf("%s: %v", cert, err)
		}

		client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
		airgapPulls(t, k, "https", cert, client)
		k.stop(t)
	})
}

// airgapPulls pulls every image of k's demo mirror through the mirrors of
// its patches, in both forms.
func airgapPulls(t *testing.T, k *kiln, scheme, caFile string, client *http.Client) {
	t.Helper()

	crane := binary(t, "CRANE")
	kilnBin := binary(t, "KILN_BIN")
	base := scheme + "://" + k.addr

	const schematicID = "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba"

	if code, _, body := httpDo(t, client, "POST", base+"/schematics", "{}"); code != 201 {
		t.Fatalf("POST /schematics = %d %s", code, body)
	}

	// Every tag of every repository the mirror holds, by the name a node
	// asks for, with the digest kiln has for it (crane --insecure: plain
	// HTTP, or any certificate).
	var images []mirroredImage

	for _, repo := range strings.Fields(run(t, crane, "catalog", "--insecure", k.addr)) {
		path, ok := strings.CutPrefix(repo, "kiln-demo/")
		if !ok {
			t.Fatalf("repository %s is not under the demo namespace", repo)
		}

		// package release keeps ghcr.io's repositories without the host.
		upstream := "ghcr.io/" + path
		if first, _, _ := strings.Cut(path, "/"); strings.ContainsAny(first, ".:") {
			upstream = path
		}

		for _, tag := range strings.Fields(run(t, crane, "ls", "--insecure", k.addr+"/"+repo)) {
			ref := k.addr + "/" + repo + ":" + tag
			images = append(images, mirroredImage{upstream: upstream + ":" + tag, kiln: ref, digest: strings.TrimSpace(run(t, crane, "digest", "--insecure", ref))})
		}
	}

	if len(images) < 20 {
		t.Fatalf("the demo mirror holds %d images", len(images))
	}

	for _, tc := range []struct {
		version string
		flags   []string
		form    string
	}{
		{"v1.13.0", nil, "RegistryMirrorConfig"},
		// Before 1.12.2 the TLS settings are in machine.registries.config.
		{"v1.12.0", []string{"--form", "legacy"}, "  registries:\n    mirrors:\n"},
	} {
		t.Run(tc.version+strings.Join(tc.flags, ""), func(t *testing.T) {
			args := append([]string{"config", "airgap", "--kiln", base, "--schematic", schematicID, "--talos-version", tc.version}, tc.flags...)
			if caFile != "" {
				args = append(args, "--ca-file", caFile)
			}

			out, err := exec.Command(kilnBin, args...).Output()
			if err != nil {
				t.Fatalf("kiln %s: %v", strings.Join(args, " "), err)
			}

			patch := string(out)
			if !strings.Contains(patch, tc.form) {
				t.Fatalf("not the %q form:\n%s", tc.form, patch)
			}

			query := ""
			if len(tc.flags) > 0 {
				query = "?form=legacy"
			}

			if code, _, body := httpDo(t, client, "GET", base+"/config/"+schematicID+"/"+tc.version+"/airgap.yaml"+query, ""); code != 200 || body != patch {
				t.Fatalf("GET /config/... = %d, not what kiln config airgap printed:\n%s", code, body)
			}

			certDir := t.TempDir()
			conf := registriesConf(t, patch, certDir)
			t.Logf("registries.conf from the patch:\n%s", conf)

			if _, err := os.Stat(filepath.Join(certDir, "ca.crt")); (err == nil) != (scheme == "https") {
				t.Fatalf("over %s, the patch's CA for kiln: %v", scheme, err)
			}

			confFile := filepath.Join(t.TempDir(), "registries.conf")
			if err := os.WriteFile(confFile, []byte(conf), 0o644); err != nil {
				t.Fatal(err)
			}

			if scheme == "https" {
				// The control: without the patch's CA kiln is not trusted.
				if err := pullThroughMirror(confFile, t.TempDir(), filepath.Join(t.TempDir(), "control"), images[0]); err == nil ||
					!strings.Contains(err.Error(), "certificate") {
					t.Fatalf("a pull through kiln over TLS without the patch's CA: %v", err)
				}
			}

			start := time.Now()

			for i, img := range images {
				if err := pullThroughMirror(confFile, certDir, filepath.Join(t.TempDir(), strconv.Itoa(i)), img); err != nil {
					t.Error(err)
				}
			}

			t.Logf("pulled %d images (%s) by their upstream names in %s", len(images), upstreamHosts(images), time.Since(start).Round(time.Millisecond))
		})
	}
}

// pullThroughMirror pulls an image by its upstream name with skopeo
// configured by confFile, and checks it is kiln's: the manifest skopeo gets
// has kiln's digest, and the linux/amd64 image (the image itself when it is
// no index) is copied whole, every blob checked against its digest, into
// dir with the manifest the index names. certDir holds the only CA skopeo
// trusts.
func pullThroughMirror(confFile, certDir, dir string, img mirroredImage) error {
	skopeo := func(args ...string) ([]byte, error) {
		cmd := exec.Command("skopeo", append([]string{"--registries-conf", confFile, "--insecure-policy"}, args...)...)
		// No credential of this machine's user reaches kiln.
		cmd.Env = append(os.Environ(), "REGISTRY_AUTH_FILE="+dir+".auth.json")

		var stderr bytes.Buffer
		cmd.Stderr = &stderr

		out, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("skopeo %s (kiln's %s): %w\n%s", strings.Join(args, " "), img.kiln, err, stderr.String())
		}

		return out, nil
	}

	raw, err := skopeo("inspect", "--raw", "--retry-times", "0", "--cert-dir", certDir, "docker://"+img.upstream)
	if err != nil {
		return err
	}

	if got := digestOf(raw); got != img.digest {
		return fmt.Errorf("%s through the patch's mirror is %s; kiln holds %s as %s", img.upstream, got, img.kiln, img.digest)
	}

	want := img.digest

	var index struct {
		Manifests []struct {
			Digest   string `json:"digest"`
			Platform struct {
				OS           string `json:"os"`
				Architecture string `json:"architecture"`
			} `json:"platform"`
		} `json:"manifests"`
	}

	if err := json.Unmarshal(raw, &index); err != nil {
		return fmt.Errorf("%s: %w", img.upstream, err)
	}

	if len(index.Manifests) > 0 {
		want = ""

		for _, m := range index.Manifests {
			if m.Platform.OS == "linux" && m.Platform.Architecture == "amd64" {
				want = m.Digest
			}
		}

		if want == "" {
			return nil // nothing for this machine to pull whole
		}
	}

	if _, err := skopeo("copy", "--preserve-digests", "--retry-times", "0", "--src-cert-dir", certDir, "--override-os", "linux", "--override-arch", "amd64",
		"docker://"+img.upstream, "dir:"+dir); err != nil {
		return err
	}

	manifest, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return err
	}

	if got := digestOf(manifest); got != want {
		return fmt.Errorf("%s: the linux/amd64 image pulled through the patch's mirror is %s, want %s", img.upstream, got, want)
	}

	return nil
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)

	return "sha256:" + hex.EncodeToString(sum[:])
}

// registriesConf is a containers-registries.conf(5) with the patch's
// mirrors, read by Talos's own config loader; the CAs the patch gives the
// mirrors' hosts go to certDir/ca.crt.
func registriesConf(t *testing.T, patch, certDir string) string {
	t.Helper()

	cfg, err := configloader.NewFromBytes([]byte(patch), configloader.WithAllowPatchDelete())
	if err != nil {
		t.Fatalf("Talos's loader refuses the patch: %v", err)
	}

	tlsConfigs := cfg.RegistryTLSConfigs()

	var cas []byte

	for host, c := range tlsConfigs {
		if c.InsecureSkipVerify() {
			t.Fatalf("%s: insecureSkipVerify", host)
		}

		cas = append(cas, c.CA()...)
	}

	if len(cas) > 0 {
		if err := os.WriteFile(filepath.Join(certDir, "ca.crt"), cas, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	mirrors := cfg.RegistryMirrorConfigs()
	hosts := make([]string, 0, len(mirrors))

	for h := range mirrors {
		hosts = append(hosts, h)
	}

	slices.Sort(hosts)

	var b strings.Builder

	b.WriteString("unqualified-search-registries = []\n")

	for _, h := range hosts {
		m := mirrors[h]
		if !m.SkipFallback() {
			t.Errorf("the mirror of %s falls back to %s itself", h, h)
		}

		// The upstream itself: a closed port, as with skipFallback.
		fmt.Fprintf(&b, "\n[[registry]]\nprefix = %q\nlocation = %q\n", h, "127.0.0.1:1/"+h)

		for _, ep := range m.Endpoints() {
			u, err := url.Parse(ep.Endpoint())
			if err != nil {
				t.Fatal(err)
			}

			path := u.Path
			if ep.OverridePath() {
				var ok bool
				if path, ok = strings.CutPrefix(path, "/v2"); !ok {
					t.Fatalf("%s: an overridePath endpoint %s that is not a registry's /v2 root", h, ep.Endpoint())
				}
			} else if path != "" && path != "/" {
				// containerd would ask <path>/v2/..., which no
				// containers/image location can say (and kiln never writes).
				t.Fatalf("%s: endpoint %s has a path without overridePath", h, ep.Endpoint())
			}

			if u.Scheme == "https" && tlsConfigs[u.Host] == nil {
				t.Errorf("%s: no TLS settings for the https endpoint %s", h, ep.Endpoint())
			}

			fmt.Fprintf(&b, "[[registry.mirror]]\nlocation = %q\ninsecure = %t\n", u.Host+strings.TrimSuffix(path, "/"), u.Scheme == "http")
		}
	}

	return b.String()
}

// mirroredImage is an image of kiln's mirror: the name a node pulls, the
// name in kiln's registry, the digest kiln holds.
type mirroredImage struct{ upstream, kiln, digest string }

// upstreamHosts counts images by upstream registry.
func upstreamHosts(images []mirroredImage) string {
	seen := map[string]int{}

	for _, img := range images {
		host, _, _ := strings.Cut(img.upstream, "/")
		seen[host]++
	}

	var out []string
	for h, n := range seen {
		out = append(out, fmt.Sprintf("%s: %d", h, n))
	}

	slices.Sort(out)

	return strings.Join(out, ", ")
}
