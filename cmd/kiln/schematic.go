package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/kiln-dev/kiln/internal/version"
	"github.com/kiln-dev/kiln/schematic"
)

const schematicUsage = `Usage: kiln schematic id [FILE|-]

Prints the ID factory.talos.dev gives the schematic in FILE (YAML or JSON; -
or no FILE reads stdin), then its canonical form. Needs no server.
`

var errSchematicUsage = errors.New("usage: kiln schematic id [FILE|-]")

// schematicCmd: `kiln schematic id [FILE|-]` computes an ID without a server,
// the same one factory.talos.dev and `kiln serve` give.
func schematicCmd(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) > 0 && isHelp(args[0]) {
		fmt.Fprint(stdout, schematicUsage)

		return nil
	}

	if len(args) == 0 || args[0] != "id" {
		fmt.Fprint(stderr, schematicUsage)

		return errSchematicUsage
	}

	// A flag set, though id has no flags: -h is help, not a file name, and
	// -- ends the flags for a file whose name starts with a dash.
	fs := flag.NewFlagSet("kiln schematic id", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(fs.Output(), schematicUsage) }

	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}

		return errSchematicUsage
	}

	if fs.NArg() > 1 {
		return errSchematicUsage
	}

	file := fs.Arg(0)

	var (
		data []byte
		err  error
	)

	if file == "" || file == "-" {
		data, err = io.ReadAll(stdin)
	} else {
		data, err = os.ReadFile(file)
	}

	if err != nil {
		return err
	}

	sc, err := schematic.Parse(data)
	if err != nil {
		return err
	}

	canonical, err := sc.Marshal()
	if err != nil {
		return err
	}

	_, err = fmt.Fprintf(stdout, "%s\n---\n%s", schematic.IDOf(canonical), canonical)

	return err
}

func versionCmd(stdout io.Writer) error {
	_, err := fmt.Fprintln(stdout, "kiln", version.Version())

	return err
}
