package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runKiln(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()

	var stdout, stderr bytes.Buffer

	code := run(t.Context(), args, strings.NewReader(stdin), &stdout, &stderr, func(string) string { return "" })

	return code, stdout.String(), stderr.String()
}

// TestHelp: asking any command for help shows its usage and succeeds; it is
// never read as an argument (a file named --help).
func TestHelp(t *testing.T) {
	for _, args := range [][]string{
		{"help"}, {"-h"}, {"--help"},
		{"serve", "--help"}, {"mirror", "--help"},
		{"cache", "--help"}, {"cache", "-h"}, {"cache", "help"}, {"cache", "create", "--help"},
		{"schematic", "--help"}, {"schematic", "-h"}, {"config", "--help"}, {"config", "airgap", "--help"}, {"config", "airgap", "-h"}, {"schematic", "id", "--help"}, {"schematic", "id", "-h"},
	} {
		code, stdout, stderr := runKiln(t, "", args...)
		if code != 0 || !strings.Contains(stdout+stderr, "Usage") || strings.Contains(stdout+stderr, "no such file") {
			t.Errorf("kiln %s = exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, stdout, stderr)
		}
	}
}

func TestSchematicID(t *testing.T) {
	const (
		body = `{"customization":{"extraKernelArgs":["noapic","nolapic"]}}`
		id   = "9cba8e32753f91a16c1837ab8abf356af021706ef284aef07380780177d9a06c"
	)

	file := filepath.Join(t.TempDir(), "s.yaml")
	if err := os.WriteFile(file, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}

	for _, args := range [][]string{{"schematic", "id", file}, {"schematic", "id", "-"}, {"schematic", "id"}, {"schematic", "id", "--", file}} {
		if code, stdout, stderr := runKiln(t, body, args...); code != 0 || !strings.HasPrefix(stdout, id+"\n---\n") {
			t.Errorf("kiln %s = exit %d %q %q", strings.Join(args, " "), code, stdout, stderr)
		}
	}

	for _, args := range [][]string{{"schematic"}, {"schematic", "ids"}, {"schematic", "id", file, file}, {"schematic", "id", "--bogus"}} {
		if code, _, stderr := runKiln(t, body, args...); code == 0 || !strings.Contains(stderr, "kiln schematic id") {
			t.Errorf("kiln %s = exit %d, stderr %q; want a usage error", strings.Join(args, " "), code, stderr)
		}
	}
}
