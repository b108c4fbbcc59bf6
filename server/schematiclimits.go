package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"unicode/utf8"

	"go.yaml.in/yaml/v4"

	"github.com/kiln-dev/kiln/schematic"
)

// SchematicLimits bound the memory one schematic request can take. The YAML
// decoder takes about a kilobyte per node, so a few megabytes of tiny list
// items (a 3.4 MB schematic of 300,000 kernel arguments) took hundreds of
// megabytes; kiln counts nodes before decoding and refuses past MaxNodes.
//
// The public factory sets no limit at all; these are far above anything a
// schematic needs to describe an image that boots (a Linux command line
// holds at most 2048 bytes, so at most 1024 arguments; META keys are one
// byte, so 256 values; the official catalog has about a hundred
// extensions). What can be large is the embedded machine configuration,
// one string that the node count does not grow with.
type SchematicLimits struct {
	// MaxBytes bounds a schematic as sent, and twice it its canonical form
	// (--max-schematic-size).
	MaxBytes int64
	// MaxNodes bounds the YAML nodes of a schematic, aliases counted at
	// every use.
	MaxNodes int
	// Parallel bounds the schematics parsed at once.
	Parallel int
	// minCut is the shortest quoted string checkSchematicText cuts; 0 is
	// 256. Tests lower it so that a fuzzer reaches the cutting.
	minCut int
}

// Element limits of a schematic: see SchematicLimits for why these are
// safe.
const (
	maxKernelArgs       = 1024
	maxMetaValues       = 256
	maxExtensions       = 256
	maxCacheImages      = 1024
	maxCachePlatforms   = 16
	maxOverlayNodes     = 4096
	maxOverlayDepth     = 16
	defaultSchematicMax = 4 << 20
	defaultMaxNodes     = 1 << 16
	// bodyBudgetFactor: the bodies of schematic requests held in memory
	// at once are bounded by this many MaxBytes.
	bodyBudgetFactor = 16
)

// DefaultSchematicLimits are the limits of kiln serve: 4 MiB (gRPC's default
// message size, so every surface takes the same schematics), 65536 nodes,
// and at most 4 parsed at once (fewer on fewer CPUs: parsing is CPU-bound).
func DefaultSchematicLimits() SchematicLimits {
	return SchematicLimits{MaxBytes: defaultSchematicMax, MaxNodes: defaultMaxNodes, Parallel: min(4, max(2, runtime.GOMAXPROCS(0)))}
}

// orDefaults fills the zero fields with the defaults.
func (l SchematicLimits) orDefaults() SchematicLimits {
	d := DefaultSchematicLimits()

	if l.MaxBytes == 0 {
		l.MaxBytes = d.MaxBytes
	}

	if l.MaxNodes == 0 {
		l.MaxNodes = d.MaxNodes
	}

	if l.Parallel == 0 {
		l.Parallel = d.Parallel
	}

	return l
}

func (l SchematicLimits) validate() error {
	if l.MaxBytes < 0 || l.MaxNodes < 0 || l.Parallel < 0 {
		return fmt.Errorf("schematic limits cannot be negative: %+v", l)
	}

	if l.MaxBytes > 1<<30 {
		return fmt.Errorf("--max-schematic-size %d is above 1 GiB", l.MaxBytes)
	}

	return nil
}

// sizeText names a byte count as the flag takes it.
func sizeText(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	default:
		return fmt.Sprintf("%d bytes", n)
	}
}

// tooLargeError is a schematic over MaxBytes: HTTP 413, gRPC InvalidArgument.
type tooLargeError struct{ max int64 }

func (e *tooLargeError) Error() string {
	return "schematic is larger than " + sizeText(e.max) + " (the limit, --max-schematic-size)"
}

func (e *tooLargeError) Is(target error) bool { return target == schematic.ErrInvalid }

// limitError is a schematic over an element limit: HTTP 400.
type limitError struct{ msg string }

func (e *limitError) Error() string { return e.msg }

