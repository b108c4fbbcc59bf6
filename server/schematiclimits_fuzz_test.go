package server

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v4"
)

// oracleNodes counts what the real decoder constructs from data: every
// document decoded into plain Go values (aliases expanded, as a schematic's
// decoding expands them), a value per node. ok is false when the decoder
// refuses data.
func oracleNodes(data []byte) (nodes, raw int, ok bool) {
	dec := yaml.NewDecoder(bytes.NewReader(data))

	for {
		var v any

		err := dec.Decode(&v)
		if errors.Is(err, io.EOF) {
			break
		}

		if err != nil {
			return 0, 0, false
		}

		nodes += 1 + countValue(v)
	}

	// The same documents as nodes, aliases not expanded: what the parser
	// holds in memory before decoding.
	dec = yaml.NewDecoder(bytes.NewReader(data))

	for {
		var n yaml.Node

		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			break
		}

		if err != nil {
			return 0, 0, false
		}

		walkNodes(&n, func(*yaml.Node) { raw++ })
	}

	return nodes, raw, true
}

func countValue(v any) int {
	n := 1

	switch t := v.(type) {
	case map[string]any:
		for _, c := range t {
			n += 1 + countValue(c)
		}
	case map[any]any:
		for k, c := range t {
			n += countValue(k) + countValue(c)
		}
	case []any:
		for _, c := range t {
			n += countValue(c)
		}
	}

	return n
}

// schematicTextSeeds are shapes that once fooled, or could fool, the
// reduction: quotes that are not quotes, block headers inside strings or
// flow collections, aliases.
var schematicTextSeeds = []string{
	"customization:\n  embeddedMachineConfiguration: |\n    a: b\n    c:\n    - d\n    - e\n  extraKernelArgs: [a, b]\n",
	"customization: {embeddedMachineConfiguration: \"a: [b, c, d, e]\\nf: g\"}\n",
	`{"customization":{"embeddedMachineConfiguration":"x: - , [ { : - , ","extraKernelArgs":["a","b"]}}`,
	"- \"x: \"\n- 1\n- 1\n- 1\n- 1\n- \"y\"\n",
	"[\"x: \", 1, 1, 1, 1, 1, 1, \"y\"]\n",
	"key: a\n  \"b\n- 1\n- 1\n- \"\n",
	"[ \"a: |\n  x\", 1,1,1,1,1,1,1,1,\n  1,1,1 ]\n",
	"- \"a: |\n  x\"\n- 1\n- 1\n- 1\n",
	"a: |\n  x\n  - 1\n  - 1\nb: [1, 1, 1, 1]\n",
	"a: |+\n\nb: [1, 1, 1, 1, 1, 1]\n",
	"a: >2\n   x\n  y\nb: [1,1,1,1]\n",
	"a: &a [1, 1, 1, 1, 1, 1]\nb: [*a, *a, *a, *a, *a, *a, *a]\n",
	"a: &a 'long long long'\nb: [*a, *a, *a, *a]\n",
	"# x: \"\n- 1\n- 1\n- \"\n",
	"k: 'it''s: \"'\n- [1,1,1]\n",
	"a: \"\\\"\" \nb: [1,1,1,1,1]\n",
	"a: |\r\n  x\r\n  y\r\nb: [1,1,1,1,1]\n",
	"a: |\n  x\n  \u0085b: [1,1,1,1,1,1,1]\n",
	"{a: 1}\n---\n[1, 1, 1, 1, 1]\n",
}

