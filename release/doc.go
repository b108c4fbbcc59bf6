// Package release knows what a Talos release is made of in a registry: the
// repositories, the tags, the extensions and overlays catalogs, and how
// upstream references map onto a mirror.
//
// Mirror naming (kiln's embedded registry, an external mirror, an archive):
// a reference on ghcr.io keeps its path and drops the host, so
// ghcr.io/siderolabs/imager:v1.13.0 is <mirror>/siderolabs/imager:v1.13.0, as
// the public factory's own air-gap guide does; a reference on any other
// registry keeps the host as the first path element, so
// registry.k8s.io/kube-apiserver:v1.36.0 is
// <mirror>/registry.k8s.io/kube-apiserver:v1.36.0 and
// docker.io/library/busybox is <mirror>/docker.io/library/busybox.
package release
