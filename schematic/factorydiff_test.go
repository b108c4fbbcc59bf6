package schematic_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v4"

	"github.com/kiln-dev/kiln/schematic"
)

// The differential test: every body gets the same ID from kiln as from the
// public factory's own code (hack/factory-oracle), or is refused by both.
// Where kiln passes the parser's words on, they are the factory's words.
//
// Deliberate differences, and only these, are allowed:
//   - an empty document: kiln says "schematic is empty", the factory "EOF";
//   - an owner: both refuse, kiln in its own words (it has no accounts);
//   - customization.imageCache, kiln's own section, which the factory
//     refuses as an unknown field: kiln must then agree with the factory on
//     the same schematic without that section;
//   - a schematic whose canonical form the factory's own code cannot read
//     back as itself: the factory accepts it (and then cannot serve it),
//     kiln refuses it;
//   - a body with more than its first document (another document, or text
//     after the first that does not parse): the factory reads the first and
//     drops the rest, kiln refuses it.

const (
	factoryEmpty   = "EOF"
	factoryOwner   = "owner field is only supported in Enterprise edition"
	kilnOwner      = "owner is not supported: this factory has no authentication, remove the owner field"
	kilnUnstorable = "schematic cannot be stored: its canonical YAML does not read back "
	kilnDocuments  = "the body holds more than one YAML document"
	constructErr   = "yaml: construct errors: "
)

// moreThanOneDocument tells whether body has anything after its first YAML
// document but empty documents: another document, or text that does not
// parse.
func moreThanOneDocument(body []byte) bool {
	dec := yaml.NewDecoder(bytes.NewReader(body))

	var first yaml.Node
	if err := dec.Decode(&first); err != nil {
		return false
	}

	for {
		var doc yaml.Node

		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return false
		}

		if err != nil {
			return true
		}

		if len(doc.Content) != 1 || doc.Content[0].Kind != yaml.ScalarNode || doc.Content[0].Tag != "!!null" {
			return true
		}
	}
}

func isImageCacheItem(item string) bool {
	return strings.HasPrefix(item, "line ") && strings.HasSuffix(item, ": field imageCache not found in type schematic.Customization")
}

// constructItems splits "yaml: construct errors: a; b" into its items.
func constructItems(msg string) ([]string, bool) {
	rest, ok := strings.CutPrefix(msg, constructErr)
	if !ok {
		return nil, false
	}

	return strings.Split(rest, "; "), true
}

// agree fails t unless kiln and the factory do the same with body.
func agree(t *testing.T, o *factoryOracle, body []byte) {
	t.Helper()
	agreeAt(t, o, body, 0)
}

// agreeAt is agree; depth counts the imageCache sections taken out.
func agreeAt(t *testing.T, o *factoryOracle, body []byte, depth int) {
	t.Helper()

	want, err := o.ask(body)
	if err != nil {
		t.Fatal(err)
	}

	if want.Panic != "" {
		t.Fatalf("the factory's code panics on %q: %s", body, want.Panic)
	}

	s, kerr := schematic.Parse(body)

	var canonical []byte
	if kerr == nil {
		canonical, kerr = s.Marshal()
		if kerr != nil {
			t.Fatalf("kiln parsed %q but cannot write it: %v", body, kerr)
		}
	} else if !errors.Is(kerr, schematic.ErrInvalid) {
		t.Fatalf("kiln's refusal of %q does not match ErrInvalid: %v", body, kerr)
	}

	if !want.Refused {
		if kerr != nil && strings.HasPrefix(kerr.Error(), kilnUnstorable) {
			back, err := o.ask(want.Canonical)
			if err != nil {
				t.Fatal(err)
			}

			if !back.Refused && string(back.Canonical) == string(want.Canonical) {
				t.Fatalf("body %q:\nkiln refuses it as unstorable (%v)\nbut the factory reads its canonical form back:\n%s", body, kerr, want.Canonical)
			}

			return
		}

		if kerr != nil && strings.HasPrefix(kerr.Error(), kilnDocuments) {
			if !moreThanOneDocument(body) {
				t.Fatalf("body %q:\nkiln refuses it as more than one document (%v)\nbut it is one", body, kerr)
			}

			return
		}

		if kerr != nil {
			t.Fatalf("body %q:\nfactory accepts it, ID %s:\n%s\nkiln refuses it: %v", body, want.ID, want.Canonical, kerr)
		}

		if string(canonical) != string(want.Canonical) || schematic.IDOf(canonical) != want.ID {
			t.Fatalf("body %q:\nfactory: %s\n%q\nkiln:    %s\n%q", body, want.ID, want.Canonical, schematic.IDOf(canonical), canonical)
		}

		return
	}

	// The factory refuses.
	wantErr := string(want.Err)
	items, construct := constructItems(wantErr)
	noCache := slices.DeleteFunc(slices.Clone(items), isImageCacheItem)

	if construct && len(noCache) < len(items) {
		agreeWithoutImageCache(t, o, body, s, kerr, noCache, depth)

		return
	}

	if kerr == nil {
		t.Fatalf("body %q:\nfactory refuses it: %q\nkiln accepts it:\n%s", body, wantErr, canonical)
	}

	wantMsg := wantErr

	switch wantErr {
	case factoryEmpty:
		wantMsg = "schematic is empty"
	case factoryOwner:
		wantMsg = kilnOwner
	}

	if kerr.Error() != wantMsg {
		t.Fatalf("body %q:\nfactory refuses it with %q\nkiln refuses it with   %q", body, wantErr, kerr.Error())
	}
}

