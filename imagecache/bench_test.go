package imagecache

// Cache creation throughput against `crane pull --format=oci` and `skopeo
// copy` of the same images (linux/amd64, about 430 MB), from a local
// registry: docker-registry when DOCKER_REGISTRY is set, else an in-process
// one; and from kiln's embedded mirror. `make bench` runs it with the tools
// it installs; by hand:
//
//	DOCKER_REGISTRY=/usr/bin/docker-registry CRANE=$PWD/_tools/bin/crane \
//		go test -run '^$' -bench Create -benchtime 5x ./imagecache/

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	kilnregistry "github.com/kiln-dev/kiln/registry"
)

func benchFixture(b *testing.B, layerSize int64) *fixture {
	var host string

	if bin := os.Getenv("DOCKER_REGISTRY"); bin != "" {
		host = startRegistry(b, bin)
	} else {
		srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
		b.Cleanup(srv.Close)

		u, _ := url.Parse(srv.URL)
		host = u.Host
	}

	return settled(newFixtureAt(b, host, layerSize, 4))
}

// settled flushes the fixture's writes: their writeback would otherwise
// slow whichever contender runs first.
func settled(f *fixture) *fixture {
	unix.Sync()

	return f
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

// BenchmarkCreate runs each contender on the same images. Every output is
// removed after its iteration, outside the timer, so that all of them write
// into recycled page cache (in a VM, first-touch memory costs more than the
// copy). The "+sync" peers flush their output with one syncfs, the
// durability kiln gives by default; "-nosync" kiln skips it as the peers do.
func BenchmarkCreate(b *testing.B) {
	f := benchFixture(b, 24<<20)
	refs := f.benchRefs()

	var size int64

	for _, c := range []struct {
		layout Layout
		nosync bool
	}{{Flat, false}, {Flat, true}, {OCI, false}, {OCI, true}} {
		label := "kiln-" + c.layout.String()
		if c.nosync {
			label += "-nosync"
		}

		opts := Options{Platforms: []string{"linux/amd64"}, Layout: c.layout, Signatures: true, Jobs: 4, NoSync: c.nosync, Logger: quiet()}

		p, err := NewPlan(context.Background(), refs, DirectResolver{}, nil, opts)
		if err != nil {
			b.Fatal(err)
		}

		size = p.Size()

		benchOutput(b, label, size, func(out string) error {
			p, err := NewPlan(context.Background(), refs, DirectResolver{}, nil, opts)
			if err != nil {
				return err
			}

			_, err = Write(context.Background(), p, out, opts)

			return err
		})
	}

	benchPeers(b, f, refs, size)
	benchCeiling(b, refs)
}

// BenchmarkPlan is the planning part of BenchmarkCreate: every manifest,
// signature and config of the fixture's images fetched from the registry.
// It is round trips, not bytes: "rtt-5ms" delays each request as a mirror
// across a WAN link would.
func BenchmarkPlan(b *testing.B) {
	f := benchFixture(b, 1<<10)
	refs := f.benchRefs()
	opts := Options{Platforms: []string{"linux/amd64"}, Signatures: true, Jobs: 4, Logger: quiet()}

	for _, rtt := range []time.Duration{0, 5 * time.Millisecond} {
		label := "local"
		if rtt > 0 {
			label = "rtt-" + rtt.String()
		}

		r := DirectResolver{Remote: []remote.Option{remote.WithTransport(delayed{http.DefaultTransport, rtt})}}

		b.Run(label, func(b *testing.B) {
			for b.Loop() {
				if _, err := NewPlan(context.Background(), refs, r, nil, opts); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// delayed waits d before each request.
type delayed struct {
	http.RoundTripper
	d time.Duration
}

func (t delayed) RoundTrip(r *http.Request) (*http.Response, error) {
	time.Sleep(t.d)

	return t.RoundTripper.RoundTrip(r)
}

// benchCeiling is the most any client that checks digests can do from the
// registry: every blob of the plan fetched (eight at once) and hashed,
// nothing written.
func benchCeiling(b *testing.B, refs []string) {
	p, err := NewPlan(context.Background(), refs, DirectResolver{}, nil, Options{Platforms: []string{"linux/amd64"}, Layout: Flat, Logger: quiet()})
	if err != nil {
		b.Fatal(err)
	}

	benchOutput(b, "ceiling-get-sha256", p.Size(), func(string) error {
		var g errgroup.Group
		g.SetLimit(8)

		for _, s := range p.blobs {
			g.Go(func() error {
				resp, err := http.Get(fmt.Sprintf("http://%s/v2/%s/blobs/%s", s.repo.RegistryStr(), s.repo.RepositoryStr(), s.digest))
				if err != nil {
					return err
				}
				defer resp.Body.Close()

				_, err = copyVerified(io.Discard, resp.Body, s.digest, s.size, make([]byte, chunk))

				return err
			})
		}

		return g.Wait()
	})
}

// BenchmarkCreateEmbedded is BenchmarkCreate with kiln's own mirror as the
// source, as ImageCacheService and schematic builds use it: kiln reads it
// in process (manifests through the registry, blobs from its storage), the
// peers through its /v2/ over TCP.
func BenchmarkCreateEmbedded(b *testing.B) {
	e, err := kilnregistry.NewEmbedded(b.Context(), b.TempDir())
	if err != nil {
		b.Fatal(err)
	}

	b.Cleanup(func() { e.Close() }) //nolint:errcheck // test teardown

	srv := httptest.NewServer(e)
	b.Cleanup(srv.Close)

	host := strings.TrimPrefix(srv.URL, "http://")
	f := settled(newFixtureAt(b, host, 24<<20, 4))
	refs := f.benchRefs()
	resolver := DirectResolver{NameOptions: []name.Option{name.Insecure}, Remote: []remote.Option{remote.WithTransport(kilnregistry.Transport(e))}, LocalBlobs: e}

	var size int64

	for _, layout := range []Layout{Flat, OCI} {
		opts := Options{Platforms: []string{"linux/amd64"}, Layout: layout, Signatures: true, Jobs: 4, Logger: quiet()}

		p, err := NewPlan(context.Background(), refs, resolver, nil, opts)
		if err != nil {
			b.Fatal(err)
		}

		size = p.Size()

		benchOutput(b, "kiln-"+layout.String(), size, func(out string) error {
			p, err := NewPlan(context.Background(), refs, resolver, nil, opts)
			if err != nil {
				return err
			}

			_, err = Write(context.Background(), p, out, opts)

			return err
		})
	}

	benchPeers(b, f, refs, size)
}

// benchPeers runs crane and skopeo on refs, with and without a sync.
func benchPeers(b *testing.B, f *fixture, refs []string, size int64) {
	crane := os.Getenv("CRANE")
	if crane == "" {
		crane, _ = exec.LookPath("crane")
	}

	if crane == "" {
		b.Log("crane: not found (set CRANE or use make bench)")
	} else {
		for _, sync := range []bool{false, true} {
			benchOutput(b, "crane-pull-oci"+syncLabel(sync), size, func(out string) error {
				args := append([]string{"pull", "--insecure", "--platform", "linux/amd64", "--format", "oci"}, refs...)
				cmd := exec.Command(crane, append(args, out)...)
				cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+filepath.Dir(out))

				if o, err := cmd.CombinedOutput(); err != nil {
					return fmt.Errorf("crane: %w\n%s", err, o)
				}

				return syncIf(sync, out)
			})
		}
	}

	if skopeo, err := exec.LookPath("skopeo"); err != nil {
		b.Log("skopeo: not found (make e2e-debs installs it)")
	} else {
		for _, sync := range []bool{false, true} {
			benchOutput(b, "skopeo-copy"+syncLabel(sync), size, func(out string) error {
				for i, ref := range refs {
					tag := strings.ReplaceAll(strings.TrimPrefix(ref, f.host+"/"), "/", "-")
					tag = strings.ReplaceAll(tag, ":", "-")
					cmd := exec.Command(skopeo, "copy", "--src-tls-verify=false", "--override-os", "linux", "--override-arch", "amd64",
						"docker://"+ref, "oci:"+out+":"+tag)

					if o, err := cmd.CombinedOutput(); err != nil {
						return fmt.Errorf("skopeo %d: %w\n%s", i, err, o)
					}
				}

				return syncIf(sync, out)
			})
		}
	}
}

// benchOutput runs one contender as a sub-benchmark; run writes into out,
// which is removed after each iteration, outside the timer.
func benchOutput(b *testing.B, label string, size int64, run func(out string) error) {
	b.Run(label, func(b *testing.B) {
		b.SetBytes(size)

		dir := b.TempDir()
		out := filepath.Join(dir, "out")

		for b.Loop() {
			if err := run(out); err != nil {
				b.Fatal(err)
			}

			b.StopTimer()

			if err := os.RemoveAll(out); err != nil {
				b.Fatal(err)
			}

			b.StartTimer()
		}
	})
}

func syncLabel(sync bool) string {
	if sync {
		return "+sync"
	}

	return ""
}

// syncIf flushes the file system holding dir, as Write does.
func syncIf(sync bool, dir string) error {
	if !sync {
		return nil
	}

	return syncDir(dir)
}
