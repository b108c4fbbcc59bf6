// Command kiln is a local, air-gapped Image Factory for Talos Linux.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv)

	stop()
	os.Exit(code)
}

const usage = `kiln: a local, air-gapped Image Factory for Talos Linux

Usage:
  kiln serve [flags]            serve gRPC, REST and the Image Factory routes on one port
  kiln mirror --from SRC --to DST --version V   copy Talos releases with their signatures
  kiln cache create --images FILE|- --output DIR   write a talosctl-compatible image cache
  kiln schematic id [FILE|-]    print the ID and canonical form of a schematic, offline
  kiln config airgap --kiln URL --schematic ID --talos-version V   print the machine-config patch for nodes pulling from kiln
  kiln export --kiln URL --schematic ID --version V --output DIR   write a schematic's asset mirror directory
  kiln version                  print kiln's version

Run 'kiln <command> -h' for a command's flags. Every flag can also be set as a
KILN_* environment variable (--data-dir is KILN_DATA_DIR) or in the YAML file
named by --config.
`

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)

		return 2
	}

	var err error

	switch args[0] {
	case "serve":
		err = serve(ctx, args[1:], stderr, getenv)
	case "cache":
		err = cacheCmd(ctx, args[1:], stdin, stdout, stderr, getenv)
	case "mirror":
		err = mirrorCmd(ctx, args[1:], stdin, stdout, stderr, getenv)
	case "schematic":
		err = schematicCmd(args[1:], stdin, stdout, stderr)
	case "config":
		err = configCmd(ctx, args[1:], stdout, stderr, getenv)
	case "export":
		err = exportCmd(ctx, args[1:], stdout, stderr, getenv)
	case "version":
		err = versionCmd(stdout)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)

		return 0
	default:
		fmt.Fprintf(stderr, "kiln: unknown command %q\n\n%s", args[0], usage)

		return 2
	}

	if err != nil {
		fmt.Fprintf(stderr, "kiln %s: %v\n", args[0], err)

		return 1
	}

	return 0
}

// isHelp reports whether arg asks for help rather than naming something.
func isHelp(arg string) bool {
	switch arg {
	case "help", "-h", "-help", "--help":
		return true
	}

	return false
}
