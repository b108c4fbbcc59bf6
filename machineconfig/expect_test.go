package machineconfig

import (
	"cmp"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// summary is what Talos's machinery reads from a patched config, in the
// shape hack/machineconfig-check prints it: the test compares it with what
// the options asked for.
type summary struct {
	InstallImage string                   `json:"installImage"`
	InstallDisk  string                   `json:"installDisk"`
	Mirrors      map[string]summaryMirror `json:"mirrors"`
	TLS          map[string]summaryTLS    `json:"tls,omitempty"`
	ImageCache   bool                     `json:"imageCache"`
	CacheVolume  *summaryVolume           `json:"cacheVolume,omitempty"`
	Verification []summaryRule            `json:"verification,omitempty"`
}

type summaryMirror struct {
	Endpoints    []Endpoint `json:"endpoints"`
	SkipFallback bool       `json:"skipFallback"`
}

type summaryTLS struct {
	CA             string `json:"ca,omitempty"`
	Insecure       bool   `json:"insecureSkipVerify,omitempty"`
	ClientIdentity bool   `json:"clientIdentity,omitempty"`
}

type summaryVolume struct {
	Match   string `json:"match"`
	MinSize uint64 `json:"minSize"`
	MaxSize uint64 `json:"maxSize"`
}

type summaryRule struct {
	Image     string `json:"image"`
	PublicKey string `json:"publicKey"`
}

// expected is the summary a patch made from opts must read back as.
func expected(t testing.TB, opts Options, p *Patch) summary {
	t.Helper()

	s := summary{InstallImage: p.InstallImage, Mirrors: map[string]summaryMirror{}, ImageCache: opts.ImageCache}

	// gen config's disk, unless the patch names one; from 1.14 as the
	// UnattendedInstallConfig's selector.
	s.InstallDisk = cmp.Or(opts.InstallDisk, DefaultInstallDisk)
	if opts.Version.Has(UnattendedInstall) {
		s.InstallDisk = diskSelector(s.InstallDisk)
	}

	for _, m := range p.Mirrors {
		s.Mirrors[m.Host] = summaryMirror{Endpoints: m.Endpoints, SkipFallback: true}
	}

	for _, r := range []Registry{opts.Kiln, opts.Mirror} {
		if len(r.CA) == 0 && !r.InsecureSkipVerify {
			continue
		}

		if s.TLS == nil {
			s.TLS = map[string]summaryTLS{}
		}

		host := strings.TrimPrefix(r.URL, "https://")
		s.TLS[host] = summaryTLS{CA: string(r.CA), Insecure: r.InsecureSkipVerify}
	}

	if opts.ImageCache && opts.CacheVolume != "" {
		size := sizeBytes(t, opts.CacheVolume)
		s.CacheVolume = &summaryVolume{Match: "system_disk", MinSize: size, MaxSize: size}
	}

	if len(opts.SigningKey) > 0 && opts.Version.Has(ImageVerification) {
		host := strings.TrimPrefix(strings.TrimPrefix(opts.Kiln.URL, "https://"), "http://")

		hosts := []string{host}
		if !slices.Contains(opts.Held, FactoryHost) {
			hosts = append(hosts, FactoryHost)
		}

		for _, h := range hosts {
			s.Verification = append(s.Verification,
				summaryRule{Image: h + "/installer/*", PublicKey: string(opts.SigningKey)},
				summaryRule{Image: h + "/*-installer/*", PublicKey: string(opts.SigningKey)})
		}
	}

	return s
}

// sizeBytes is a CacheVolume size in bytes, as Talos's ByteSize reads it.
func sizeBytes(t testing.TB, s string) uint64 {
	t.Helper()

	units := map[string]uint64{"MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40, "MB": 1e6, "GB": 1e9, "TB": 1e12}

	for u, mul := range units {
		if n, ok := strings.CutSuffix(s, u); ok && !strings.HasSuffix(n, "i") {
			v, err := strconv.ParseUint(n, 10, 64)
			if err != nil {
				t.Fatalf("size %q: %v", s, err)
			}

			return v * mul
		}
	}

	t.Fatalf("size %q: no unit", s)

	return 0
}

// testCA is a self-signed CA certificate in PEM.
func testCA(t testing.TB, name string) []byte {
	t.Helper()

	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}

	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
	}

	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}

	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// testKey is a cosign-style public key in PEM.
func testKey(t testing.TB) []byte {
	t.Helper()

	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}

	der, err := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	if err != nil {
		t.Fatal(err)
	}

	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// variant is one set of options the version tests run.
type variant struct {
	name string
	opts Options
}

// variants are the option sets every version is checked with: each TLS
// mode, a namespace, hosts found in the mirror, the image cache with and
// without its volume, the signing key, each form the version has.
func variants(t testing.TB, v Version) []variant {
	t.Helper()

	const id = "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba"

	key := testKey(t)
	ca := testCA(t, "kiln test CA")
	mirrorCA := testCA(t, "harbor test CA")

	base := []variant{
		{"plain", Options{Kiln: Registry{URL: "http://kiln.lan:8080"}}},
		{"ca", Options{Kiln: Registry{URL: "https://kiln.lan:8443", CA: ca}}},
		{"insecure", Options{Kiln: Registry{URL: "https://10.0.0.5", InsecureSkipVerify: true}}},
		{"demo-namespace", Options{Kiln: Registry{URL: "http://127.0.0.1:8080"}, Namespace: "kiln-demo",
			Held: []string{"ghcr.io", "registry.k8s.io", "mcr.microsoft.com", "localhost:5000", FactoryHost}}},
		{"external-mirror", Options{Kiln: Registry{URL: "https://kiln.lan", CA: ca},
			Mirror: Registry{URL: "https://harbor.lan", CA: mirrorCA}, Namespace: "talos/mirror"}},
		{"cache", Options{Kiln: Registry{URL: "https://kiln.lan:8443", CA: ca}, ImageCache: true, CacheVolume: "2GiB", SigningKey: key}},
		{"cache-disk", Options{Kiln: Registry{URL: "http://kiln.lan:8080"}, ImageCache: true, SigningKey: key, Platform: "nocloud",
			InstallDisk: "/dev/nvme0n1"}},
		{"cache-plain", Options{Kiln: Registry{URL: "http://kiln.lan:8080"}, ImageCache: true, CacheVolume: "4GB",
			Mirror: Registry{URL: "http://harbor.lan"}, Held: []string{"quay.io", "ghcr.io"}}},
	}

	var out []variant

	forms := []Form{FormLegacy}
	if v.Has(RegistryDocuments) {
		forms = append(forms, FormDocuments)
	}

	for _, f := range forms {
		for _, b := range base {
			o := b.opts
			o.Version, o.Schematic, o.Form = v, id, f
			out = append(out, variant{name: fmt.Sprintf("%s/%s/%s", v, f, b.name), opts: o})
		}
	}

	return out
}
