package testfixture

import (
	"os"
	"path/filepath"
	"testing"
)

// Golden compares got with testdata/<name>.golden; with update (each
// package's -update flag) it rewrites the file first.
func Golden(tb testing.TB, name, got string, update bool) {
	tb.Helper()

	path := filepath.Join("testdata", name+".golden")

	if update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			tb.Fatal(err)
		}
	}

	want, err := os.ReadFile(path)
	if err != nil {
		tb.Fatalf("%v (run with -update to create)", err)
	}

	if got != string(want) {
		tb.Errorf("%s:\ngot  %q\nwant %q", name, got, want)
	}
}
