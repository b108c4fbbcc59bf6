// Package flight runs a piece of work once for all the callers that ask for
// it at the same time, and only while one of them still waits: the build of
// an asset, the extraction of a release's files.
//
// A flight is keyed by what it makes (a plan hash). The first caller starts
// it, later callers join it; each waits on its own context. The work runs
// on a context of its own that keeps the first caller's values (its request
// ID) but none of its cancellation: it ends when the last waiter leaves
// (cause ErrAbandoned), after Config.Timeout, or when Config.Life ends. A
// caller that leaves gets no more events. With Config.MaxRunning, flights
// take a slot to run and the rest queue, at most Config.MaxQueue of them: a
// new flight past that is refused at once with a *FullError, and a queued
// flight whose waiters all left never runs.
//
// The work's result is what it stores (a cache entry); Do returns only its
// error, to every waiter.
package flight

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// ErrAbandoned is the cause of a flight cancelled because every caller
// that waited for it went away.
var ErrAbandoned = errors.New("every request waiting for it went away")

// FullError is a new flight refused because every slot is taken and
// MaxQueue flights already wait for one.
type FullError struct{ Running, Queued int }

func (e *FullError) Error() string {
	return fmt.Sprintf("%d running and %d waiting for a slot", e.Running, e.Queued)
}

// Config tunes a Group.
type Config struct {
	// What names a flight in errors and logs ("build").
	What string
	// MaxRunning caps flights running at once; the rest queue. 0 runs
	// every flight at once.
	MaxRunning int
	// MaxQueue bounds the flights waiting for a slot (with MaxRunning).
	MaxQueue int
	// Timeout bounds one flight; 0 is no bound.
	Timeout time.Duration
	// Life, when set, ends every flight when it ends.
	Life context.Context //nolint:containedctx // the lifetime of every flight, given once
	// Logger receives a DEBUG line for a queued flight cancelled before it
	// started; nil discards it.
	Logger *slog.Logger
}

// Group runs flights of one kind; E is what their work reports as it goes.
type Group[E any] struct {
	cfg Config
	sem chan struct{}

	mu    sync.Mutex
	calls map[string]*call[E]
}

// New returns an empty Group.
func New[E any](cfg Config) *Group[E] {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}

	if cfg.What == "" {
		cfg.What = "flight"
	}

	g := &Group[E]{cfg: cfg, calls: map[string]*call[E]{}}
	if cfg.MaxRunning > 0 {
		g.sem = make(chan struct{}, cfg.MaxRunning)
	}

	return g
}

// call is one flight, shared by every caller of its key.
type call[E any] struct {
	ctx    context.Context //nolint:containedctx // the flight's own context, ended by cancel
	cancel context.CancelCauseFunc
	done   chan struct{}
	err    error // set before done closes

	mu      sync.Mutex
	subs    map[int]func(E)
	nextSub int
	waiters int // guarded by Group.mu
	started atomic.Bool
}

func (c *call[E]) subscribe(f func(E)) int {
	c.mu.Lock()
	defer c.mu.Unlock()

	c.nextSub++
	c.subs[c.nextSub] = f

	return c.nextSub
}

// unsubscribe stops events to a caller that is done or gone (its stream
// is closed: sending to it would fail).
func (c *call[E]) unsubscribe(id int) {
	c.mu.Lock()
	delete(c.subs, id)
	c.mu.Unlock()
}

func (c *call[E]) emit(e E) {
	c.mu.Lock()
	subs := make([]func(E), 0, len(c.subs))

	for _, s := range c.subs {
		subs = append(subs, s)
	}
	c.mu.Unlock()

	for _, s := range subs {
		s(e)
	}
}