func (e *limitError) Is(target error) bool { return target == schematic.ErrInvalid }

func overLimit(format string, a ...any) error { return &limitError{fmt.Sprintf(format, a...)} }

// checkSchematicText refuses raw YAML or JSON whose decoding would take more
// than the limits allow, before the decoder sees it. It parses a reduced
// copy of the text: long quoted strings and block scalars (an embedded
// machine configuration) are cut to a placeholder, and the reduced text is
// parsed only if its structure characters (a bound on its nodes) are within
// MaxNodes. The real parser must then confirm that each cut was a scalar's
// content; otherwise nothing is cut and the whole text is counted.
func checkSchematicText(data []byte, lim SchematicLimits) error {
	if int64(len(data)) > lim.MaxBytes {
		return &tooLargeError{max: lim.MaxBytes}
	}

	tooMany := overLimit("schematic has more than %d YAML nodes (the limit; aliases count at each use)", lim.MaxNodes)

	minCut := lim.minCut
	if minCut == 0 {
		minCut = defaultMinCut
	}

	reduced, cuts := reduceScalars(data, minCut)

	if len(cuts) > 0 && structureBound(reduced) <= lim.MaxNodes {
		if nodes, err := countNodes(reduced, cuts, lim); err == nil || !errors.Is(err, errUnconfirmed) {
			return nodes.check(err, tooMany, lim)
		}
	}

	// Nothing to cut, or the cuts were not all confirmed: count the text
	// as it is.
	if structureBound(data) > lim.MaxNodes {
		return tooMany
	}

	nodes, err := countNodes(data, nil, lim)

	return nodes.check(err, tooMany, lim)
}

// structureBound is an upper bound on the YAML nodes of data (each node but
// the first starts after an indicator or a line break), counting what
// could be either: flow and block indicators and line breaks (NEL, LS and
// PS by a byte of theirs).
func structureBound(data []byte) int {
	n := 1

	for _, c := range data {
		switch c {
		case ',', '[', '{', ':', '-', '?', '\n', '\r', 0x85, 0xa8, 0xa9:
			n++
		}
	}

	return n
}

// cut is a scalar content reduceScalars replaced: where its scalar starts in
// the reduced text (1-based line and column in characters, as yaml.Node
// reports), its style, and how many bytes were dropped.
type cut struct {
	line, column int
	style        yaml.Style
	dropped      int
}

// defaultMinCut: shorter quoted strings are left as they are.
const defaultMinCut = 256

// reduceScalars copies data with the content of long quoted strings and of
// block scalars dropped: "..." becomes "x", '...' becomes 'x', and of a
// block scalar only the header and its first content line are kept.
// Which quote or '|' starts a scalar is guessed; countNodes has the parser
// confirm every guess.
func reduceScalars(data []byte, minCut int) ([]byte, []cut) {
	var (
		out  = make([]byte, 0, min(len(data), 1<<20))
		cuts []cut
		line = 1
		bol  = 0 // start of the current line in out
	)

	emit := func(b []byte) {
		for i := bytes.IndexByte(b, '\n'); i >= 0; i = bytes.IndexByte(b, '\n') {
			out = append(out, b[:i+1]...)
			line++
			bol = len(out)
			b = b[i+1:]
		}

		out = append(out, b...)
	}

	// An unterminated quote of a kind means no later one of that kind
	// closes either: looking again each time would take quadratic time.
	var unclosed [256]bool

	i := 0
	for i < len(data) {
		if j := bytes.IndexAny(data[i:], "\"'\n"); j != 0 {
			if j < 0 {
				j = len(data) - i
			}

			emit(data[i : i+j])
			i += j

			continue
		}

		switch c := data[i]; {
		case c == '\n':
			lineStart := bol
			emit(data[i : i+1])
			i++

			header, col := blockHeader(out[lineStart : len(out)-1])
			if !header {
				continue
			}

			skip := blockContent(data, i)
			if skip.drop == 0 {
				continue
			}

			// The header is the line just emitted.
			cuts = append(cuts, cut{line: line - 1, column: col, style: yaml.LiteralStyle | yaml.FoldedStyle, dropped: skip.drop})
			emit(data[i:skip.keepEnd])
			i = skip.keepEnd + skip.drop

		case unclosed[c] || !quoteMayStart(data, i):
			emit(data[i : i+1])
			i++

		default:
			end := quotedEnd(data, i)

			switch {
			case end < 0:
				unclosed[c] = true

				emit(data[i : i+1])
				i++
			case end-i-2 < minCut:
				emit(data[i:end])
				i = end
			default:
				style := yaml.DoubleQuotedStyle
				if c == '\'' {
					style = yaml.SingleQuotedStyle
				}

				cuts = append(cuts, cut{line: line, column: utf8.RuneCount(out[bol:]) + 1, style: style, dropped: end - i - 3})
				emit([]byte{c, 'x', c})
				i = end
			}
		}
	}

	return out, cuts
}

