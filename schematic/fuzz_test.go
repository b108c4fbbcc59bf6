package schematic_test

import (
	"errors"
	"testing"

	"github.com/kiln-dev/kiln/schematic"
)

// FuzzParse: any input either parses or is refused with ErrInvalid, never a
// panic; whatever parses has a canonical form that is a fixed point, so the
// ID of a stored schematic never drifts when it is read back.
func FuzzParse(f *testing.F) {
	for _, v := range vectors {
		f.Add([]byte(v.in))
		f.Add([]byte(v.canonical))
	}

	f.Add([]byte("overlay: {image: a, name: b, options: {k: [1, {x: y}], 3: true}}\n"))
	f.Add([]byte("customization: {bootloader: grub, meta: [{key: 255, value: \"\"}]}\n"))
	f.Add([]byte("customization:\n  embeddedMachineConfiguration: |\n    a: b\n"))
	f.Add([]byte("&a [*a]"))

	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := schematic.Parse(data)
		if err != nil {
			if !errors.Is(err, schematic.ErrInvalid) {
				t.Fatalf("Parse error %v does not match ErrInvalid", err)
			}

			return
		}

		first, err := s.Marshal()
		if err != nil {
			// Valid input that cannot be written back would break GET.
			t.Fatalf("Marshal of a parsed schematic: %v", err)
		}

		again, err := schematic.Parse(first)
		if err != nil {
			t.Fatalf("canonical form %q does not parse: %v", first, err)
		}

		second, err := again.Marshal()
		if err != nil {
			t.Fatal(err)
		}

		if string(first) != string(second) {
			t.Fatalf("canonical form not stable:\n%q\n%q", first, second)
		}
	})
}
