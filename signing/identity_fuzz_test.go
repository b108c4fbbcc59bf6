package signing

import (
	"encoding/json"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/sigstore/cosign/v2/pkg/oci/static"
	protobundle "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	protodsse "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	sgbundle "github.com/sigstore/sigstore-go/pkg/bundle"
)

// FuzzSignedIdentity feeds any bytes as a signed simple-signing payload
// and as a bundle's in-toto statement to the identity checks: never a
// panic, and nothing is accepted unless it names the wanted repository with
// the image's digest.
func FuzzSignedIdentity(f *testing.F) {
	const digest = "sha256:1111111111111111111111111111111111111111111111111111111111111111"

	f.Add([]byte(`{"critical":{"identity":{"docker-reference":"ghcr.io/siderolabs/imager"},"image":{"docker-manifest-digest":"` + digest + `"},"type":"cosign container image signature"}}`))
	f.Add([]byte(`{"critical":{"identity":{"docker-reference":"ghcr.io/siderolabs/imager:v1.13.0@` + digest + `"},"image":{"docker-manifest-digest":"` + digest + `"}}}`))
	f.Add([]byte(`{"_type":"https://in-toto.io/Statement/v1","subject":[{"name":"ghcr.io/siderolabs/imager","digest":{"sha256":"1111111111111111111111111111111111111111111111111111111111111111"}}]}`))
	f.Add([]byte(`{"subject":[{"name":"","digest":{}}]}`))
	f.Add([]byte(`null`))

	want, _ := name.NewRepository("ghcr.io/siderolabs/imager")
	h, _ := v1.NewHash(digest)

	f.Fuzz(func(t *testing.T, payload []byte) {
		sig, err := static.NewSignature(payload, "")
		if err != nil {
			return
		}

		if identityClaimVerifier(&want)(sig, h, nil) == nil {
			var ss struct {
				Critical struct {
					Identity struct {
						DockerReference string `json:"docker-reference"`
					} `json:"identity"`
				} `json:"critical"`
			}

			if json.Unmarshal(payload, &ss) != nil || !sameRepository(ss.Critical.Identity.DockerReference, want) {
				t.Fatalf("accepted a payload that does not name %s: %q", want, payload)
			}
		}

		b := &sgbundle.Bundle{Bundle: &protobundle.Bundle{Content: &protobundle.Bundle_DsseEnvelope{DsseEnvelope: &protodsse.Envelope{Payload: payload}}}}
		if checkBundleIdentity(b, h, want) == nil {
			var st struct {
				Subject []struct {
					Name   string            `json:"name"`
					Digest map[string]string `json:"digest"`
				} `json:"subject"`
			}

			if json.Unmarshal(payload, &st) != nil {
				t.Fatalf("accepted a statement that does not parse: %q", payload)
			}

			ok := false
			for _, s := range st.Subject {
				ok = ok || (s.Digest["sha256"] == h.Hex && sameRepository(s.Name, want))
			}

			if !ok {
				t.Fatalf("accepted a statement with no subject named %s with the digest: %q", want, payload)
			}
		}
	})
}