// agreeWithoutImageCache: the factory refused body at least for its
// imageCache section, which kiln knows. If kiln accepts, the factory must
// accept the same schematic without the section. If kiln refuses, what it
// says beyond the factory's other reasons must come from the section (its
// content, found wrong): without the section both must agree exactly.
func agreeWithoutImageCache(t *testing.T, o *factoryOracle, body []byte, s *schematic.Schematic, kerr error, others []string, depth int) {
	t.Helper()

	if kerr != nil {
		if stripped, ok := withoutImageCache(body); ok && depth == 0 {
			agreeAt(t, o, stripped, depth+1)

			return
		}

		// The body does not survive a round trip through a YAML node (or
		// an alias brings the key back): both refuse, and kiln says at
		// least what the factory says.
		got, _ := constructItems(kerr.Error())
		for _, item := range others {
			if !slices.Contains(got, item) {
				t.Fatalf("body %q:\nfactory refuses it with %q\nkiln refuses it without that: %q", body, item, kerr)
			}
		}

		return
	}

	if len(others) > 0 {
		t.Fatalf("body %q:\nfactory refuses it with %q\nkiln accepts it", body, others)
	}

	s.Customization.ImageCache = schematic.ImageCache{}

	canonical, err := s.Marshal()
	if err != nil {
		t.Fatal(err)
	}

	want, err := o.ask(canonical)
	if err != nil {
		t.Fatal(err)
	}

	if want.Refused || string(want.Canonical) != string(canonical) {
		t.Fatalf("body %q without imageCache:\nkiln:    %q\nfactory: %q %q", body, canonical, want.Canonical, want.Err)
	}
}

// withoutImageCache is body's first document with every mapping's
// imageCache key taken out, written back by the YAML library.
func withoutImageCache(body []byte) ([]byte, bool) {
	var doc yaml.Node
	if err := yaml.Unmarshal(body, &doc); err != nil {
		return nil, false
	}

	removeKey(&doc, "imageCache", map[*yaml.Node]bool{})

	out, err := yaml.Marshal(&doc)
	if err != nil {
		return nil, false
	}

	return out, true
}

func removeKey(n *yaml.Node, key string, seen map[*yaml.Node]bool) {
	if n == nil || seen[n] {
		return
	}

	seen[n] = true

	if n.Kind == yaml.MappingNode {
		kept := n.Content[:0]
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Kind == yaml.ScalarNode && n.Content[i].Value == key {
				continue
			}

			kept = append(kept, n.Content[i], n.Content[i+1])
		}

		n.Content = kept
	}

	for _, c := range n.Content {
		removeKey(c, key, seen)
	}

	removeKey(n.Alias, key, seen)
}

