// Command factory-oracle answers, for each schematic body it is given, what
// the public Image Factory's own schematic package makes of it: the ID and
// canonical form, or the refusal. kiln's differential test
// (schematic/factorydiff_test.go) drives it.
//
// It lives in its own module so that the factory's code is built with the
// factory's dependency versions, not kiln's: inside kiln's module, minimal
// version selection would hand both sides the same YAML library and hide the
// very differences the test looks for.
//
// Protocol: one JSON object per line on stdin, {"in": <base64 body>}; one per
// line on stdout, {"id", "canonical"} or {"refused": true, "err"}. Canonical
// forms and messages travel as base64 bytes: the YAML library cuts quoted
// values in its messages at a byte count, in the middle of a UTF-8 sequence,
// and a JSON string would replace those bytes.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime/debug"

	"github.com/siderolabs/image-factory/pkg/schematic"
)

type request struct {
	In []byte `json:"in"`
}

type response struct {
	ID        string `json:"id,omitempty"`
	Canonical []byte `json:"canonical,omitempty"`
	Refused   bool   `json:"refused,omitempty"`
	Err       []byte `json:"err,omitempty"`
	// Panic is set when the factory's code panicked: the factory's HTTP
	// server would have answered 500 (net/http recovers handler panics).
	Panic string `json:"panic,omitempty"`
}

func main() {
	if len(os.Args) == 2 && os.Args[1] == "-versions" {
		printVersions()

		return
	}

	if err := serve(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "factory-oracle:", err)
		os.Exit(1)
	}
}

func serve(r io.Reader, w io.Writer) error {
	dec := json.NewDecoder(bufio.NewReader(r))
	out := bufio.NewWriter(w)
	enc := json.NewEncoder(out)

	for {
		var req request
		if err := dec.Decode(&req); err != nil {
			if err == io.EOF {
				return nil
			}

			return fmt.Errorf("read request: %w", err)
		}

		if err := enc.Encode(answer(req.In)); err != nil {
			return fmt.Errorf("write answer: %w", err)
		}

		// The driver waits for each answer before it sends the next body.
		if err := out.Flush(); err != nil {
			return fmt.Errorf("write answer: %w", err)
		}
	}
}

// answer is what handleSchematicCreate does with a body, in its order:
// Unmarshal, Validate (community edition), then ID and Marshal.
func answer(body []byte) (resp response) {
	defer func() {
		if p := recover(); p != nil {
			resp = response{Panic: fmt.Sprint(p)}
		}
	}()

	s, err := schematic.Unmarshal(body)
	if err != nil {
		return refused(err)
	}

	if err = s.Validate(false); err != nil {
		return refused(err)
	}

	id, err := s.ID()
	if err != nil {
		return refused(err)
	}

	canonical, err := s.Marshal()
	if err != nil {
		return refused(err)
	}

	return response{ID: id, Canonical: canonical}
}

func refused(err error) response {
	return response{Refused: true, Err: []byte(err.Error())}
}

// printVersions names the modules the oracle was built from, for the log
// of a differential run.
func printVersions() {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		fmt.Println("no build info")

		return
	}

	fmt.Println(info.GoVersion)

	for _, m := range info.Deps {
		fmt.Println(m.Path, m.Version)
	}
}
