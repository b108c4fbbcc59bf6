package artifacts_test

import (
	"sync"
	"testing"

	"github.com/kiln-dev/kiln/release"
)

// TestPrefetchBootFiles: the boot files of the newest locked version are
// extracted once when a prefetch and builds ask for them at the same time,
// and a build after the prefetch extracts nothing; a version without a
// release lock is not prefetched (prefetching records no lock).
func TestPrefetchBootFiles(t *testing.T) {
	ctx := t.Context()
	f := newPiecesFixture(t, 0)

	if err := f.m.PrefetchBootFiles(ctx, []string{"amd64"}); err != nil {
		t.Fatal(err)
	}

	if n := f.store.creates.Load(); n != 0 {
		t.Fatalf("a prefetch without a release lock wrote %d entries", n)
	}

	if l, err := f.m.Lock("v1.13.0"); err != nil || l != nil {
		t.Fatalf("a prefetch recorded a lock: %v, %v", l, err)
	}

	if _, err := f.m.RecordLock(ctx, "v1.13.0", nil, "test"); err != nil {
		t.Fatal(err)
	}

	boot, err := f.m.BootAssets(ctx, release.MustParseVersion("v1.13.0"), "amd64")
	if err != nil {
		t.Fatal(err)
	}

	var wg sync.WaitGroup

	wg.Go(func() {
		if err := f.m.PrefetchBootFiles(ctx, []string{"amd64"}); err != nil {
			t.Error(err)
		}
	})

	for range 3 {
		wg.Go(func() {
			a, err := boot.Open(ctx, release.InitramfsAsset)
			if err != nil {
				t.Error(err)

				return
			}

			a.Close()
		})
	}

	wg.Wait()

	if n := f.store.creates.Load(); n != 4 {
		t.Fatalf("a prefetch and 3 builds at once wrote %d entries, want the 4 boot files once", n)
	}

	for _, file := range []string{release.KernelAsset, release.SDBootAsset, release.SDStubAsset} {
		readBoot(t, boot, file)
	}

	if err := f.m.PrefetchBootFiles(ctx, []string{"amd64", "arm64"}); err != nil {
		t.Fatal(err)
	}

	if n := f.store.creates.Load(); n != 8 {
		t.Fatalf("after a prefetch of amd64 and arm64, %d entries written in all, want the 4 of each once", n)
	}
}
