package schematic_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/schematic"
)

// Vectors computed by the public factory's own code (v1.5, the release in
// service): its YAML library single-quotes the YAML 1.1 booleans.
var factoryVectors = []struct{ in, canonical, id string }{
	{
		in:        `{"customization": {"extraKernelArgs": ["pti=on", "no"]}}`,
		canonical: "customization:\n    extraKernelArgs:\n        - pti=on\n        - 'no'\n",
		id:        "b6c41970686e770b1a47ee20af014b12ffac29c837f364639ed4a77364ac571d",
	},
	{
		in:        `{"customization": {"meta": [{"key": 79, "value": "null"}, {"key": 72, "value": "yes"}]}}`,
		canonical: "customization:\n    meta:\n        - key: 79\n          value: \"null\"\n        - key: 72\n          value: 'yes'\n",
		id:        "741dac021685d641e0cbc7ac7f7815e72e1b7d14362cb2fa906002824e0da0b8",
	},
}

func TestFactoryVectors(t *testing.T) {
	for _, v := range factoryVectors {
		s, err := schematic.Parse([]byte(v.in))
		if err != nil {
			t.Fatalf("Parse(%s): %v", v.in, err)
		}

		got, _ := s.Marshal()
		if string(got) != v.canonical {
			t.Errorf("Marshal(Parse(%s)) = %q, want %q", v.in, got, v.canonical)
		}

		if id, _ := s.ID(); id != v.id {
			t.Errorf("ID(Parse(%s)) = %s, want %s", v.in, id, v.id)
		}
	}
}

// scalarCases: a string and how the factory's canonical form writes it,
// as computed by the factory's code (hack/factory-oracle); the oracle test
// below checks the table against it again.
var scalarCases = []struct{ s, yaml string }{
	// YAML 1.1 booleans: the factory single-quotes them.
	{`y`, `'y'`},
	{`Y`, `'Y'`},
	{`yes`, `'yes'`},
	{`Yes`, `'Yes'`},
	{`YES`, `'YES'`},
	{`n`, `'n'`},
	{`N`, `'N'`},
	{`no`, `'no'`},
	{`No`, `'No'`},
	{`NO`, `'NO'`},
	{`on`, `'on'`},
	{`On`, `'On'`},
	{`ON`, `'ON'`},
	{`off`, `'off'`},
	{`Off`, `'Off'`},
	{`OFF`, `'OFF'`},
	// YAML 1.2 booleans: double-quoted.
	{`true`, `"true"`},
	{`True`, `"True"`},
	{`TRUE`, `"TRUE"`},
	{`false`, `"false"`},
	{`False`, `"False"`},
	{`FALSE`, `"FALSE"`},
	// other casings resolve to nothing: plain.
	{`yEs`, `yEs`},
	{`nO`, `nO`},
	{`oN`, `oN`},
	{`oFF`, `oFF`},
	{`tRUE`, `tRUE`},
	{`NoNe`, `NoNe`},
	// null.
	{`null`, `"null"`},
	{`Null`, `"Null"`},
	{`NULL`, `"NULL"`},
	{`~`, `"~"`},
	{``, `""`},
	// numbers in every base.
	{`0`, `"0"`},
	{`-0`, `"-0"`},
	{`+1`, `"+1"`},
	{`12`, `"12"`},
	{`-12`, `"-12"`},
	{`0o17`, `"0o17"`},
	{`0O17`, `"0O17"`},
	{`017`, `"017"`},
	{`09`, `"09"`},
	{`0x1F`, `"0x1F"`},
	{`0X1F`, `"0X1F"`},
	{`0x_1F`, `"0x_1F"`},
	{`0b101`, `"0b101"`},
	{`1_000`, `"1_000"`},
	{`1e3`, `"1e3"`},
	{`1E3`, `"1E3"`},
	{`1.5`, `"1.5"`},
	{`.5`, `".5"`},
	{`-.5`, `"-.5"`},
	{`+.5`, `"+.5"`},
	{`1.`, `"1."`},
	{`1.5e-3`, `"1.5e-3"`},
	{`.inf`, `".inf"`},
	{`.Inf`, `".Inf"`},
	{`.INF`, `".INF"`},
	{`-.inf`, `"-.inf"`},
	{`+.inf`, `"+.inf"`},
	{`.nan`, `".nan"`},
	{`.NaN`, `".NaN"`},
	{`.NAN`, `".NAN"`},
	{`1:20`, `'1:20'`},
	{`190:20:30.15`, `'190:20:30.15'`},
	// timestamps.
	{`2001-12-14`, `"2001-12-14"`},
	{`2001-12-14t21:59:43.10-05:00`, `"2001-12-14t21:59:43.10-05:00"`},
	{`2001-12-14 21:59:43.10 -5`, `2001-12-14 21:59:43.10 -5`},
	{`2002-12-14T21:59:43Z`, `"2002-12-14T21:59:43Z"`},
	// merge key and value key.
	{`<<`, `'<<'`},
	{`=`, `=`},
	// leading indicators.
	{`-x`, `-x`},
	{`- x`, `'- x'`},
	{`-`, `'-'`},
	{`--`, `--`},
	{`---`, `'---'`},
	{`...`, `'...'`},
	{`:x`, `:x`},
	{`: x`, `': x'`},
	{`:`, `':'`},
	{`@x`, `'@x'`},
	{"`x", "'`x'"},
	{`?x`, `?x`},
	{`? x`, `'? x'`},
	{`?`, `'?'`},
	{`!x`, `'!x'`},
	{`&x`, `'&x'`},
	{`*x`, `'*x'`},
	{`%x`, `'%x'`},
	{`|x`, `'|x'`},
	{`>x`, `'>x'`},
	{`#x`, `'#x'`},
	{`,x`, `',x'`},
	{`[x`, `'[x'`},
	{`]x`, `']x'`},
	{`{x`, `'{x'`},
	{`}x`, `'}x'`},
	{`"x`, `'"x'`},
	{`'x`, `'''x'`},
	// inside and around.
	{`a: b`, `'a: b'`},
	{`a:b`, `a:b`},
	{`a #b`, `'a #b'`},
	{`a#b`, `a#b`},
	{"a\tb", `"a\tb"`},
	{`a `, `'a '`},
	{`  a`, `'  a'`},
	{"\t", `"\t"`},
	// unicode.
	{`é`, `é`},
	{`日本`, `日本`},
	{`🙂`, `"\U0001F642"`},
	{"\x7f", `"\x7F"`},
	{"\u00a0", "\u00a0"},
	{"\u2028", "'\u2028'"},
	{"\ufeff", `"\uFEFF"`},
	// kernel arguments and names.
	{`pti=on`, `pti=on`},
	{`console=ttyS0,115200n8`, `console=ttyS0,115200n8`},
	{`talos.platform=metal`, `talos.platform=metal`},
	{`siderolabs/iscsi-tools`, `siderolabs/iscsi-tools`},
	{strings.Repeat("x", 100), strings.Repeat("x", 100)}, // longer than a line: never folded

}