// quoteMayStart reports whether a quote at i may open a quoted scalar: it
// follows an indicator or starts its line.
func quoteMayStart(data []byte, i int) bool {
	for j := i - 1; j >= 0; j-- {
		switch data[j] {
		case ' ', '\t':
			continue
		case '\n', ':', '[', '{', ',', '-', '?':
			return true
		default:
			return false
		}
	}

	return true
}

// quotedEnd is the index after the closing quote of the quoted scalar
// opening at i, or -1.
func quotedEnd(data []byte, i int) int {
	q := data[i]

	for j := i + 1; j < len(data); j++ {
		switch {
		case q == '"' && data[j] == '\\':
			j++
		case data[j] == q && q == '\'' && j+1 < len(data) && data[j+1] == '\'':
			j++
		case data[j] == q:
			return j + 1
		}
	}

	return -1
}

// blockHeader reports whether line (without its line break) ends in a block
// scalar header — '|' or '>', an optional indentation and chomping
// indicator, an optional comment — and the column (in characters) of its
// indicator.
func blockHeader(line []byte) (bool, int) {
	s := line

	if h := bytes.Index(s, []byte(" #")); h >= 0 {
		s = s[:h]
	}

	s = bytes.TrimRight(s, " \t")

	// Up to two indicator characters after '|' or '>'.
	k := len(s) - 1
	for n := 0; n < 2 && k > 0 && (s[k] == '+' || s[k] == '-' || (s[k] >= '1' && s[k] <= '9')); n++ {
		k--
	}

	if k < 0 || (s[k] != '|' && s[k] != '>') {
		return false, 0
	}

	if k > 0 && s[k-1] != ' ' && s[k-1] != '\t' {
		return false, 0
	}

	return true, utf8.RuneCount(line[:k]) + 1
}

// blockSkip is the part of a block scalar reduceScalars drops: the lines
// from keepEnd, drop bytes long.
type blockSkip struct {
	keepEnd, drop int
}

// blockContent finds, for a block scalar whose header line ends before
// start, the lines to drop: the leading blank lines and the first content
// line (which sets the indentation) are kept; then every line that is
// blank (spaces only) or indented at least as much as the first content
// line, until the first other line. A line holding a carriage return or a
// Unicode line break ends the drop early: YAML would see two lines there.
func blockContent(data []byte, start int) blockSkip {
	i := start

	// Leading blank lines.
	for i < len(data) {
		end := lineEnd(data, i)
		if !spacesOnly(data[i:end]) {
			break
		}

		i = nextLine(data, end)
	}

	if i >= len(data) {
		return blockSkip{}
	}

	firstEnd := lineEnd(data, i)
	indent := leadingSpaces(data[i:firstEnd])

	if indent == 0 || unsafeLine(data[i:firstEnd]) {
		return blockSkip{}
	}

	keepEnd := nextLine(data, firstEnd)
	j := keepEnd

	for j < len(data) {
		end := lineEnd(data, j)
		l := data[j:end]

		if unsafeLine(l) || (!spacesOnly(l) && leadingSpaces(l) < indent) {
			break
		}

		j = nextLine(data, end)
	}

	return blockSkip{keepEnd: keepEnd, drop: j - keepEnd}
}

