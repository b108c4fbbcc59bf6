package main

import (
	"flag"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/internal/cli"
	"github.com/kiln-dev/kiln/server"
)

var update = flag.Bool("update", false, "rewrite the README's generated configuration table")

const (
	readmePath   = "../../README.md"
	flagsBegin   = "<!-- kiln serve flags: generated from cmd/kiln/serve.go by `go test ./cmd/kiln -run TestREADMEServeFlags -update`; do not edit -->"
	flagsEnd     = "<!-- end of kiln serve flags -->"
	noDefaultCol = "—"
)

// serveFlagsTable is the README's table of kiln serve's flags, one row per
// flag of the flag set itself, so the two cannot differ.
func serveFlagsTable() string {
	cfg := server.DefaultConfig()
	fs, _ := newServeFlags(&cfg, io.Discard)

	var b strings.Builder

	b.WriteString("| flag | environment | default | |\n| --- | --- | --- | --- |\n")

	fs.VisitAll(func(f *flag.Flag) {
		def := noDefaultCol
		if f.DefValue != "" {
			def = "`" + f.DefValue + "`"
		}

		b.WriteString("| `--" + f.Name + "` | `" + cli.EnvName(serveEnvPrefix, f.Name) + "` | " + def + " | " + markdownCell(f.Usage) + " |\n")
	})

	return b.String()
}

// markdownCell keeps a usage text from breaking the table or reading as HTML.
func markdownCell(s string) string {
	return strings.NewReplacer("|", `\|`, "<", "&lt;", ">", "&gt;").Replace(s)
}

// TestREADMEServeFlags fails when the README's configuration table is not
// the one the flag set gives; -update rewrites it.
func TestREADMEServeFlags(t *testing.T) {
	data, err := os.ReadFile(readmePath)
	if err != nil {
		t.Fatal(err)
	}

	readme := string(data)

	before, rest, ok := strings.Cut(readme, flagsBegin+"\n")
	if !ok {
		t.Fatalf("README.md has no line %q", flagsBegin)
	}

	table, after, ok := strings.Cut(rest, flagsEnd)
	if !ok {
		t.Fatalf("README.md has no line %q after the table", flagsEnd)
	}

	want := serveFlagsTable()
	if table == want {
		return
	}

	if *update {
		if err := os.WriteFile(readmePath, []byte(before+flagsBegin+"\n"+want+flagsEnd+after), 0o644); err != nil {
			t.Fatal(err)
		}

		return
	}

	t.Errorf("README.md's kiln serve table differs from the flags (go test ./cmd/kiln -run TestREADMEServeFlags -update rewrites it)\ngot:\n%s\nwant:\n%s", table, want)
}
