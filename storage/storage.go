package storage

import (
	"context"
	"errors"
	"syscall"
)

// ErrNotFound is returned for content that is not stored.
var ErrNotFound = errors.New("not found")

// ErrCorrupt is returned for stored content that no longer matches its key.
var ErrCorrupt = errors.New("stored content does not match its key")

// IsNoSpace reports whether err is a write refused because the file system
// is full (or a quota is reached): the server answers it with 507, not 500.
func IsNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// Schematics stores canonical schematics under their IDs.
//
// Keys are 64-character lower-case hex IDs, the sha256 of the content;
// implementations may rely on callers passing only such keys. Content is
// small (a schematic is at most a few hundred KiB with an embedded config).
type Schematics interface {
	// Put stores content under id. It is idempotent: storing an ID that is
	// already present keeps the first copy and reports created == false.
	// Content is visible to Get only once complete; concurrent Puts of one ID
	// are safe and exactly one of them reports created.
	Put(ctx context.Context, id string, content []byte) (created bool, err error)
	// Get returns the content stored under id, ErrNotFound if there is none,
	// or ErrCorrupt if what is stored no longer hashes to id.
	Get(ctx context.Context, id string) ([]byte, error)
	// List returns up to limit stored IDs greater than after, ascending.
	List(ctx context.Context, after string, limit int) ([]string, error)
}