// FuzzSchematicTextBound: whatever checkSchematicText lets through, the real
// decoder builds at most MaxNodes values from (so a schematic's memory is
// bounded before the decoder runs), and the parser's nodes stay within a
// small multiple of structureBound (the guard of the reduced parse). The
// limits are tiny so that small inputs reach them, and quoted strings of 3
// bytes are cut.
func FuzzSchematicTextBound(f *testing.F) {
	for _, s := range schematicTextSeeds {
		f.Add([]byte(s))
	}

	lim := SchematicLimits{MaxBytes: 1 << 20, MaxNodes: 12, Parallel: 1, minCut: 3}

	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 4096 {
			return
		}

		var (
			err        error
			nodes, raw int
			ok         bool
			done       = make(chan struct{})
		)

		go func() {
			defer close(done)

			err = checkSchematicText(data, lim)
			nodes, raw, ok = oracleNodes(data)
		}()

		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("%q: no answer in 10 s", data)
		}

		if !ok {
			return
		}

		if err == nil && nodes > lim.MaxNodes {
			t.Fatalf("accepted %q, which decodes to %d values (limit %d)", data, nodes, lim.MaxNodes)
		}

		if b := structureBound(data); raw > 3*b {
			t.Fatalf("%q: %d parser nodes for a structure bound of %d", data, raw, b)
		}
	})
}

// The seeds as a plain test: with the tiny limits nothing over them gets
// through, and with the server's limits nothing the decoder takes is
// refused (they are all far below them).
func TestSchematicTextSeeds(t *testing.T) {
	tiny := SchematicLimits{MaxBytes: 1 << 20, MaxNodes: 12, Parallel: 1, minCut: 3}

	for _, s := range schematicTextSeeds {
		nodes, _, ok := oracleNodes([]byte(s))
		if !ok {
			continue
		}

		if err := checkSchematicText([]byte(s), tiny); err == nil && nodes > tiny.MaxNodes {
			t.Errorf("accepted %q, %d values", s, nodes)
		}

		if err := checkSchematicText([]byte(s), DefaultSchematicLimits()); err != nil {
			t.Errorf("%q refused with the server's limits: %v", s, err)
		}
	}
}

// Texts the size of the limit, shaped to make the check itself slow: runs
// of quotes that never close, escapes, block headers, spaces before quotes.
// Each must be answered (the test's timeout is the bound; a quadratic scan
// of 4 MiB would not finish).
func TestSchematicTextCheckLinear(t *testing.T) {
	lim := DefaultSchematicLimits()

	for name, text := range schematicTextsForSpeed() {
		start := time.Now()
		err := checkSchematicText([]byte(text), lim)
		t.Logf("%s: %v in %s", name, err, time.Since(start).Round(time.Millisecond))
	}
}

func schematicTextsForSpeed() map[string]string {
	const size = 4<<20 - 64

	fill := func(unit string) string { return strings.Repeat(unit, size/len(unit)) }

	var config strings.Builder

	config.WriteString("customization:\n  embeddedMachineConfiguration: |\n")

	for i := 0; config.Len() < size; i++ {
		config.WriteString("    key: [value, {nested: true}]\n")
	}

	return map[string]string{
		"single quotes":  fill("'"),
		"escaped quotes": "\"" + fill("\\\""),
		"spaced quotes":  fill("                \""),
		"block headers":  fill("a: |\n"),
		"kernel args":    "customization:\n  extraKernelArgs:\n" + fill("    - a=bbbbbbbb\n"),
		"flow ints":      "[" + fill("1,") + "1]",
		"machine config": config.String(),
		"json config":    `{"customization":{"embeddedMachineConfiguration":"` + fill(`key: [value]\n`) + `"}}`,
		"nested headers": fill(" a: |\n"),
		"blank after |":  "a: |\n" + fill("\n") + "b: 1\n",
	}
}

// BenchmarkCheckSchematicText measures the check on texts of the size
// limit, before any decoding.
func BenchmarkCheckSchematicText(b *testing.B) {
	lim := DefaultSchematicLimits()

	for name, text := range schematicTextsForSpeed() {
		b.Run(strings.ReplaceAll(name, " ", "_"), func(b *testing.B) {
			b.SetBytes(int64(len(text)))

			for b.Loop() {
				checkSchematicText([]byte(text), lim) //nolint:errcheck // measured, not checked
			}
		})
	}
}
