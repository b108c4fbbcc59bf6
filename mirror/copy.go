package mirror

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sync/errgroup"

	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/signing"
)

// Options of Copy.
type Options struct {
	// Verifier checks every image of the plan before anything is written,
	// reading the signatures from the source (a layout or archive is
	// served to it on a loopback port). Nil turns verification off (logged
	// as a warning).
	Verifier signing.Checker
	// HasRule, when set, reports whether a trust-policy rule names a
	// repository (as the Verifier reads it). An image listed by hand
	// (KindImage) that no rule names is copied without verification and
	// reported (EventUnverified, Stats.Unverified); one a rule names is
	// verified like any other, and its refusal stops the copy. Without
	// HasRule every image is verified.
	HasRule func(name.Repository) bool
	// Jobs is how many blobs are copied at once; 4 when zero.
	Jobs int
	// Progress, when set, receives events, one at a time.
	Progress func(Event)
	// Logger receives warnings and debug lines; nil discards them.
	Logger *slog.Logger
	// DryRun verifies and checks what the destination has, and writes nothing.
	DryRun bool
	// TrustedRoot, when set, is written to the destination (see
	// ReadTrustedRoot) after the images, replacing the one it has.
	TrustedRoot *TrustedRoot
}

// Stats count what a Copy did (or, for a dry run, would do).
type Stats struct {
	Items                     int
	Verified                  int
	Unverified                int // images no trust-policy rule names (Options.HasRule)
	BlobsCopied, BlobsSkipped int
	BytesCopied, BytesSkipped int64
	ManifestsWritten          int
	TagsWritten               int
}

// EventKind tells what an Event reports.
type EventKind int

// Event kinds.
const (
	EventVerified EventKind = iota // an item's signature was verified
	EventBytes                     // bytes of a blob were copied
	EventBlob                      // a blob is done (copied or skipped)
	EventItem                      // an item's manifests are written
	EventDone                      // Copy finished
	// EventUnverified: an image no trust-policy rule names is copied
	// without verification (Options.HasRule).
	EventUnverified
)

// Event is progress of a Copy.
type Event struct {
	Kind EventKind
	Item *Item // nil for EventBytes/EventBlob/EventDone
	Repo string
	Blob v1.Descriptor
	// Skipped: the destination had the blob.
	Skipped bool
	// Done and Total are the bytes of blobs copied or skipped so far, and of the whole plan.
	Done, Total int64
	// BlobsDone and Blobs count blobs likewise.
	BlobsDone, Blobs int
	Stats            Stats // EventDone only
}

type blobJob struct {
	repo string
	desc v1.Descriptor
}

// Copy copies plan to dst: it verifies every image (Options.Verifier),
// then copies blobs, skipping those dst has; then manifests, each after
// its blobs and children, referrers after their subjects; then tags; then
// commits. Cancelled or failed, it leaves no tag or index entry pointing at
// missing content, and running it again copies only what is missing.
func Copy(ctx context.Context, plan *Plan, dst Endpoint, opts Options) (Stats, error) {
	c := &copier{plan: plan, opts: opts, log: opts.Logger}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}

	if opts.Jobs <= 0 {
		c.opts.Jobs = 4
	}

	st, err := c.run(ctx, dst)

	return st, err
}

type copier struct {
	plan *Plan
	opts Options
	log  *slog.Logger
	src  source
	dst  destination

	evMu      sync.Mutex
	done      atomic.Int64
	total     int64
	blobsDone atomic.Int64
	blobs     int

	stats struct {
		blobsCopied, blobsSkipped, bytesCopied, bytesSkipped, manifests, tags, verified, unverified atomic.Int64
	}
}

func (c *copier) emit(e Event) {
	if c.opts.Progress == nil {
		return
	}

	c.evMu.Lock()
	defer c.evMu.Unlock()

	e.Done, e.Total = c.done.Load(), c.total
	e.BlobsDone, e.Blobs = int(c.blobsDone.Load()), c.blobs
	c.opts.Progress(e)
}

func (c *copier) snapshot() Stats {
	return Stats{
		Items:            len(c.plan.Items),
		Verified:         int(c.stats.verified.Load()),
		Unverified:       int(c.stats.unverified.Load()),
		BlobsCopied:      int(c.stats.blobsCopied.Load()),
		BlobsSkipped:     int(c.stats.blobsSkipped.Load()),
		BytesCopied:      c.stats.bytesCopied.Load(),
		BytesSkipped:     c.stats.bytesSkipped.Load(),
		ManifestsWritten: int(c.stats.manifests.Load()),
		TagsWritten:      int(c.stats.tags.Load()),
	}
}

