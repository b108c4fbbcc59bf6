// Package server is kiln's edge: one listener that serves gRPC (h2c, or TLS
// with ALPN), the REST gateway under /v1/ and the public Image Factory's own
// HTTP routes, all over the same domain services.
//
// Requests flow one way: the edge parses and validates, calls a domain
// service, and classifies the error it gets back in exactly one place
// (errors.go), so gRPC, REST and the public routes never disagree on what a
// failure is.
package server