// position is a place in a schematic that holds a string.
type position struct {
	name string
	// doc is the schematic as JSON-ish data with the string at S.
	doc func(s string) any
	// canonical is the factory's canonical form with tok written at the
	// string's place (the string itself decides whether it is omitted).
	canonical func(s, tok string) string
	// kilnOnly: the public factory has no such field.
	kilnOnly bool
}

func (p position) input(s string) string {
	b, err := json.Marshal(p.doc(s))
	if err != nil {
		panic(err)
	}

	return string(b)
}

// breaksLine: YAML counts U+2028 as a line break, and a key that spans
// lines is written as a complex key ("? key" then ": value").
func breaksLine(s string) bool { return strings.Contains(s, "\u2028") }

type obj = map[string]any

const empty = "customization: {}\n"

func overlayDoc(options any) obj {
	return obj{"overlay": obj{"image": "siderolabs/sbc-raspberrypi", "name": "rpi_generic", "options": options}}
}

const overlayHead = "overlay:\n    image: siderolabs/sbc-raspberrypi\n    name: rpi_generic\n    options:\n"

var positions = []position{
	{
		name: "kernel argument",
		doc:  func(s string) any { return obj{"customization": obj{"extraKernelArgs": []string{"pti=on", s}}} },
		canonical: func(_, tok string) string {
			return "customization:\n    extraKernelArgs:\n        - pti=on\n        - " + tok + "\n"
		},
	},
	{
		name: "META value",
		doc:  func(s string) any { return obj{"customization": obj{"meta": []obj{{"key": 79, "value": s}}}} },
		canonical: func(_, tok string) string {
			return "customization:\n    meta:\n        - key: 79\n          value: " + tok + "\n"
		},
	},
	{
		name: "embedded machine configuration",
		doc:  func(s string) any { return obj{"customization": obj{"embeddedMachineConfiguration": s}} },
		canonical: func(s, tok string) string {
			if s == "" {
				return empty
			}

			return "customization:\n    embeddedMachineConfiguration: " + tok + "\n"
		},
	},
	{
		name: "extension name",
		doc: func(s string) any {
			return obj{"customization": obj{"systemExtensions": obj{"officialExtensions": []string{s}}}}
		},
		canonical: func(_, tok string) string {
			return "customization:\n    systemExtensions:\n        officialExtensions:\n            - " + tok + "\n"
		},
	},
	{
		name: "secureboot enrollKeys",
		doc:  func(s string) any { return obj{"customization": obj{"secureboot": obj{"enrollKeys": s}}} },
		canonical: func(s, tok string) string {
			if s == "" {
				return empty
			}

			return "customization:\n    secureboot:\n        enrollKeys: " + tok + "\n"
		},
	},
	{
		name: "disk image beside a string",
		doc: func(s string) any {
			return obj{"customization": obj{"diskImage": obj{"sectorSize": 4096}, "extraKernelArgs": []string{s}}}
		},
		canonical: func(_, tok string) string {
			return "customization:\n    extraKernelArgs:\n        - " + tok + "\n    diskImage:\n        sectorSize: 4096\n"
		},
	},
	{
		name: "overlay image",
		doc:  func(s string) any { return obj{"overlay": obj{"image": s, "name": "rpi_generic"}} },
		canonical: func(_, tok string) string {
			return "overlay:\n    image: " + tok + "\n    name: rpi_generic\n" + empty
		},
	},
	{
		name: "overlay name",
		doc:  func(s string) any { return obj{"overlay": obj{"image": "siderolabs/sbc-raspberrypi", "name": s}} },
		canonical: func(_, tok string) string {
			return "overlay:\n    image: siderolabs/sbc-raspberrypi\n    name: " + tok + "\n" + empty
		},
	},
	{
		name:      "overlay option value",
		doc:       func(s string) any { return overlayDoc(obj{"k": s}) },
		canonical: func(_, tok string) string { return overlayHead + "        k: " + tok + "\n" + empty },
	},
	{
		name: "overlay option key",
		doc:  func(s string) any { return overlayDoc(obj{s: "v"}) },
		canonical: func(s, tok string) string {
			if breaksLine(s) {
				return overlayHead + "        ? " + tok + "\n        : v\n" + empty
			}

			return overlayHead + "        " + tok + ": v\n" + empty
		},
	},
	{
		name: "overlay option deep in lists and maps",
		doc:  func(s string) any { return overlayDoc(obj{"a": []any{obj{"b": []any{s}}}}) },
		canonical: func(_, tok string) string {
			return overlayHead + "        a:\n            - b:\n                - " + tok + "\n" + empty
		},
	},
	{
		name: "overlay option key deep",
		doc:  func(s string) any { return overlayDoc(obj{"a": []any{obj{s: []any{1}}}}) },
		canonical: func(s, tok string) string {
			if breaksLine(s) {
				return overlayHead + "        a:\n            - ? " + tok + "\n              : - 1\n" + empty
			}

			return overlayHead + "        a:\n            - " + tok + ":\n                - 1\n" + empty
		},
	},
	{
		name: "image cache image",
		doc:  func(s string) any { return obj{"customization": obj{"imageCache": obj{"images": []string{s}}}} },
		canonical: func(_, tok string) string {
			return "customization:\n    imageCache:\n        images:\n            - " + tok + "\n"
		},
		kilnOnly: true,
	},
	{
		name: "image cache platform",
		doc: func(s string) any {
			return obj{"customization": obj{"imageCache": obj{"kubernetes": true, "platforms": []string{s}}}}
		},
		canonical: func(_, tok string) string {
			return "customization:\n    imageCache:\n        kubernetes: true\n        platforms:\n            - " + tok + "\n"
		},
		kilnOnly: true,
	},
}

