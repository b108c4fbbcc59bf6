package flight_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/flight"
)

// waitFor polls cond (a flight's state changes on other goroutines).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()

	for range 1000 {
		if cond() {
			return
		}

		time.Sleep(5 * time.Millisecond)
	}

	t.Fatalf("timed out waiting for %s", what)
}

// TestJoin: callers of one key at the same time share one run of the work,
// each gets its error and its events.
func TestJoin(t *testing.T) {
	g := flight.New[int](flight.Config{})

	var runs atomic.Int32

	release := make(chan struct{})
	boom := errors.New("boom")

	const callers = 8

	var wg sync.WaitGroup

	errs := make([]error, callers)
	events := make([]atomic.Int32, callers)

	for i := range callers {
		wg.Go(func() {
			errs[i] = g.Do(t.Context(), "k", func(int) { events[i].Add(1) }, func(_ context.Context, emit func(int)) error {
				runs.Add(1)
				<-release
				emit(1)

				return boom
			})
		})
	}

	waitFor(t, "every caller to join", func() bool { return g.Waiters("k") == callers })
	close(release)
	wg.Wait()

	if runs.Load() != 1 {
		t.Errorf("work ran %d times, want once", runs.Load())
	}

	for i := range callers {
		if !errors.Is(errs[i], boom) {
			t.Errorf("caller %d: %v, want the work's error", i, errs[i])
		}

		if events[i].Load() != 1 {
			t.Errorf("caller %d got %d events, want 1", i, events[i].Load())
		}
	}

	if g.Waiters("k") != 0 {
		t.Errorf("%d waiters after the flight ended", g.Waiters("k"))
	}
}

// TestAbandoned: the work is cancelled (cause ErrAbandoned) when its last
// waiter leaves, not before; a later caller starts afresh.
func TestAbandoned(t *testing.T) {
	g := flight.New[struct{}](flight.Config{})

	started := make(chan struct{})
	cause := make(chan error, 1)

	work := func(ctx context.Context, _ func(struct{})) error {
		close(started)
		<-ctx.Done()
		cause <- context.Cause(ctx)

		return ctx.Err()
	}

	ctx1, cancel1 := context.WithCancel(t.Context())
	ctx2, cancel2 := context.WithCancel(t.Context())

	done1 := make(chan error, 1)
	done2 := make(chan error, 1)

	go func() { done1 <- g.Do(ctx1, "k", nil, work) }()

	<-started

	go func() {
		done2 <- g.Do(ctx2, "k", nil, func(context.Context, func(struct{})) error {
			t.Error("a joining caller's work ran")
			return nil
		})
	}()

	waitFor(t, "the second caller to join", func() bool { return g.Waiters("k") == 2 })

	cancel1()

	if err := <-done1; !errors.Is(err, context.Canceled) {
		t.Errorf("first caller: %v, want its context's error", err)
	}

	select {
	case c := <-cause:
		t.Fatalf("work cancelled (%v) while a caller still waits", c)
	case <-time.After(50 * time.Millisecond):
	}

	cancel2()

	if err := <-done2; !errors.Is(err, context.Canceled) {
		t.Errorf("second caller: %v, want its context's error", err)
	}

	if c := <-cause; !errors.Is(c, flight.ErrAbandoned) {
		t.Errorf("work cancelled with cause %v, want ErrAbandoned", c)
	}

	if err := g.Do(t.Context(), "k", nil, func(context.Context, func(struct{})) error { return nil }); err != nil {
		t.Errorf("a new flight of an abandoned key: %v", err)
	}
}

// TestQueueBound: with one slot and a queue of one, a third flight is
// refused at once with a FullError; a queued flight whose caller left
// never runs.
func TestQueueBound(t *testing.T) {
	g := flight.New[struct{}](flight.Config{What: "build", MaxRunning: 1, MaxQueue: 1})

	release := make(chan struct{})
	running := make(chan struct{})

	go g.Do(t.Context(), "a", nil, func(context.Context, func(struct{})) error { //nolint:errcheck // only holds the slot
		close(running)
		<-release

		return nil
	})

	<-running

	queuedCtx, leave := context.WithCancel(t.Context())
	queued := make(chan error, 1)

	var queuedRan atomic.Bool

	go func() {
		queued <- g.Do(queuedCtx, "b", nil, func(context.Context, func(struct{})) error {
			queuedRan.Store(true)
			return nil
		})
	}()

	waitFor(t, "the second flight to queue", func() bool { return g.Waiters("b") == 1 })

	err := g.Do(t.Context(), "c", nil, func(context.Context, func(struct{})) error {
		t.Error("a flight past the queue bound ran")
		return nil
	})

	var full *flight.FullError
	if !errors.As(err, &full) || full.Running != 1 || full.Queued != 1 {
		t.Fatalf("third flight: %v, want a FullError of 1 running and 1 queued", err)
	}

	leave()

	if err := <-queued; !errors.Is(err, context.Canceled) {
		t.Errorf("queued caller that left: %v", err)
	}

	close(release)

	// The slot is free again: a new flight runs.
	if err := g.Do(t.Context(), "d", nil, func(context.Context, func(struct{})) error { return nil }); err != nil {
		t.Errorf("flight after the slot freed: %v", err)
	}

	if queuedRan.Load() {
		t.Error("a queued flight whose caller left ran")
	}
}

// TestTimeoutAndLife: a flight ends at Config.Timeout, and with
// Config.Life.
func TestTimeoutAndLife(t *testing.T) {
	g := flight.New[struct{}](flight.Config{Timeout: 20 * time.Millisecond})

	err := g.Do(t.Context(), "k", nil, func(ctx context.Context, _ func(struct{})) error {
		<-ctx.Done()
		return ctx.Err()
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("flight past its timeout: %v, want DeadlineExceeded", err)
	}

	life, end := context.WithCancel(t.Context())
	g = flight.New[struct{}](flight.Config{Life: life})

	started := make(chan struct{})
	done := make(chan error, 1)

	go func() {
		done <- g.Do(t.Context(), "k", nil, func(ctx context.Context, _ func(struct{})) error {
			close(started)
			<-ctx.Done()

			return context.Cause(ctx)
		})
	}()

	<-started
	end()

	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("flight when its Life ended: %v, want Canceled", err)
	}
}
