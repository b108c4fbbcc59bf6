package server

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptrace"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kiln-dev/kiln/demo"
	"github.com/kiln-dev/kiln/registry"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/signing/signingtest"
)

// benchKernel is the size of the bench release's kernels, one per
// architecture (a real Talos kernel is ~20 MB, its UKI ~100 MB with the
// initramfs; the demo's initramfs is a placeholder).
const benchKernel = 32 << 20

// BenchmarkInstallerPullCold: a node's first pull of its installer
// (metal-installer/<id>:v1.13.0, linux/amd64, as containerd pulls it: the
// index, the image manifest, the config and every layer) against the same
// boot asset fetched from /image (metal-amd64-uki.efi; systemd-boot has no
// /image route), each for a schematic nothing was built for. The installer
// answers its first byte only once the whole index is built, signed and
// pushed (both architectures' UKIs), the /image download once its one UKI
// is built. Reported per pull: time to first byte and total, in ms, and the
// installer's over /image's as ratios.
func BenchmarkInstallerPullCold(b *testing.B) {
	dir := b.TempDir()
	key := signingtest.MustGenerateKey(b, signingtest.ECDSAP256)
	seedBenchRelease(b, dir, key)

	ts := startServer(b, Config{DataDir: dir, TrustPolicy: writePolicy(b, b.TempDir(), key)})
	client := &http.Client{Timeout: 10 * time.Minute}

	create := func(arg string) string {
		resp, body := ts.do(b, "POST", "/schematics", "customization:\n  extraKernelArgs: ["+arg+"]\n")
		if resp.StatusCode != 201 {
			b.Fatalf("POST /schematics = %d %s", resp.StatusCode, body)
		}

		_, id, _ := strings.Cut(body, `"id":"`)

		return id[:64]
	}

	image := func(id string) (ttfb, total time.Duration) {
		return timedGet(b, client, "http://"+ts.addr+"/image/"+id+"/v1.13.0/metal-amd64-uki.efi", nil)
	}

	installer := func(id string) (ttfb, total time.Duration) {
		start := time.Now()
		ttfb, _ = timedGet(b, client, "http://"+ts.addr+"/v2/metal-installer/"+id+"/manifests/v1.13.0",
			http.Header{"Accept": {"application/vnd.oci.image.index.v1+json"}})

		tag, err := name.NewTag(ts.addr+"/metal-installer/"+id+":v1.13.0", name.Insecure)
		if err != nil {
			b.Fatal(err)
		}

		img, err := remote.Image(tag, remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}))
		if err != nil {
			b.Fatal(err)
		}

		if _, err := img.RawConfigFile(); err != nil {
			b.Fatal(err)
		}

		layers, err := img.Layers()
		if err != nil {
			b.Fatal(err)
		}

		for _, l := range layers {
			rc, err := l.Compressed()
			if err != nil {
				b.Fatal(err)
			}

			if _, err := io.Copy(io.Discard, rc); err != nil {
				b.Fatal(err)
			}

			rc.Close()
		}

		return ttfb, time.Since(start)
	}

	// Warm what every build shares (the release's boot files extracted
	// into the asset store), so that each measured pull is cold only in
	// what is the schematic's own.
	image(create("kiln.bench=warm-image"))
	installer(create("kiln.bench=warm-installer"))

	var imgTTFB, imgTotal, instTTFB, instTotal time.Duration

	n := 0

	for b.Loop() {
		a, c := image(create(fmt.Sprintf("kiln.bench=image-%d", n)))
		d, e := installer(create(fmt.Sprintf("kiln.bench=installer-%d", n)))
		imgTTFB, imgTotal, instTTFB, instTotal = imgTTFB+a, imgTotal+c, instTTFB+d, instTotal+e
		n++
	}

	ms := func(d time.Duration) float64 { return float64(d) / float64(n) / float64(time.Millisecond) }

	b.ReportMetric(ms(imgTTFB), "image-ttfb-ms")
	b.ReportMetric(ms(imgTotal), "image-total-ms")
	b.ReportMetric(ms(instTTFB), "installer-ttfb-ms")
	b.ReportMetric(ms(instTotal), "installer-total-ms")
	b.ReportMetric(float64(instTTFB)/float64(imgTTFB), "ttfb-ratio")
	b.ReportMetric(float64(instTotal)/float64(imgTotal), "total-ratio")
}

// timedGet downloads url whole and returns the time to its first response
// byte and in all.
func timedGet(b *testing.B, client *http.Client, url string, header http.Header) (ttfb, total time.Duration) {
	b.Helper()

	start := time.Now()

	var first time.Time

	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		GotFirstResponseByte: func() { first = time.Now() },
	})

	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		b.Fatal(err)
	}

	for k, v := range header {
		req.Header[k] = v
	}

	resp, err := client.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()

	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		b.Fatal(err)
	}

	if resp.StatusCode != 200 {
		b.Fatalf("GET %s = %d", url, resp.StatusCode)
	}

	return first.Sub(start), time.Since(start)
}

// seedBenchRelease pushes a v1.13.0 whose kernels are benchKernel bytes of
// random data into <dir>/registry, signed by key.
func seedBenchRelease(b *testing.B, dir string, key *signingtest.Key) {
	b.Helper()

	ctx := context.Background()

	reg, err := registry.NewEmbedded(ctx, filepath.Join(dir, "registry"))
	if err != nil {
		b.Fatal(err)
	}
	defer reg.Close()

	host, _ := name.NewRegistry(embeddedHost, name.Insecure)
	inproc := remote.WithTransport(registry.Transport(reg))

	kernels := map[string][]byte{}

	for _, arch := range release.Arches {
		k := make([]byte, benchKernel)
		rand.Read(k) //nolint:errcheck // never fails
		copy(k, "MZ")
		kernels[arch] = k
	}

	if _, err := demo.Push(ctx, demo.Options{
		Version: "v1.13.0", Registry: host, Remote: []remote.Option{inproc}, KubernetesImages: []string{},
		Assets: func(arch, file string) ([]byte, error) {
			if file == release.KernelAsset {
				return kernels[arch], nil
			}

			return nil, fs.ErrNotExist
		},
		Sign: func(ctx context.Context, ref name.Digest, upstream name.Repository) error {
			return signingtest.SignLegacyAs(ctx, ref, upstream.Name(), key, inproc)
		},
	}); err != nil {
		b.Fatal(err)
	}
}
