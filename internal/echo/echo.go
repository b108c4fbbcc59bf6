// Package echo shortens client input that kiln repeats back in error
// messages and logs: a client may send a 60 KB "schematic ID", and the
// answer should not carry it back whole.
package echo

import (
	"strconv"
	"unicode/utf8"
)

// MaxLen is the most of a client's value an error message repeats; longer
// values are cut at a character boundary. A schematic ID is 64 characters.
const MaxLen = 100

// Clip returns s, or its first MaxLen bytes (whole characters) followed by
// a note of how long it was.
func Clip(s string) string {
	if len(s) <= MaxLen {
		return s
	}

	cut := MaxLen
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}

	return s[:cut] + "...(" + strconv.Itoa(len(s)) + " bytes)"
}
