package builder_test

import (
	"context"
	"fmt"
	"io"
	"math/rand"
	"syscall"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/builder"
	"github.com/kiln-dev/kiln/demo"
	"github.com/kiln-dev/kiln/schematic"
)

// BenchmarkISOLargeInitramfs builds cold sd-boot ISOs (each a new
// schematic, differing by a kernel argument, as the imager bench's) from a
// release whose initramfs is 64 MiB of incompressible bytes: the path where
// the initramfs and UKI bytes are copied (issue 17). cpu-ms/op is the
// process's user+system CPU per build, asset commit included.
func BenchmarkISOLargeInitramfs(b *testing.B) {
	initrd := make([]byte, 64<<20)
	rand.New(rand.NewSource(17)).Read(initrd) //nolint:gosec // bench data

	e := newEnvRelease(b, func(*builder.Config) {}, func(o *demo.Options) {
		kernelOf := o.Assets
		o.Assets = func(arch, file string) ([]byte, error) {
			if arch == "amd64" && file == "initramfs.xz" {
				return initrd, nil
			}

			return kernelOf(arch, file)
		}
	})
	ctx := context.Background()

	build := func(i int) {
		sc, err := schematic.Parse(fmt.Appendf(nil, "customization: {bootloader: sd-boot, extraKernelArgs: [bench=%d]}", i))
		if err != nil {
			b.Fatal(err)
		}

		canonical, _ := sc.Marshal()
		id := schematic.IDOf(canonical)

		if _, err := e.schemas.Put(ctx, id, canonical); err != nil {
			b.Fatal(err)
		}

		res, err := e.b.Build(ctx, builder.Request{SchematicID: id, Version: "v1.13.0", Path: "metal-amd64.iso"}, nil)
		if err != nil {
			b.Fatal(err)
		}

		if res.CacheHit {
			b.Fatal("a new schematic's ISO was a cache hit")
		}

		n, err := io.Copy(io.Discard, io.NewSectionReader(res.Asset, 0, res.Asset.Size()))
		res.Asset.Close()

		if err != nil || n < int64(len(initrd)) {
			b.Fatalf("ISO of %d bytes: %v", n, err)
		}
	}

	build(-1) // the release's files extracted, as a running kiln has them

	cpu := func() time.Duration {
		var ru syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)

		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}

	b.ResetTimer()

	start := cpu()

	for i := range b.N {
		build(i)
	}

	b.ReportMetric(float64((cpu()-start).Milliseconds())/float64(b.N), "cpu-ms/op")
}