func lineEnd(data []byte, i int) int {
	if k := bytes.IndexByte(data[i:], '\n'); k >= 0 {
		return i + k
	}

	return len(data)
}

func nextLine(data []byte, end int) int {
	if end < len(data) {
		return end + 1
	}

	return end
}

func spacesOnly(l []byte) bool { return len(bytes.TrimLeft(l, " ")) == 0 }

func leadingSpaces(l []byte) int { return len(l) - len(bytes.TrimLeft(l, " ")) }

func unsafeLine(l []byte) bool {
	return bytes.IndexByte(l, '\r') >= 0 || bytes.Contains(l, []byte("\u0085")) ||
		bytes.Contains(l, []byte("\u2028")) || bytes.Contains(l, []byte("\u2029"))
}

// errUnconfirmed: a cut reduceScalars made was not a scalar's content.
var errUnconfirmed = errors.New("a reduced scalar was not confirmed by the parser")

// nodeCount is what countNodes found: nodes and scalar bytes, aliases
// expanded.
type nodeCount struct {
	nodes int
	bytes int64
}

// check turns a count into the error for the client: a parse error is left
// for schematic.Parse to report in its own words.
func (n nodeCount) check(err error, tooMany error, lim SchematicLimits) error {
	switch {
	case errors.Is(err, errTooMany):
		return tooMany
	case errors.Is(err, errTooDeep):
		return overLimit("schematic nests YAML more than %d levels deep (the limit)", maxYAMLDepth)
	case errors.Is(err, errTooBig):
		return overLimit("schematic expands to more than %s through YAML aliases (the limit, --max-schematic-size)", sizeText(lim.MaxBytes))
	case err != nil:
		return nil
	case n.nodes > lim.MaxNodes:
		return tooMany
	case n.bytes > lim.MaxBytes:
		return overLimit("schematic expands to more than %s through YAML aliases (the limit, --max-schematic-size)", sizeText(lim.MaxBytes))
	}

	return nil
}

var (
	errTooMany = errors.New("too many nodes")
	errTooDeep = errors.New("nested too deep")
	errTooBig  = errors.New("expands too much")
)

// countNodes parses every document of data into nodes and counts them with
// aliases expanded, confirming that each cut is a scalar of its style at
// its place with some content.
func countNodes(data []byte, cuts []cut, lim SchematicLimits) (nodeCount, error) {
	want := map[[2]int]*cut{}
	for i := range cuts {
		want[[2]int{cuts[i].line, cuts[i].column}] = &cuts[i]
	}

	seen := map[[2]int]bool{}
	dec := yaml.NewDecoder(bytes.NewReader(data))

	var (
		total nodeCount
		docs  []*yaml.Node
	)

	for {
		var doc yaml.Node

		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}

		if err != nil {
			if len(cuts) > 0 {
				// The reduced text may fail where the original would not
				// (a long quoted key): count the original.
				return total, errUnconfirmed
			}

			return total, err
		}

		docs = append(docs, &doc)
	}

	extra := map[*yaml.Node]int{}

	for _, doc := range docs {
		walkNodes(doc, func(n *yaml.Node) {
			c, ok := want[[2]int{n.Line, n.Column}]
			if !ok || n.Kind != yaml.ScalarNode || n.Style&c.style == 0 || len(bytes.TrimSpace([]byte(n.Value))) == 0 {
				return
			}

			seen[[2]int{n.Line, n.Column}] = true
			extra[n] = c.dropped
		})
	}

	if len(seen) != len(cuts) {
		return total, errUnconfirmed
	}

	memo := map[*yaml.Node]nodeCount{}

	for _, doc := range docs {
		c, err := expanded(doc, memo, extra, lim, 0)
		if err != nil {
			return total, err
		}

		total.nodes += c.nodes
		total.bytes += c.bytes
	}

	return total, nil
}