// FuzzFactoryDiff compares kiln with the factory on two inputs per run: body
// as it is, and a schematic built from the choices (so that the fuzzer
// reaches deep positions with the special scalars), written as block YAML,
// flow YAML and JSON.
//
//	make diff-factory FUZZTIME=10m
func FuzzFactoryDiff(f *testing.F) {
	for _, v := range vectors {
		f.Add([]byte(v.in), []byte(v.name))
		f.Add([]byte(v.canonical), []byte(v.id))
	}

	for _, v := range factoryVectors {
		f.Add([]byte(v.in), []byte(v.id))
	}

	for i, c := range scalarCases {
		for _, p := range positions {
			f.Add([]byte(p.input(c.s)), []byte{byte(i), byte(i * 7), byte(i * 13)})
		}
	}

	for _, body := range []string{
		"", "# only a comment\n", "owner: alice\n", "---\n...\n", "customization: {bootloader: auto}\n",
		"customization: {bootloader: ''}\n", "customization: {bootloader: 1}\n", "customization: {bootloader: NONE}\n",
		"customization: {imageCache: {kubernetes: true}, foo: 1}\n", "customization: {imageCache: 1}\n",
		"customization: {secureboot: {enrollKeys: off, x: 1}}\n", "customization: {diskImage: {sectorSize: 0x1000}}\n",
		"overlay: {options: {1: a, true: b, null: c, 1.5: d, [x]: e}}\n", "overlay: {options: {<<: {a: b}, c: d}}\n",
		"overlay: {options: {k: &a [1, *a]}}\n", "overlay: {options: {t: 2001-12-14, b: !!binary aGk=}}\n",
		"customization:\n  meta:\n    - {key: 0x0a, value: yes}\n    - {key: 0o17, value: no}\n",
		"customization: {extraKernelArgs: [\"\\ud83d\\ude42\"]}\n",
		"a: 1\n---\nb: 2\n", "customization: {}\ncustomization: {}\n",
	} {
		f.Add([]byte(body), []byte(body))
	}

	f.Fuzz(func(t *testing.T, body, choices []byte) {
		o := factory(t)

		agree(t, o, body)

		doc := newGen(choices).schematic()
		agree(t, o, []byte(doc.yaml()))
		agree(t, o, []byte(doc.json()))
	})
}

// TestFactoryAgreesOnTheVectors runs the hard-coded vectors past the oracle
// too, so a wrong vector cannot pin a wrong form.
func TestFactoryAgreesOnTheVectors(t *testing.T) {
	o := factory(t)

	for _, v := range vectors {
		agree(t, o, []byte(v.in))
	}

	for _, v := range factoryVectors {
		agree(t, o, []byte(v.in))
	}

	for _, c := range scalarCases {
		for _, p := range positions {
			agree(t, o, []byte(p.input(c.s)))
			agree(t, o, []byte(p.canonical(c.s, c.yaml)))
		}
	}
}

// gen builds schematics from a fuzzer's bytes: each byte is a choice, and
// running out of bytes chooses zero, so short inputs give small documents.
type gen struct {
	b []byte
	i int
	// anchors are the nodes given an anchor so far, for aliases to name.
	anchors []*ynode
}

func newGen(b []byte) *gen { return &gen{b: b} }

func (g *gen) byte() byte {
	if g.i >= len(g.b) {
		return 0
	}

	c := g.b[g.i]
	g.i++

	return c
}

func (g *gen) n(k int) int { return int(g.byte()) % k }

// chance is true one time in k.
func (g *gen) chance(k int) bool { return g.n(k) == 0 }

func (g *gen) schematic() *ynode {
	m := g.mapping()

	if g.chance(16) {
		m.add("owner", g.str())
	}

	if g.chance(3) {
		m.add("overlay", g.overlay())
	}

	if !g.chance(8) {
		m.add("customization", g.customization())
	}

	if g.chance(32) {
		m.add(g.word(), g.value(1))
	}

	return m
}

func (g *gen) overlay() *ynode {
	m := g.mapping()

	if !g.chance(4) {
		m.add("image", g.str())
	}

	if !g.chance(4) {
		m.add("name", g.str())
	}

	if g.chance(2) {
		m.add("options", g.options(0))
	}

	return m
}

func (g *gen) options(depth int) *ynode {
	m := g.mapping()

	for range g.n(4) {
		m.addNode(g.key(), g.value(depth+1))
	}

	if len(g.anchors) > 0 && g.chance(8) {
		m.addNode(plain("<<"), g.alias())
	}

	return m
}

