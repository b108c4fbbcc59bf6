package schematic

import (
	"errors"
	"io"

	"go.yaml.in/yaml/v4"
)

// moreThanOneDocument starts the refusal of a body with more than one
// document.
const moreThanOneDocument = "the body holds more than one YAML document"

// onlyDocument refuses a stream with more than one document: the public
// factory decodes the first and silently drops the rest, so a second
// document that the author meant to count would be lost from the image.
// Empty documents after the first (a trailing "---") hold nothing to lose
// and are let through.
func onlyDocument(dec *yaml.Decoder) error {
	for {
		var doc yaml.Node

		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return nil
		}

		if err != nil {
			// The factory never reads past the first document, so it takes
			// a body whose tail does not even parse; that tail is refused
			// for the same reason as a second document.
			return invalid("%s, or text after its first that is not YAML (%v); a schematic is one document", moreThanOneDocument, err)
		}

		if len(doc.Content) == 1 && doc.Content[0].Kind == yaml.ScalarNode && doc.Content[0].Tag == "!!null" {
			continue
		}

		return invalid("%s (line %d starts another); a schematic is one document", moreThanOneDocument, doc.Line)
	}
}