func (c *copier) run(ctx context.Context, dst Endpoint) (Stats, error) {
	src, err := c.plan.Source.openSource(ctx)
	if err != nil {
		return Stats{}, err
	}
	defer src.Close()

	c.src = src

	if err := c.verify(ctx); err != nil {
		return c.snapshot(), err
	}

	d, err := dst.openDestination(ctx)
	if err != nil {
		return c.snapshot(), err
	}
	defer d.Close()

	c.dst = d

	// 1. Blobs, in parallel.
	var jobs []blobJob

	seen := map[string]bool{}

	for _, it := range c.plan.Items {
		for _, b := range it.Blobs {
			if k := it.Repo + "@" + b.Digest.String(); !seen[k] {
				seen[k] = true
				jobs = append(jobs, blobJob{repo: it.Repo, desc: b})
				c.total += b.Size
			}
		}
	}

	c.blobs = len(jobs)

	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(c.opts.Jobs)

	for _, j := range jobs {
		if gctx.Err() != nil {
			break
		}

		g.Go(func() error { return c.copyBlob(gctx, j) })
	}

	if err := g.Wait(); err != nil {
		return c.snapshot(), err
	}

	if err := ctx.Err(); err != nil {
		return c.snapshot(), err
	}

	// 2. Manifests by digest: images, then signatures (subjects first).
	// Signatures of one subject go one after the other: on a registry
	// without the referrers API, each referrer push rewrites the subject's
	// fallback tag (read, append, write), and two at once lose one.
	for _, sigs := range []bool{false, true} {
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(c.opts.Jobs)

		var (
			groups [][]*Item
			group  = map[string]int{}
		)

		for _, it := range c.plan.Items {
			if (it.Kind == KindSignature) != sigs {
				continue
			}

			key := it.Repo + "@" + it.Digest.String()
			if it.Subject != nil {
				key = it.Repo + "@" + it.Subject.String()
			}

			i, ok := group[key]
			if !ok {
				i = len(groups)
				group[key] = i
				groups = append(groups, nil)
			}

			groups[i] = append(groups[i], it)
		}

		for _, items := range groups {
			g.Go(func() error {
				for _, it := range items {
					if err := c.manifests(gctx, it); err != nil {
						return err
					}
				}

				return nil
			})
		}

		if err := g.Wait(); err != nil {
			return c.snapshot(), err
		}
	}

	// 3. Tags, images first, then .sig/.att.
	for _, sigs := range []bool{false, true} {
		for _, it := range c.plan.Items {
			if (it.Kind == KindSignature) != sigs {
				continue
			}

			for _, t := range it.Tags {
				if err := c.putManifest(ctx, it.Repo, it.root(), t, true); err != nil {
					return c.snapshot(), err
				}
			}
		}
	}

	// 4. The Sigstore trusted root, then commit (layout index.json, archive rename).
	if c.opts.TrustedRoot != nil && !c.opts.DryRun {
		wrote, err := writeTrustedRoot(ctx, c.dst, c.opts.TrustedRoot)
		if err != nil {
			return c.snapshot(), err
		}

		c.log.Debug("Sigstore trusted root", "written", wrote)
	}

	if !c.opts.DryRun {
		if err := c.dst.commit(ctx); err != nil {
			return c.snapshot(), fmt.Errorf("commit %s: %w", dst, err)
		}
	}

	st := c.snapshot()
	c.emit(Event{Kind: EventDone, Stats: st})

	return st, nil
}

func (c *copier) verify(ctx context.Context) error {
	if c.opts.Verifier == nil {
		c.log.Warn("signature verification is OFF: images are copied without checking their signatures")

		return nil
	}

	refs, err := newVerifyRefs(ctx, c.plan, c.src)
	if err != nil {
		return err
	}
	defer refs.close()

	for _, it := range c.plan.Items {
		if !it.Verify() {
			continue
		}

		ref := refs.reference(it)

		if it.Kind == KindImage && c.opts.HasRule != nil && !c.governed(it, ref) {
			c.stats.unverified.Add(1)
			c.log.Warn("no trust-policy rule names the image: copied without verification", "image", it.String())
			c.emit(Event{Kind: EventUnverified, Item: it, Repo: it.Repo})

			continue
		}

		vctx, err := it.verifyContext(ctx)
		if err != nil {
			return &VerifyError{Item: it, Err: err}
		}

		if _, err := c.opts.Verifier.Verify(vctx, ref); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}

			return &VerifyError{Item: it, Err: err}
		}

		c.stats.verified.Add(1)
		c.log.Debug("verified", "image", it.String())
		c.emit(Event{Kind: EventVerified, Item: it, Repo: it.Repo})
	}

	return nil
}

