// The public factory's own schematic code, built as the factory in service
// builds it as closely as the module proxy allows:
//
//   - image-factory v1.5.0 (in service): the proxy serves its go.mod but
//     refuses its source (403); v1.4.0 is the newest it serves. Its
//     pkg/schematic has v1.5.0's model (same fields, tags and order;
//     Unmarshal, Validate, Marshal, ID).
//   - v1.5.0 pins go.yaml.in/yaml/v4 v4.0.0-rc.6.0.20260809190231-643e93b9c9be,
//     which the proxy refuses too; v4.0.0-rc.6 is the release under it and
//     reproduces the IDs v1.5.0 gives (v1.4.0's own rc.4 does not: it wrote
//     YAML 1.1 booleans double-quoted).
//   - v1.5.0 pins machinery v1.14.0-rc.1 (refused); v1.4.0's v1.14.0-alpha.1
//     has the same imager/imageropts as v1.13.9 (kiln's) and v1.14.0-alpha.2.
module github.com/kiln-dev/kiln/hack/factory-oracle

go 1.26.5

require github.com/siderolabs/image-factory v1.4.0

require (
	github.com/siderolabs/gen v0.8.7 // indirect
	github.com/siderolabs/talos/pkg/machinery v1.14.0-alpha.1 // indirect
	go.yaml.in/yaml/v4 v4.0.0-rc.6 // indirect
)