// key is an options key: usually a string, sometimes another scalar.
func (g *gen) key() *ynode {
	if g.chance(6) {
		return g.scalar()
	}

	return g.str()
}

func (g *gen) value(depth int) *ynode {
	if depth >= 5 {
		return g.scalar()
	}

	if len(g.anchors) > 0 && g.chance(10) {
		return g.alias()
	}

	switch g.n(6) {
	case 0:
		return g.options(depth)
	case 1:
		s := g.seq()
		for range g.n(4) {
			s.items = append(s.items, g.value(depth+1))
		}

		return s
	case 2:
		return g.scalar()
	default:
		return g.str()
	}
}

func (g *gen) customization() *ynode {
	m := g.mapping()

	type field struct {
		name string
		make func() *ynode
	}

	fields := []field{
		{"embeddedMachineConfiguration", g.str},
		{"extraKernelArgs", g.strings},
		{"meta", g.meta},
		{"systemExtensions", func() *ynode {
			e := g.mapping()
			if !g.chance(4) {
				e.add("officialExtensions", g.strings())
			}

			return e
		}},
		{"bootloader", g.bootloader},
		{"secureboot", func() *ynode {
			s := g.mapping()
			if g.chance(2) {
				s.add("enrollKeys", g.enrollKeys())
			}

			if g.chance(2) {
				s.add("includeWellKnownCertificates", g.boolish())
			}

			return s
		}},
		{"diskImage", func() *ynode {
			d := g.mapping()
			if !g.chance(4) {
				d.add("sectorSize", g.intish())
			}

			return d
		}},
		{"imageCache", func() *ynode {
			c := g.mapping()
			if g.chance(2) {
				c.add("kubernetes", g.boolish())
			}

			if g.chance(2) {
				c.add("images", g.strings())
			}

			if g.chance(2) {
				c.add("platforms", g.strings())
			}

			return c
		}},
	}

	// Field order in the input does not matter to the canonical form; let
	// the fuzzer shuffle it.
	for i := len(fields) - 1; i > 0; i-- {
		j := g.n(i + 1)
		fields[i], fields[j] = fields[j], fields[i]
	}

	for _, f := range fields {
		odds := 3
		if f.name == "imageCache" {
			odds = 8
		}

		if g.chance(odds) {
			m.add(f.name, f.make())
		}
	}

	if g.chance(24) {
		m.add(g.word(), g.value(3))
	}

	return m
}

// strings is a list of strings, now and then a wrong type.
func (g *gen) strings() *ynode {
	if g.chance(24) {
		return g.value(3)
	}

	s := g.seq()
	for range g.n(5) {
		if g.chance(16) {
			s.items = append(s.items, g.scalar())
		} else {
			s.items = append(s.items, g.str())
		}
	}

	return s
}

func (g *gen) meta() *ynode {
	s := g.seq()

	for range g.n(4) {
		m := g.mapping()
		if !g.chance(8) {
			m.addNode(plain("key"), g.intish())
		}

		if !g.chance(8) {
			m.add("value", g.str())
		}

		if g.chance(32) {
			m.add(g.word(), g.str())
		}

		s.items = append(s.items, m)
	}

	return s
}

var bootloaderWords = []string{"none", "dual-boot", "sd-boot", "grub", "auto", "NONE", "None", "GRUB", "Sd-Boot", "DUAL-BOOT", "", "lilo", "sdboot", "0", "1", "3", "null", "~", "grub "}

func (g *gen) bootloader() *ynode {
	if g.chance(8) {
		return g.value(4)
	}

	return g.styled(bootloaderWords[g.n(len(bootloaderWords))])
}

var enrollKeysWords = []string{"off", "manual", "if-safe", "force", "OFF", "Force", "", "yes", "no", "auto"}

func (g *gen) enrollKeys() *ynode {
	if g.chance(4) {
		return g.str()
	}

	return g.styled(enrollKeysWords[g.n(len(enrollKeysWords))])
}

var boolWords = []string{"true", "false", "True", "FALSE", "yes", "no", "on", "off", "y", "n", "1", "0", "null", "~", "", "maybe"}

func (g *gen) boolish() *ynode { return g.typed(boolWords[g.n(len(boolWords))]) }

