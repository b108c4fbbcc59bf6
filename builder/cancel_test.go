package builder_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/builder"
	"github.com/kiln-dev/kiln/storage"
)

// blockingWork is a build that runs until its context ends or release is
// closed, then commits an asset (when released) so waiters can open it.
type blockingWork struct {
	assets   storage.Assets
	key      string
	started  chan struct{}
	release  chan struct{}
	canceled chan error
}

func newBlockingWork(assets storage.Assets, key string) *blockingWork {
	return &blockingWork{assets: assets, key: key, started: make(chan struct{}), release: make(chan struct{}), canceled: make(chan error, 1)}
}

func (w *blockingWork) run(ctx context.Context, emit func(builder.Event)) error {
	close(w.started)

	select {
	case <-ctx.Done():
		w.canceled <- context.Cause(ctx)

		return ctx.Err()
	case <-w.release:
	}

	emit(builder.Event{Phase: "assemble", Message: "done"})

	aw, err := w.assets.Create(ctx, w.key)
	if err != nil {
		return err
	}

	if _, err := aw.Write([]byte("asset")); err != nil {
		return err
	}

	return aw.Commit()
}

func waitFor(t *testing.T, what string, c <-chan struct{}) {
	t.Helper()

	select {
	case <-c:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// The last waiter leaving cancels the build: an abandoned request must not
// keep a build slot busy.
func TestAbandonedBuildIsCancelled(t *testing.T) {
	e := newEnv(t)
	w := newBlockingWork(e.assets, "abandoned-build-1")

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)

	go func() { errc <- e.b.RunShared(ctx, w.key, nil, w.run) }()

	waitFor(t, "the build to start", w.started)
	cancel()

	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("waiter error = %v, want context.Canceled", err)
	}

	select {
	case cause := <-w.canceled:
		if cause == nil {
			t.Fatal("build context ended without a cause")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the build kept running after its only waiter left")
	}

	// The slot is free again and the key builds afresh.
	again := newBlockingWork(e.assets, w.key)
	close(again.release)

	if err := e.b.RunShared(context.Background(), again.key, nil, again.run); err != nil {
		t.Fatalf("build after the abandoned one: %v", err)
	}
}

// A second waiter keeps the build alive when the first leaves, and both
// builds of one key stay one build.
func TestSecondWaiterKeepsBuild(t *testing.T) {
	e := newEnv(t)
	w := newBlockingWork(e.assets, "shared-build-1")

	first, cancelFirst := context.WithCancel(context.Background())
	firstErr := make(chan error, 1)

	go func() { firstErr <- e.b.RunShared(first, w.key, nil, w.run) }()

	waitFor(t, "the build to start", w.started)

	events := make(chan builder.Event, 8)
	secondErr := make(chan error, 1)

	go func() {
		secondErr <- e.b.RunShared(context.Background(), w.key, func(ev builder.Event) { events <- ev }, func(context.Context, func(builder.Event)) error {
			t.Error("a second build of the same key ran")

			return nil
		})
	}()

	// Let the second waiter join before the first leaves.
	for range 100 {
		if e.b.Waiters(w.key) == 2 {
			break
		}

		time.Sleep(10 * time.Millisecond)
	}

	if n := e.b.Waiters(w.key); n != 2 {
		t.Fatalf("%d waiters, want 2", n)
	}

	cancelFirst()

	if err := <-firstErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("first waiter: %v", err)
	}

	select {
	case cause := <-w.canceled:
		t.Fatalf("build cancelled (%v) while a waiter remained", cause)
	case <-time.After(200 * time.Millisecond):
	}

	close(w.release)

	if err := <-secondErr; err != nil {
		t.Fatalf("second waiter: %v", err)
	}

	if ev := <-events; ev.Message != "done" {
		t.Fatalf("second waiter's event = %+v", ev)
	}
}

// Past the slots and the queue, a new build is refused at once with a
// BusyError; a queued build whose waiters leave never runs.
func TestBuildQueueBound(t *testing.T) {
	e := newEnvWith(t, func(c *builder.Config) { c.MaxConcurrency = 1; c.MaxQueue = 1 })

	running := newBlockingWork(e.assets, "queue-running-1")
	ctxA, cancelA := context.WithCancel(context.Background())
	errA := make(chan error, 1)

	go func() { errA <- e.b.RunShared(ctxA, running.key, nil, running.run) }()

	waitFor(t, "the first build to start", running.started)

	queued := newBlockingWork(e.assets, "queue-waiting-1")
	ctxB, cancelB := context.WithCancel(context.Background())
	errB := make(chan error, 1)

	go func() { errB <- e.b.RunShared(ctxB, queued.key, nil, queued.run) }()

	for range 100 {
		if e.b.Waiters(queued.key) == 1 {
			break
		}

		time.Sleep(10 * time.Millisecond)
	}

	refused := newBlockingWork(e.assets, "queue-refused-1")
	err := e.b.RunShared(context.Background(), refused.key, nil, refused.run)

	var busy *builder.BusyError
	if !errors.As(err, &busy) || !errors.Is(err, builder.ErrBusy) || busy.Running != 1 || busy.Queued != 1 || busy.RetryAfter <= 0 {
		t.Fatalf("third build: %v (%+v), want a BusyError with 1 running and 1 queued", err, busy)
	}

	// The queued build's only waiter leaves: it must never start.
	cancelB()

	if err := <-errB; !errors.Is(err, context.Canceled) {
		t.Fatalf("queued waiter: %v", err)
	}

	cancelA()
	<-errA

	select {
	case <-queued.started:
		t.Fatal("a queued build whose waiters left started anyway")
	case <-time.After(200 * time.Millisecond):
	}

	// With the slot and the queue free, new builds are accepted again.
	next := newBlockingWork(e.assets, "queue-next-1")
	close(next.release)

	if err := e.b.RunShared(context.Background(), next.key, nil, next.run); err != nil {
		t.Fatalf("build after the queue drained: %v", err)
	}
}

// Scratch directories a killed build left are removed when the next
// builder starts, and so are the imager files older kilns extracted under
// <data>/artifacts, outside the bounded asset store where they now live.
func TestScratchCleanedAtStart(t *testing.T) {
	dir := t.TempDir()

	left := []string{
		filepath.Join(dir, "tmp", "build-123", "initramfs"),
		filepath.Join(dir, "tmp", "imagecache-456", "cache", "blob"),
		filepath.Join(dir, "artifacts", "imager", "abc.tmp", "amd64", "vmlinuz"),
	}

	for _, f := range left {
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			t.Fatal(err)
		}

		if err := os.WriteFile(f, []byte("half"), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	legacy := filepath.Join(dir, "artifacts", "imager", "abc", "amd64", "vmlinuz")
	if err := os.MkdirAll(filepath.Dir(legacy), 0o755); err != nil {
		t.Fatal(err)
	}

	if err := os.WriteFile(legacy, []byte("whole"), 0o644); err != nil {
		t.Fatal(err)
	}

	e := newEnvWith(t, func(c *builder.Config) { c.DataDir = dir })
	_ = e

	for _, f := range left {
		if _, err := os.Stat(filepath.Dir(f)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s survived the start: %v", filepath.Dir(f), err)
		}
	}

	if _, err := os.Stat(filepath.Join(dir, "artifacts")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("an older kiln's extraction survived the start: %v", err)
	}
}
