package builder

import "context"

// Builds is how many assemblies ran.
func (b *Builder) Builds() int64 { return b.builds.Load() }

// RunShared runs work as the build of key, shared by every concurrent
// caller, as Build and ImageCache run theirs; progress receives its events.
func (b *Builder) RunShared(ctx context.Context, key string, progress func(Event), work func(ctx context.Context, emit func(Event)) error) error {
	if progress == nil {
		progress = func(Event) {}
	}

	a, _, err := b.cached(ctx, key, progress, work)
	if a != nil {
		a.Close()
	}

	return err
}

// Waiters is how many requests wait for the in-flight build of key.
func (b *Builder) Waiters(key string) int { return b.flights.Waiters(key) }
