// Package checksums writes and reads checksum files in the format
// `sha512sum` prints and `sha512sum -c` checks: one line per file, the
// lower-case hex digest, two spaces (text mode, as GNU coreutils writes by
// default) and the file name.
package checksums

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/kiln-dev/kiln/internal/echo"
)

// HexLen is the length of a sha512 digest in hex.
const HexLen = 128

// MaxFileBytes bounds a checksum file read: a directory of a handful of
// files needs a few hundred bytes.
const MaxFileBytes = 64 << 10

// ErrInvalid marks a checksum file that is not in sha512sum's format.
var ErrInvalid = errors.New("invalid checksum file")

// Entry is one line: a file and its sha512 in lower-case hex.
type Entry struct {
	Name   string
	SHA512 string
}

// Format writes entries in the order given. It refuses what Parse would
// refuse, so that what kiln writes always reads back.
func Format(entries []Entry) ([]byte, error) {
	var b bytes.Buffer

	seen := map[string]bool{}

	for _, e := range entries {
		if err := checkEntry(e, seen); err != nil {
			return nil, err
		}

		b.WriteString(e.SHA512)
		b.WriteString("  ")
		b.WriteString(e.Name)
		b.WriteByte('\n')
	}

	return b.Bytes(), nil
}

// Parse reads a checksum file of plain file names (no directory part, as a
// mirror directory's own checksums.txt has them). It is strict where
// sha512sum is lenient: no comments, no blank lines, no binary-mode '*',
// no escaped names, no name twice, every line ended by '\n'.
func Parse(data []byte) ([]Entry, error) {
	if len(data) > MaxFileBytes {
		return nil, fmt.Errorf("%w: over %d bytes", ErrInvalid, MaxFileBytes)
	}

	if len(data) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrInvalid)
	}

	if data[len(data)-1] != '\n' {
		return nil, fmt.Errorf("%w: the last line has no newline (cut off?)", ErrInvalid)
	}

	var entries []Entry

	seen := map[string]bool{}

	for i, line := range strings.Split(string(data[:len(data)-1]), "\n") {
		sum, name, ok := strings.Cut(line, "  ")
		if !ok {
			return nil, fmt.Errorf("%w: line %d: want \"<sha512 hex>  <file name>\"", ErrInvalid, i+1)
		}

		e := Entry{Name: name, SHA512: sum}
		if err := checkEntry(e, seen); err != nil {
			return nil, fmt.Errorf("line %d: %w", i+1, err)
		}

		entries = append(entries, e)
	}

	return entries, nil
}

// checkEntry refuses a digest that is not 128 lower-case hex digits and a
// name that is not one plain file name (it becomes a path on the reader's
// side), or repeats.
func checkEntry(e Entry, seen map[string]bool) error {
	if len(e.SHA512) != HexLen || strings.Trim(e.SHA512, "0123456789abcdef") != "" {
		return fmt.Errorf("%w: %q is not a sha512 (%d lower-case hex digits)", ErrInvalid, echo.Clip(e.SHA512), HexLen)
	}

	if err := CheckName(e.Name); err != nil {
		return err
	}

	if seen[e.Name] {
		return fmt.Errorf("%w: %q is listed twice", ErrInvalid, e.Name)
	}

	seen[e.Name] = true

	return nil
}

// CheckName refuses a name that is not a plain file name: empty, "." or
// "..", with a path separator, a control character (sha512sum would escape
// it, kiln never writes one), a leading '*' or '\' (sha512sum reads those as
// markers), not UTF-8, or longer than 255 bytes.
func CheckName(name string) error {
	bad := func(why string) error {
		return fmt.Errorf("%w: file name %q: %s", ErrInvalid, echo.Clip(name), why)
	}

	switch {
	case name == "":
		return bad("empty")
	case len(name) > 255:
		return bad("longer than 255 bytes")
	case !utf8.ValidString(name):
		return bad("not UTF-8")
	case name == "." || name == "..":
		return bad("it names a directory")
	case strings.ContainsAny(name, `/\`):
		return bad("it has a path separator")
	case name[0] == '*':
		return bad("a leading '*' is sha512sum's binary-mode marker")
	}

	for _, r := range name {
		if unicode.IsControl(r) {
			return bad("it has a control character")
		}
	}

	return nil
}
