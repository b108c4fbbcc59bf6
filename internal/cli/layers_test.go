package cli

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func newFlags() (*flag.FlagSet, *string, *string, *int) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.String(ConfigFlag, "", "")
	listen := fs.String("listen", "127.0.0.1:8080", "")
	dir := fs.String("data-dir", "./_data", "")
	n := fs.Int("max-builds", 2, "")

	return fs, listen, dir, n
}

func TestPrecedence(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "kiln.yaml")
	if err := os.WriteFile(cfg, []byte("listen: 0.0.0.0:9000\ndata-dir: /from/file\nmax-builds: 7\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	env := map[string]string{"KILN_CONFIG": cfg, "KILN_DATA_DIR": "/from/env"}

	fs, listen, dir, n := newFlags()
	if err := Parse(fs, []string{"--max-builds", "3"}, "KILN_", func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}

	if *listen != "0.0.0.0:9000" || *dir != "/from/env" || *n != 3 {
		t.Fatalf("got listen %q, data-dir %q, max-builds %d; want file, env, flag", *listen, *dir, *n)
	}
}

func TestDefaultsStay(t *testing.T) {
	fs, listen, dir, _ := newFlags()
	if err := Parse(fs, nil, "KILN_", func(string) string { return "" }); err != nil {
		t.Fatal(err)
	}

	if *listen != "127.0.0.1:8080" || *dir != "./_data" {
		t.Fatalf("defaults changed: %q %q", *listen, *dir)
	}
}

func TestErrors(t *testing.T) {
	dir := t.TempDir()

	for name, tc := range map[string]struct{ file, want string }{
		"unknown key": {"lisen: x\n", `unknown setting "lisen"`},
		"bad value":   {"max-builds: many\n", "max-builds"},
		"mapping":     {"listen: {a: b}\n", "takes a value"},
		"bad yaml":    {"listen: [\n", "config file"},
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".yaml")
			if err := os.WriteFile(path, []byte(tc.file), 0o644); err != nil {
				t.Fatal(err)
			}

			fs, _, _, _ := newFlags()

			err := Parse(fs, []string{"--config", path}, "KILN_", func(string) string { return "" })
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse() error = %v, want it to mention %q", err, tc.want)
			}
		})
	}

	fs, _, _, _ := newFlags()
	if err := Parse(fs, nil, "KILN_", func(k string) string { return map[string]string{"KILN_MAX_BUILDS": "x"}[k] }); err == nil || !strings.Contains(err.Error(), "KILN_MAX_BUILDS") {
		t.Fatalf("bad env value error = %v, want it to name KILN_MAX_BUILDS", err)
	}
}

func TestEmptyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "empty.yaml")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}

	fs, _, _, _ := newFlags()
	if err := Parse(fs, []string{"--config", path}, "KILN_", func(string) string { return "" }); err != nil {
		t.Fatalf("empty config file: %v", err)
	}
}