func walkNodes(n *yaml.Node, f func(*yaml.Node)) {
	f(n)

	for _, c := range n.Content {
		walkNodes(c, f)
	}
}

// expanded counts the nodes and scalar bytes under n as the decoder will
// construct them: an alias as many times as it is used. It stops as soon as
// the count passes the limit.
func expanded(n *yaml.Node, memo map[*yaml.Node]nodeCount, extra map[*yaml.Node]int, lim SchematicLimits, depth int) (nodeCount, error) {
	if c, ok := memo[n]; ok {
		return c, nil
	}

	if depth > maxYAMLDepth {
		return nodeCount{}, errTooDeep
	}

	c := nodeCount{nodes: 1, bytes: int64(len(n.Value) + extra[n])}

	if n.Kind == yaml.AliasNode && n.Alias != nil {
		a, err := expanded(n.Alias, memo, extra, lim, depth+1)
		if err != nil {
			return c, err
		}

		c.nodes += a.nodes
		c.bytes += a.bytes
	}

	for _, child := range n.Content {
		a, err := expanded(child, memo, extra, lim, depth+1)
		if err != nil {
			return c, err
		}

		c.nodes += a.nodes
		c.bytes += a.bytes

		if c.nodes > lim.MaxNodes {
			return c, errTooMany
		}

		if c.bytes > lim.MaxBytes {
			return c, errTooBig
		}
	}

	memo[n] = c

	return c, nil
}

// maxYAMLDepth bounds nesting (the decoder's own default is 10000, deep
// enough to exhaust a stack of recursive walks).
const maxYAMLDepth = 64

// checkSchematic refuses a parsed schematic over an element limit.
func checkSchematic(sc *schematic.Schematic) error {
	c := sc.Customization

	for _, l := range []struct {
		what string
		n    int
		max  int
	}{
		{"customization.extraKernelArgs", len(c.ExtraKernelArgs), maxKernelArgs},
		{"customization.meta", len(c.Meta), maxMetaValues},
		{"customization.systemExtensions.officialExtensions", len(c.SystemExtensions.OfficialExtensions), maxExtensions},
		{"customization.imageCache.images", len(c.ImageCache.Images), maxCacheImages},
		{"customization.imageCache.platforms", len(c.ImageCache.Platforms), maxCachePlatforms},
	} {
		if l.n > l.max {
			return overLimit("%s has %d entries; the limit is %d", l.what, l.n, l.max)
		}
	}

	if sc.Overlay.Options != nil {
		nodes, depth := optionsSize(sc.Overlay.Options, 1)

		if depth > maxOverlayDepth {
			return overLimit("overlay.options is nested more than %d levels deep (the limit)", maxOverlayDepth)
		}

		if nodes > maxOverlayNodes {
			return overLimit("overlay.options has %d values; the limit is %d", nodes, maxOverlayNodes)
		}
	}

	return nil
}

// optionsSize counts the values in overlay options and their depth.
func optionsSize(v any, depth int) (nodes, maxDepth int) {
	nodes, maxDepth = 1, depth

	if depth > maxOverlayDepth {
		return nodes, depth // deep enough to refuse; no need to go on
	}

	visit := func(child any) {
		n, d := optionsSize(child, depth+1)
		nodes += n
		maxDepth = max(maxDepth, d)
	}

	switch t := v.(type) {
	case map[string]any:
		for _, child := range t {
			visit(child)
		}
	case map[any]any:
		for _, child := range t {
			visit(child)
		}
	case []any:
		for _, child := range t {
			visit(child)
		}
	}

	return nodes, maxDepth
}

// parseSlots bounds concurrent schematic parses.
type parseSlots chan struct{}

func (p parseSlots) acquire(ctx context.Context) error {
	select {
	case p <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p parseSlots) release() { <-p }
