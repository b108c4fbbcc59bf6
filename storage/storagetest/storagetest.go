// Package storagetest is the conformance suite every storage implementation
// runs, so that swapping one for another cannot change behaviour.
package storagetest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/kiln-dev/kiln/storage"
)

// content returns a payload and its ID.
func content(i int) (string, []byte) {
	data := fmt.Appendf(nil, "customization:\n    extraKernelArgs:\n        - n%d\n", i)
	sum := sha256.Sum256(data)

	return hex.EncodeToString(sum[:]), data
}

// Schematics runs the suite against stores made by newStore; each call must
// return an empty store.
func Schematics(t *testing.T, newStore func(t *testing.T) storage.Schematics) {
	ctx := context.Background()

	t.Run("missing", func(t *testing.T) {
		s := newStore(t)
		id, _ := content(0)

		if _, err := s.Get(ctx, id); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("Get(missing) error = %v, want ErrNotFound", err)
		}
	})

	t.Run("put get", func(t *testing.T) {
		s := newStore(t)
		id, data := content(1)

		created, err := s.Put(ctx, id, data)
		if err != nil || !created {
			t.Fatalf("Put() = %v, %v, want true, nil", created, err)
		}

		got, err := s.Get(ctx, id)
		if err != nil || string(got) != string(data) {
			t.Fatalf("Get() = %q, %v, want %q", got, err, data)
		}
	})

	t.Run("idempotent", func(t *testing.T) {
		s := newStore(t)
		id, data := content(2)

		if _, err := s.Put(ctx, id, data); err != nil {
			t.Fatal(err)
		}

		created, err := s.Put(ctx, id, data)
		if err != nil || created {
			t.Fatalf("second Put() = %v, %v, want false, nil", created, err)
		}
	})

	t.Run("concurrent puts of one id", func(t *testing.T) {
		s := newStore(t)
		id, data := content(3)

		var (
			wg      sync.WaitGroup
			creates atomic.Int32
			errs    = make(chan error, 32)
		)

		for range 32 {
			wg.Go(func() {
				created, err := s.Put(ctx, id, data)
				if err != nil {
					errs <- err
				}

				if created {
					creates.Add(1)
				}
			})
		}

		wg.Wait()
		close(errs)

		for err := range errs {
			t.Errorf("concurrent Put: %v", err)
		}

		if n := creates.Load(); n != 1 {
			t.Errorf("%d Puts reported created, want exactly 1", n)
		}

		if got, err := s.Get(ctx, id); err != nil || string(got) != string(data) {
			t.Fatalf("Get() = %q, %v, want %q", got, err, data)
		}
	})

	t.Run("list pages", func(t *testing.T) {
		s := newStore(t)

		var want []string

		for i := range 25 {
			id, data := content(100 + i)
			want = append(want, id)

			if _, err := s.Put(ctx, id, data); err != nil {
				t.Fatal(err)
			}
		}

		slices.Sort(want)

		var got []string

		after := ""

		for {
			page, err := s.List(ctx, after, 7)
			if err != nil {
				t.Fatal(err)
			}

			if len(page) > 7 {
				t.Fatalf("List(limit 7) returned %d", len(page))
			}

			got = append(got, page...)

			if len(page) < 7 {
				break
			}

			after = page[len(page)-1]
		}

		if !slices.Equal(got, want) {
			t.Fatalf("List pages = %v, want %v", got, want)
		}
	})

	t.Run("cancelled context", func(t *testing.T) {
		s := newStore(t)
		id, data := content(4)

		cctx, cancel := context.WithCancel(ctx)
		cancel()

		if _, err := s.Put(cctx, id, data); !errors.Is(err, context.Canceled) {
			t.Fatalf("Put(cancelled) error = %v, want context.Canceled", err)
		}
	})
}