// TestScalarTable: every special string in every position is written as
// the factory writes it, read back to the same schematic, and hashed.
func TestScalarTable(t *testing.T) {
	for _, p := range positions {
		t.Run(p.name, func(t *testing.T) {
			for _, c := range scalarCases {
				want := p.canonical(c.s, c.yaml)

				for _, in := range []string{p.input(c.s), want} {
					s, err := schematic.Parse([]byte(in))
					if err != nil {
						t.Errorf("%q: Parse(%s): %v", c.s, in, err)

						continue
					}

					got, err := s.Marshal()
					if err != nil || string(got) != want {
						t.Errorf("%q: Marshal(Parse(%s)) = %q, %v; want %q", c.s, in, got, err, want)
					}

					if id, _ := s.ID(); id != schematic.IDOf([]byte(want)) {
						t.Errorf("%q: ID %s is not the hash of the canonical form", c.s, id)
					}
				}
			}
		})
	}
}

// TestScalarTableIsTheFactorys checks the table itself against the
// factory's code, for the positions the factory has.
func TestScalarTableIsTheFactorys(t *testing.T) {
	o := factory(t)

	for _, p := range positions {
		if p.kilnOnly {
			continue
		}

		for _, c := range scalarCases {
			a, err := o.ask([]byte(p.input(c.s)))
			if err != nil {
				t.Fatal(err)
			}

			if want := p.canonical(c.s, c.yaml); string(a.Canonical) != want {
				t.Errorf("%s %q: the factory writes %q (%q), the table says %q", p.name, c.s, a.Canonical, a.Err, want)
			}
		}
	}
}
