// Package schematic is the Image Factory schematic: its model, strict parsing,
// canonical YAML form and content-addressed ID.
//
// The package is pure (no I/O, no generated API types). The ID of a schematic
// must be byte-for-byte the ID the public Image Factory in service (v1.5)
// computes, because users carry IDs between the two; so the field order,
// struct tags, type names (they show in the parser's messages) and the YAML
// library's version (go.yaml.in/yaml/v4 v4.0.0-rc.6, whose quoting is the
// factory's) are part of the contract. The vectors and the scalar table in the
// tests pin it; FuzzFactoryDiff checks it against the factory's own code
// (hack/factory-oracle).
package schematic
