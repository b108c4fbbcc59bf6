package machineconfig

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// checkResult is one line of hack/machineconfig-check's output.
type checkResult struct {
	Patch     string   `json:"patch"`
	Type      string   `json:"type"`
	Machinery string   `json:"machinery"`
	Error     string   `json:"error"`
	Warnings  []string `json:"warnings"`
	Summary   *summary `json:"summary"`
}

// runCheck runs one version's checker over patches, by file name.
func runCheck(t *testing.T, bin, version string, patches map[string][]byte) map[string][]checkResult {
	t.Helper()

	dir := t.TempDir()
	args := []string{"-talos", version}

	for name, p := range patches {
		path := filepath.Join(dir, strings.ReplaceAll(name, "/", "_")+".yaml")
		if err := os.WriteFile(path, p, 0o600); err != nil {
			t.Fatal(err)
		}

		args = append(args, path)
	}

	var stdout, stderr bytes.Buffer

	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr

	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v\n%s", bin, err, stderr.String())
	}

	out := map[string][]checkResult{}
	dec := json.NewDecoder(&stdout)

	for dec.More() {
		var r checkResult
		if err := dec.Decode(&r); err != nil {
			t.Fatalf("%s: output: %v", bin, err)
		}

		name := strings.TrimSuffix(filepath.Base(r.Patch), ".yaml")
		out[name] = append(out[name], r)
	}

	return out
}

// TestMachineryVersions checks the patches of each version with that
// version's own machinery: hack/machineconfig-check built once per version
// (make check-machineconfig), each binary named
// machineconfig-check-<version> in KILN_MACHINECONFIG_CHECK.
func TestMachineryVersions(t *testing.T) {
	dir := os.Getenv("KILN_MACHINECONFIG_CHECK")
	if dir == "" {
		// Building a checker per version takes minutes and the module
		// proxy: make check-machineconfig does it, then runs this.
		t.Skip("KILN_MACHINECONFIG_CHECK is not set: make check-machineconfig runs this test")
	}

	bins, err := filepath.Glob(filepath.Join(dir, "machineconfig-check-v*"))
	if err != nil || len(bins) == 0 {
		t.Fatalf("no machineconfig-check-v* in %s: %v", dir, err)
	}

	for _, bin := range bins {
		version := strings.TrimPrefix(filepath.Base(bin), "machineconfig-check-")

		t.Run(version, func(t *testing.T) {
			v, err := ParseVersion(version)
			if err != nil {
				t.Fatal(err)
			}

			patches := map[string][]byte{}
			want := map[string]summary{}

			for _, va := range variants(t, v) {
				p, err := Generate(va.opts)
				if err != nil {
					t.Fatalf("%s: %v", va.name, err)
				}

				key := strings.ReplaceAll(va.name, "/", "_")
				patches[key] = p.YAML
				want[key] = expected(t, va.opts, p)
			}

			// Without the gate, the documents form would put a TLS document
			// without a client identity where the node cannot read one.
			tlsDoc := "apiVersion: v1alpha1\nkind: RegistryTLSConfig\nname: kiln.lan:8443\ninsecureSkipVerify: true\n"
			if v.Has(RegistryDocuments) {
				patches["tls-document"] = []byte(tlsDoc)
			}

			results := runCheck(t, bin, v.String(), patches)

			for name, p := range patches {
				rs := results[name]
				if len(rs) != 2 {
					t.Fatalf("%s: %d results, want one per machine type", name, len(rs))
				}

				for _, r := range rs {
					if r.Machinery != version {
						t.Fatalf("%s was built with machinery %s", bin, r.Machinery)
					}

					if name == "tls-document" {
						readable := r.Error == ""
						if readable != v.Has(RegistryTLSDocumentWithoutClient) {
							t.Errorf("%s: a RegistryTLSConfig without clientIdentity: error %q, but Has(%s) = %v",
								r.Type, r.Error, RegistryTLSDocumentWithoutClient, v.Has(RegistryTLSDocumentWithoutClient))
						}

						continue
					}

					if r.Error != "" || len(r.Warnings) > 0 {
						t.Errorf("%s %s: error %q, warnings %q\n%s", name, r.Type, r.Error, r.Warnings, p)

						continue
					}

					if !reflect.DeepEqual(*r.Summary, want[name]) {
						t.Errorf("%s %s: the patched config reads as\n%+v\nwant\n%+v\npatch:\n%s", name, r.Type, *r.Summary, want[name], p)
					}
				}
			}
		})
	}
}
