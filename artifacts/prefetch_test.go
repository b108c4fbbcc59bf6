package artifacts_test

import (
	"context"
	"io/fs"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/kiln-dev/kiln/artifacts"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/signing"
	"github.com/kiln-dev/kiln/storage"
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

// gatedStore holds the first Create of a key with the suffix until
// released, telling when it got there.
type gatedStore struct {
	*countingStore
	suffix  string
	reached chan struct{}
	release chan struct{}
	once    sync.Once
}

func (s *gatedStore) Create(ctx context.Context, key string) (storage.AssetWriter, error) {
	if strings.HasSuffix(key, s.suffix) {
		s.once.Do(func() {
			close(s.reached)
			<-s.release
		})
	}

	return s.countingStore.Create(ctx, key)
}

// TestGrubWalkTakesBootFiles: a build that opens a boot file while a GRUB
// walk of its architecture runs waits for that walk, which takes the boot
// files too, rather than reading the imager a second time.
func TestGrubWalkTakesBootFiles(t *testing.T) {
	ctx := t.Context()
	f := newPiecesFixtureWith(t, 0, func(platform string) (fs.FS, error) {
		if platform != release.GrubPC {
			return nil, fs.ErrNotExist
		}

		return fstest.MapFS{"normal.mod": {Data: []byte("mod")}}, nil
	})

	gate := &gatedStore{countingStore: f.store, suffix: "-grub-" + release.GrubPC, reached: make(chan struct{}), release: make(chan struct{})}
	m := artifacts.NewManager(artifacts.Deps{Source: f.m.Source(), Checker: signing.CheckFunc(f.v.check), Store: gate}, artifacts.Config{})

	boot, err := m.BootAssets(ctx, release.MustParseVersion("v1.13.0"), "amd64")
	if err != nil {
		t.Fatal(err)
	}

	var wg sync.WaitGroup

	wg.Go(func() {
		if err := boot.CheckGrub(ctx, release.GrubPC); err != nil {
			t.Error(err)
		}
	})

	<-gate.reached

	wg.Go(func() {
		readBoot(t, boot, release.KernelAsset)
	})

	// Let the kernel's Open find the walk running before it goes on.
	time.Sleep(100 * time.Millisecond)
	close(gate.release)
	wg.Wait()

	if n := f.store.creates.Load(); n != 5 {
		t.Fatalf("a GRUB walk and a kernel opened meanwhile wrote %d entries, want the i386-pc tree and the 4 boot files once", n)
	}
}