var intWords = []string{"0", "1", "10", "79", "255", "256", "-1", "512", "4096", "0x1000", "0o17", "017", "0b101", "1_000", "1e3", "4096.0", "+12", "null", "~", "", "big", "18446744073709551615", "18446744073709551616"}

func (g *gen) intish() *ynode {
	if g.chance(8) {
		return g.typed(strconv.Itoa(int(g.byte()) << g.n(12)))
	}

	return g.typed(intWords[g.n(len(intWords))])
}

// typed is a scalar for a non-string field: mostly plain, so that it
// resolves to a number or a bool, sometimes quoted.
func (g *gen) typed(s string) *ynode {
	if g.chance(4) {
		return g.styled(s)
	}

	return plain(s)
}

// scalar is any scalar: a special word written as is, so it resolves to
// whatever type YAML gives it.
func (g *gen) scalar() *ynode {
	if g.chance(4) {
		return g.styled(g.word())
	}

	return plain(scalarCases[g.n(len(scalarCases))].s)
}

// str is a string scalar, mostly a special word, always quoted in a way
// YAML reads back as that string... unless the fuzzer picks the plain style.
func (g *gen) str() *ynode { return g.styled(g.word()) }

// multiLine are strings the canonical form writes as literal blocks.
var multiLine = []string{"a\nb", "version: v1alpha1\nmachine: {}\n", "x\n", "\n", " lead\ntrail \n\n", "a\r\nb", "tab\t\nno\n"}

func (g *gen) word() string {
	switch g.n(10) {
	case 0, 1:
		// Bytes from the fuzzer, half the time made valid UTF-8 (else the
		// whole document is refused before any field is looked at).
		n := g.n(24)
		b := make([]byte, 0, n)
		for range n {
			b = append(b, g.byte())
		}

		if g.chance(2) {
			return strings.ToValidUTF8(string(b), "")
		}

		return string(b)
	case 2:
		return scalarCases[g.n(len(scalarCases))].s + scalarCases[g.n(len(scalarCases))].s
	case 3:
		return "siderolabs/" + scalarCases[g.n(len(scalarCases))].s
	case 4:
		return multiLine[g.n(len(multiLine))]
	default:
		return scalarCases[g.n(len(scalarCases))].s
	}
}

var tags = []string{"!!str", "!!int", "!!bool", "!!null", "!!float", "!!binary", "!!timestamp", "!!seq", "!!map", "!!merge", "!foo", "!", "!<tag:yaml.org,2002:str>"}

func (g *gen) styled(s string) *ynode {
	st := styleDouble

	switch g.n(8) {
	case 0, 1:
		st = stylePlain
	case 2, 3:
		st = styleSingle
	}

	return g.decorate(&ynode{kind: yScalar, text: s, style: st})
}

func (g *gen) mapping() *ynode { return g.decorate(&ynode{kind: yMap, flow: g.chance(4)}) }
func (g *gen) seq() *ynode     { return g.decorate(&ynode{kind: ySeq, flow: g.chance(4)}) }

// decorate now and then gives n a tag or an anchor.
func (g *gen) decorate(n *ynode) *ynode {
	if g.chance(24) {
		n.tag = tags[g.n(len(tags))]
	}

	if g.chance(12) {
		n.anchor = "a" + strconv.Itoa(len(g.anchors))
		g.anchors = append(g.anchors, n)
	}

	return n
}

// alias names an anchored node, maybe one that contains the alias.
func (g *gen) alias() *ynode {
	return &ynode{kind: yAlias, target: g.anchors[g.n(len(g.anchors))]}
}

func plain(s string) *ynode { return &ynode{kind: yScalar, text: s, style: stylePlain} }

// ynode is a YAML tree written by hand, so that every scalar can take the
// style the fuzzer chose (the YAML library would quote it "properly").
type ynode struct {
	kind   int
	text   string
	style  int
	flow   bool
	keys   []*ynode
	items  []*ynode
	tag    string
	anchor string
	target *ynode // of an alias
}

const (
	yScalar = iota
	ySeq
	yMap
	yAlias
)

// props is the node's anchor and tag, as written before it.
func (n *ynode) props() string {
	var p []string
	if n.anchor != "" {
		p = append(p, "&"+n.anchor)
	}

	if n.tag != "" {
		p = append(p, n.tag)
	}

	return strings.Join(p, " ")
}

