//lint:file-ignore SA1019 Rekor v2's dsse v0.0.2 entry type is deprecated; making one is the point.

package localsigstore

import (
	"crypto/sha256"

	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	rekortilespb "github.com/sigstore/rekor-tiles/v2/pkg/generated/protobuf"
)

// dsseV002Entry is the Rekor v2 dsse v0.0.2 log entry of a DSSE envelope:
// its payload hash and signature, as sigstore-go v1.1 clients wrote it.
func dsseV002Entry(payload []byte, sig *rekortilespb.Signature) *rekortilespb.Entry {
	ph := sha256.Sum256(payload)

	return &rekortilespb.Entry{Kind: "dsse", ApiVersion: "0.0.2", Spec: &rekortilespb.Spec{Spec: &rekortilespb.Spec_DsseV002{
		DsseV002: &rekortilespb.DSSELogEntryV002{
			PayloadHash: &protocommon.HashOutput{Algorithm: protocommon.HashAlgorithm_SHA2_256, Digest: ph[:]},
			Signatures:  []*rekortilespb.Signature{sig},
		},
	}}}
}
