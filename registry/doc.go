// Package registry is kiln's embedded OCI registry: the distribution project's
// registry run in-process over a directory, served under /v2/ on kiln's own
// port, so an air-gapped site needs no registry of its own; and an in-process
// transport through which kiln reads it without a socket (and without having
// to trust its own TLS certificate).
package registry
