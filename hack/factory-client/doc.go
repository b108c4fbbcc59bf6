// Package factoryclient holds one test: the public Image Factory's own Go
// client (github.com/siderolabs/image-factory/pkg/client) and
// go-containerregistry make, against the real kiln binary, exactly the
// requests Sidero's air-gap plan, Omni and the Omni bare-metal provider make
// of a factory. Run it with make factory-client (KILN_BIN names the binary).
package factoryclient
