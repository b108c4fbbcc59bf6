package schematic

import (
	"errors"
	"io"

	"go.yaml.in/yaml/v4"
)

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
			return &invalidError{err}
		}

		if len(doc.Content) == 1 && doc.Content[0].Kind == yaml.ScalarNode && doc.Content[0].Tag == "!!null" {
			continue
		}

		return invalid("the body holds more than one YAML document (line %d starts another); a schematic is one document", doc.Line)
	}
}