const (
	styleDouble = iota
	styleSingle
	stylePlain
)

func (n *ynode) add(key string, v *ynode) {
	n.addNode(&ynode{kind: yScalar, text: key, style: stylePlain}, v)
}

func (n *ynode) addNode(key, v *ynode) {
	n.keys = append(n.keys, key)
	n.items = append(n.items, v)
}

func (n *ynode) scalarText() string {
	switch n.style {
	case stylePlain:
		return n.text
	case styleSingle:
		return "'" + strings.ReplaceAll(n.text, "'", "''") + "'"
	default:
		b, _ := json.Marshal(n.text)

		return string(b)
	}
}

// yaml writes the document in block style, but for nodes marked flow.
func (n *ynode) yaml() string {
	var b strings.Builder

	switch {
	case n.inline():
		b.WriteString(n.flowText())
		b.WriteString("\n")
	default:
		if p := n.props(); p != "" {
			b.WriteString(p + "\n")
		}

		n.block(&b, 0)
	}

	return b.String()
}

func (n *ynode) flowText() string {
	if n.kind == yAlias {
		return "*" + n.target.anchor
	}

	text := n.flowBody()
	if p := n.props(); p != "" {
		return p + " " + text
	}

	return text
}

func (n *ynode) flowBody() string {
	switch n.kind {
	case ySeq:
		parts := make([]string, len(n.items))
		for i, it := range n.items {
			parts[i] = it.flowText()
		}

		return "[" + strings.Join(parts, ", ") + "]"
	case yMap:
		parts := make([]string, len(n.items))
		for i, it := range n.items {
			parts[i] = n.keys[i].flowText() + ": " + it.flowText()
		}

		return "{" + strings.Join(parts, ", ") + "}"
	default:
		return n.scalarText()
	}
}

// inline reports whether n is written on its key's or dash's line.
func (n *ynode) inline() bool {
	return n.kind == yScalar || n.kind == yAlias || n.flow || len(n.items) == 0
}

func (n *ynode) block(b *strings.Builder, indent int) {
	pad := strings.Repeat(" ", indent)

	switch n.kind {
	case yMap:
		for i, v := range n.items {
			b.WriteString(pad + n.keys[i].flowText() + ":")
			v.after(b, indent)
		}
	case ySeq:
		for _, v := range n.items {
			b.WriteString(pad + "-")
			v.after(b, indent)
		}
	}
}

// after writes v following "key:" or "-" at indent.
func (n *ynode) after(b *strings.Builder, indent int) {
	if n.inline() {
		b.WriteString(" " + n.flowText() + "\n")

		return
	}

	if p := n.props(); p != "" {
		b.WriteString(" " + p)
	}

	b.WriteString("\n")
	n.block(b, indent+2)
}

// json writes the document as JSON: plain scalars that are JSON literals
// stay literals, every other scalar becomes a string.
func (n *ynode) json() string {
	return n.jsonIn(&jsonState{open: map[*ynode]bool{}, expansions: 64})
}

type jsonState struct {
	open       map[*ynode]bool
	expansions int
}

// jsonIn expands aliases (JSON has none). An alias that names a node being
// written becomes null rather than recursing for ever, and so does any
// after the first 64, so that nested aliases do not grow the body
// exponentially.
func (n *ynode) jsonIn(st *jsonState) string {
	if st.open[n] {
		return "null"
	}

	st.open[n] = true
	defer delete(st.open, n)

	switch n.kind {
	case yAlias:
		if st.expansions == 0 {
			return "null"
		}

		st.expansions--

		return n.target.jsonIn(st)
	case ySeq:
		parts := make([]string, len(n.items))
		for i, it := range n.items {
			parts[i] = it.jsonIn(st)
		}

		return "[" + strings.Join(parts, ",") + "]"
	case yMap:
		parts := make([]string, len(n.items))
		for i, it := range n.items {
			k, _ := json.Marshal(n.keys[i].text)
			parts[i] = string(k) + ":" + it.jsonIn(st)
		}

		return "{" + strings.Join(parts, ",") + "}"
	default:
		if n.style == stylePlain && json.Valid([]byte(n.text)) && !strings.ContainsAny(n.text, "[{\"") {
			return n.text
		}

		b, _ := json.Marshal(n.text)

		return string(b)
	}
}
