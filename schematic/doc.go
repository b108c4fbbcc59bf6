// Package schematic is the Image Factory schematic: its model, strict parsing,
// canonical YAML form and content-addressed ID.
//
// The package is pure (no I/O, no generated API types). The ID of a schematic
// must be byte-for-byte the ID the public Image Factory computes, because users
// carry IDs between the two; so the field order, struct tags and YAML library
// here are part of the contract, pinned by the vectors in schematic_test.go.
package schematic
