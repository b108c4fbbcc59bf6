package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/kiln-dev/kiln/internal/version"
	"github.com/kiln-dev/kiln/schematic"
)

// schematicCmd: `kiln schematic id [FILE|-]` computes an ID without a server,
// the same one factory.talos.dev and `kiln serve` give.
func schematicCmd(args []string, stdin io.Reader, stdout io.Writer) error {
	if len(args) == 0 || args[0] != "id" || len(args) > 2 {
		return errors.New("usage: kiln schematic id [FILE|-]")
	}

	var (
		data []byte
		err  error
	)

	if len(args) == 1 || args[1] == "-" {
		data, err = io.ReadAll(stdin)
	} else {
		data, err = os.ReadFile(args[1])
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
