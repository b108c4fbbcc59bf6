// Package e2e drives the real kiln binary with real peers: curl, grpcurl and
// a gRPC client over a real port. Build tags pick the suites:
//
//	integration  the binary's surfaces, config layering, restart, TLS (make test)
//	e2e          everything, including the slow suites (make e2e)
//
// KILN_BIN and GRPCURL name the binaries; the Makefile sets both.
package e2e
