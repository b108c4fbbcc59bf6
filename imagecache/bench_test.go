package imagecache

// Cache creation throughput against `crane pull --format=oci` and `skopeo
// copy` of the same images (linux/amd64, about 320 MB), from a local
// registry: docker-registry when DOCKER_REGISTRY is set, else an in-process
// one. Run by hand:
//
//	DOCKER_REGISTRY=/usr/bin/docker-registry go test -run '^$' -bench Create -benchtime 3x ./imagecache/

import (
	"context"
	"io"
	"log"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
)

func benchFixture(b *testing.B) *fixture {
	var host string

	if bin := os.Getenv("DOCKER_REGISTRY"); bin != "" {
		host = startRegistry(b, bin)
	} else {
		srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
		b.Cleanup(srv.Close)

		u, _ := url.Parse(srv.URL)
		host = u.Host
	}

	return newFixtureAt(b, host, 24<<20, 4)
}

// benchRefs are the fixture's images, all named at the registry.
func (f *fixture) benchRefs() []string {
	return []string{
		f.host + "/siderolabs/kubelet:v1.36.0",
		f.host + "/registry.k8s.io/pause:3.10",
		f.host + "/docker.io/library/busybox:1.37",
		f.host + "/direct/app:v1",
	}
}

func BenchmarkCreate(b *testing.B) {
	f := benchFixture(b)
	refs := f.benchRefs()

	for _, c := range []struct {
		layout Layout
		nosync bool
	}{{Flat, false}, {Flat, true}, {OCI, false}, {OCI, true}} {
		label := "kiln-" + c.layout.String()
		if c.nosync {
			label += "-nosync"
		}

		b.Run(label, func(b *testing.B) {
			opts := Options{Platforms: []string{"linux/amd64"}, Layout: c.layout, Signatures: true, Jobs: 4, NoSync: c.nosync, Logger: quiet()}

			p, err := NewPlan(context.Background(), refs, DirectResolver{}, nil, opts)
			if err != nil {
				b.Fatal(err)
			}

			b.SetBytes(p.Size())

			for b.Loop() {
				p, err := NewPlan(context.Background(), refs, DirectResolver{}, nil, opts)
				if err != nil {
					b.Fatal(err)
				}

				out := filepath.Join(b.TempDir(), "cache")
				if _, err := Write(context.Background(), p, out, opts); err != nil {
					b.Fatal(err)
				}
			}
		})
	}

	size := func(b *testing.B) int64 {
		p, err := NewPlan(context.Background(), refs, DirectResolver{}, nil, Options{Platforms: []string{"linux/amd64"}, Layout: Flat, Logger: quiet()})
		if err != nil {
			b.Fatal(err)
		}

		return p.Size()
	}

	b.Run("crane-pull-oci", func(b *testing.B) {
		bin := "/work/main/_tools/bin/crane"
		if v := os.Getenv("CRANE"); v != "" {
			bin = v
		}

		if _, err := os.Stat(bin); err != nil {
			b.Skip("crane missing")
		}

		b.SetBytes(size(b))

		for b.Loop() {
			out := filepath.Join(b.TempDir(), "oci")
			args := append([]string{"pull", "--insecure", "--platform", "linux/amd64", "--format", "oci"}, refs...)
			cmd := exec.Command(bin, append(args, out)...)
			cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+b.TempDir())

			if o, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("crane: %v\n%s", err, o)
			}
		}
	})

	b.Run("skopeo-copy", func(b *testing.B) {
		bin, err := exec.LookPath("skopeo")
		if err != nil {
			b.Skip("skopeo missing")
		}

		b.SetBytes(size(b))

		for b.Loop() {
			out := filepath.Join(b.TempDir(), "oci")

			for i, ref := range refs {
				tag := strings.ReplaceAll(strings.TrimPrefix(ref, f.host+"/"), "/", "-")
				tag = strings.ReplaceAll(tag, ":", "-")
				cmd := exec.Command(bin, "copy", "--src-tls-verify=false", "--override-os", "linux", "--override-arch", "amd64",
					"docker://"+ref, "oci:"+out+":"+tag)

				if o, err := cmd.CombinedOutput(); err != nil {
					b.Fatalf("skopeo %d: %v\n%s", i, err, o)
				}
			}
		}
	})
}