// Do runs work as the flight of key, or joins the flight of key already
// under way, and waits until it ends or ctx does. progress (may be nil)
// receives the events of the flight while this caller waits. It returns
// work's error, ctx's error when the caller left first, or a *FullError
// when a new flight finds no room.
func (g *Group[E]) Do(ctx context.Context, key string, progress func(E), work func(ctx context.Context, emit func(E)) error) error {
	if progress == nil {
		progress = func(E) {}
	}

	g.mu.Lock()

	c, joined := g.calls[key]
	if !joined {
		if g.sem != nil && len(g.calls) >= g.cfg.MaxRunning+g.cfg.MaxQueue {
			full := &FullError{Running: g.running()}
			full.Queued = len(g.calls) - full.Running
			g.mu.Unlock()

			return full
		}

		c = g.newCall(ctx)
		g.calls[key] = c
	}

	c.waiters++
	sub := c.subscribe(progress)
	g.mu.Unlock()

	if !joined {
		go g.run(key, c, work)
	}

	select {
	case <-c.done:
		c.unsubscribe(sub)

		return c.err
	case <-ctx.Done():
		c.unsubscribe(sub)
		g.leave(key, c)

		return ctx.Err()
	}
}

// Waiters is how many callers wait for the flight of key.
func (g *Group[E]) Waiters(key string) int {
	g.mu.Lock()
	defer g.mu.Unlock()

	if c, ok := g.calls[key]; ok {
		return c.waiters
	}

	return 0
}

// newCall makes the shared state of a flight; see the package doc for when
// its context ends.
func (g *Group[E]) newCall(callerCtx context.Context) *call[E] {
	ctx, cancel := context.WithCancelCause(context.WithoutCancel(callerCtx))

	cancelTimeout := context.CancelFunc(func() {})
	if g.cfg.Timeout > 0 {
		ctx, cancelTimeout = context.WithTimeout(ctx, g.cfg.Timeout)
	}

	stop := func() bool { return false }
	if g.cfg.Life != nil {
		stop = context.AfterFunc(g.cfg.Life, func() { cancel(g.cfg.Life.Err()) })
	}

	c := &call[E]{ctx: ctx, done: make(chan struct{}), subs: map[int]func(E){}}
	c.cancel = func(cause error) {
		stop()
		cancel(cause)
		cancelTimeout()
	}

	return c
}

// running counts flights holding a slot; g.mu is held.
func (g *Group[E]) running() int {
	n := 0

	for _, c := range g.calls {
		if c.started.Load() {
			n++
		}
	}

	return n
}

// leave is a waiter giving up; the last one cancels the flight and forgets
// it, so that a later caller of the same key starts afresh rather than
// joining a flight that is being torn down.
func (g *Group[E]) leave(key string, c *call[E]) {
	g.mu.Lock()
	defer g.mu.Unlock()

	c.waiters--
	if c.waiters > 0 {
		return
	}

	if g.calls[key] == c {
		delete(g.calls, key)
	}

	c.cancel(ErrAbandoned)
}

// run does the work of key, in a slot when slots are capped, in the
// flight's own context.
func (g *Group[E]) run(key string, c *call[E], work func(context.Context, func(E)) error) {
	defer func() {
		g.mu.Lock()
		if g.calls[key] == c {
			delete(g.calls, key)
		}
		g.mu.Unlock()

		c.cancel(context.Canceled)
		close(c.done)
	}()

	if g.sem != nil {
		select {
		case g.sem <- struct{}{}:
			defer func() { <-g.sem }()
		case <-c.ctx.Done():
		}

		// A slot freed as the flight was cancelled may have won the
		// select: a flight nobody waits for still does not start.
		if c.ctx.Err() != nil {
			c.err = fmt.Errorf("waiting for a %s slot: %w", g.cfg.What, context.Cause(c.ctx))
			g.cfg.Logger.DebugContext(c.ctx, g.cfg.What+" cancelled before it started", "key", key, "cause", context.Cause(c.ctx))

			return
		}
	}

	c.started.Store(true)
	c.err = work(c.ctx, c.emit)
}
