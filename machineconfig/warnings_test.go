package machineconfig

import (
	"strings"
	"testing"
)

// TestUnreachableKiln: a patch naming an address no node can reach says
// so, with or without a port.
func TestUnreachableKiln(t *testing.T) {
	v, err := ParseVersion("v1.13.0")
	if err != nil {
		t.Fatal(err)
	}

	for url, want := range map[string]string{
		"http://127.0.0.1:8080":   "is a loopback address",
		"https://127.0.0.1":       "is a loopback address",
		"http://localhost:8080":   "is a loopback address",
		"http://0.0.0.0:8080":     "is the unspecified address",
		"https://kiln.lan:8443":   "",
		"http://10.0.0.5:8080":    "",
		"https://localhost.lan:1": "",
	} {
		p, err := Generate(Options{Version: v, Schematic: strings.Repeat("0", 64), Kiln: Registry{URL: url}, SigningKey: nil})
		if err != nil {
			t.Fatalf("%s: %v", url, err)
		}

		got := strings.Join(p.Warnings, "\n")
		if (want == "") != !strings.Contains(got, "nodes cannot reach it") || (want != "" && !strings.Contains(got, want)) {
			t.Errorf("%s: warnings %q, want %q", url, got, want)
		}
	}
}
