// Package artifacts reads Talos releases from where kiln mirrors them: the
// embedded registry, an external registry (Harbor, registry:2), each under an
// optional namespace. It lists versions, reads the extensions and overlays
// catalogs, and hands out only digests that passed signature verification.
package artifacts
