package builder_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/kiln-dev/kiln/builder"
)

// An asset whose bytes change on disk after it was built (and trusted by
// this process) is not served: the next request rebuilds it.
func TestCachedAssetChangedOnDiskIsRebuilt(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	req := builder.Request{SchematicID: e.emptyID, Version: "v1.13.0", Path: "kernel-amd64"}

	res, err := e.b.Build(ctx, req, nil)
	if err != nil {
		t.Fatal(err)
	}

	key, etag := res.Plan.Key(), res.Asset.ETag()
	res.Asset.Close()

	p := filepath.Join(e.dir, "assets", key[:2], key)

	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}

	if _, err := f.WriteAt([]byte{e.kernel[1000] ^ 0x80}, 1000); err != nil {
		t.Fatal(err)
	}

	f.Close()

	res, err = e.b.Build(ctx, req, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Asset.Close()

	got, _ := io.ReadAll(res.Asset)
	if res.CacheHit || e.b.Builds() != 2 || !bytes.Equal(got, e.kernel) || res.Asset.ETag() != etag {
		t.Fatalf("after a byte changed on disk: cache hit %v, builds %d, content intact %v, digest %s (built as %s)",
			res.CacheHit, e.b.Builds(), bytes.Equal(got, e.kernel), res.Asset.ETag(), etag)
	}
}