// governed reports whether a rule names the image, as the verifier reads
// it or by its upstream name: a rule written for ghcr.io/acme/app, which
// a mirror holds as acme/app, must not let the copy pass unverified (the
// verifier, matching the mirror's name, then refuses it, naming it).
func (c *copier) governed(it *Item, ref name.Digest) bool {
	if c.opts.HasRule(ref.Context()) {
		return true
	}

	up, err := release.UpstreamRepo(it.Repo)

	return err == nil && c.opts.HasRule(up)
}

func (c *copier) copyBlob(ctx context.Context, j blobJob) error {
	has, err := c.dst.hasBlob(ctx, j.repo, j.desc.Digest)
	if err != nil {
		return err
	}

	if has {
		c.stats.blobsSkipped.Add(1)
		c.stats.bytesSkipped.Add(j.desc.Size)
		c.done.Add(j.desc.Size)
		c.blobsDone.Add(1)
		c.emit(Event{Kind: EventBlob, Repo: j.repo, Blob: j.desc, Skipped: true})

		return nil
	}

	if c.opts.DryRun {
		c.stats.blobsCopied.Add(1)
		c.stats.bytesCopied.Add(j.desc.Size)
		c.done.Add(j.desc.Size)
		c.blobsDone.Add(1)
		c.emit(Event{Kind: EventBlob, Repo: j.repo, Blob: j.desc})

		return nil
	}

	var counted atomic.Int64 // bytes of this blob added to c.done, reset on retry

	open := func() (io.ReadCloser, error) {
		c.done.Add(-counted.Swap(0))

		rc, err := c.src.blob(ctx, j.repo, j.desc.Digest)
		if err != nil {
			return nil, err
		}

		return &countingReader{rc: rc, ctx: ctx, onRead: func(n int) {
			counted.Add(int64(n))
			c.done.Add(int64(n))
			c.emit(Event{Kind: EventBytes, Repo: j.repo, Blob: j.desc})
		}}, nil
	}

	if err := c.dst.putBlob(ctx, j.repo, j.desc, open); err != nil {
		if ctx.Err() != nil {
			return errors.Join(ctx.Err(), err)
		}

		return err
	}

	c.done.Add(j.desc.Size - counted.Load()) // e.g. a blob mounted instead of read
	c.stats.blobsCopied.Add(1)
	c.stats.bytesCopied.Add(j.desc.Size)
	c.blobsDone.Add(1)
	c.emit(Event{Kind: EventBlob, Repo: j.repo, Blob: j.desc})

	return nil
}

// manifests writes an item's children then its root, by digest.
func (c *copier) manifests(ctx context.Context, it *Item) error {
	for i, m := range it.manifests {
		if err := c.putManifest(ctx, it.Repo, m, "", i == len(it.manifests)-1); err != nil {
			if it.Partial && i == len(it.manifests)-1 {
				return fmt.Errorf("%w (only the %s children of this index were selected; this destination "+
					"refuses an index with missing children: mirror every architecture, or allow partial "+
					"indexes, e.g. distribution v3 validation.manifests.indexes.platforms)", err, it.Platforms)
			}

			return err
		}
	}

	c.emit(Event{Kind: EventItem, Item: it, Repo: it.Repo})

	return nil
}

func (c *copier) putManifest(ctx context.Context, repo string, m manifestData, tag string, root bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}

	if c.opts.DryRun {
		has, err := c.dst.hasManifest(ctx, repo, m.Digest)
		if err != nil {
			return err
		}

		if !has && tag == "" {
			c.stats.manifests.Add(1)
		}

		if tag != "" {
			c.stats.tags.Add(1) // without reading the tag: an upper bound
		}

		return nil
	}

	wrote, err := c.dst.putManifest(ctx, repo, m, tag, root)
	if err != nil {
		return err
	}

	if wrote && tag == "" {
		c.stats.manifests.Add(1)
	}

	if wrote && tag != "" {
		c.stats.tags.Add(1)
	}

	return nil
}

// countingReader reports reads in chunks of at least 1 MiB and at EOF.
type countingReader struct {
	rc      io.ReadCloser
	ctx     context.Context
	onRead  func(int)
	pending int
}

func (r *countingReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}

	n, err := r.rc.Read(p)
	r.pending += n

	if r.pending >= copyBufSize || (err != nil && r.pending > 0) {
		r.onRead(r.pending)
		r.pending = 0
	}

	return n, err
}

func (r *countingReader) Close() error {
	if r.pending > 0 {
		r.onRead(r.pending)
		r.pending = 0
	}

	return r.rc.Close()
}
