package mirror

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// Renderer draws Copy's progress: a bar redrawn in place when w is a
// terminal, plain lines otherwise (one per item and a summary every 10 s
// at most). Use its Event method as Options.Progress.
type Renderer struct {
	w io.Writer
	// Width is the terminal width for the bar; 80 by default.
	Width int
	tty   bool
	now   func() time.Time
	last  time.Time
	drawn bool
}

// NewRenderer renders to w; it detects a terminal when w is an *os.File.
func NewRenderer(w io.Writer) *Renderer {
	r := &Renderer{w: w, Width: 80, now: time.Now}

	// A character device is a terminal for our purpose (golang.org/x/term
	// is not in go.sum; /dev/null is also a character device, which only
	// costs a few escape sequences nobody sees).
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			r.tty = true
		}
	}

	return r
}

// Event renders one event.
func (r *Renderer) Event(e Event) {
	if e.Kind == EventUnverified {
		// Never only in the bar: the user must see it afterwards.
		if r.tty && r.drawn {
			fmt.Fprint(r.w, "\r\033[K")
		}

		fmt.Fprintf(r.w, "NOT verified %s: no trust-policy rule names %s; copied unverified\n", e.Item, e.Item.Repo)

		return
	}

	if r.tty {
		r.bar(e)
		return
	}

	switch e.Kind {
	case EventVerified:
		fmt.Fprintf(r.w, "verified %s\n", e.Item)
	case EventItem:
		fmt.Fprintf(r.w, "copied   %s %s (%s)\n", e.Item.Kind, e.Item, HumanSize(e.Item.Size))
	case EventBlob, EventBytes:
		if t := r.now(); t.Sub(r.last) >= 10*time.Second {
			r.last = t
			fmt.Fprintf(r.w, "blobs %d/%d, %s/%s\n", e.BlobsDone, e.Blobs, HumanSize(e.Done), HumanSize(e.Total))
		}
	case EventDone:
		fmt.Fprintln(r.w, e.Stats)
	}
}

func (r *Renderer) bar(e Event) {
	if e.Kind == EventDone {
		if r.drawn {
			fmt.Fprint(r.w, "\r\033[K")
		}

		fmt.Fprintln(r.w, e.Stats)

		return
	}

	if e.Kind == EventBytes && r.now().Sub(r.last) < 100*time.Millisecond {
		return
	}

	r.last = r.now()

	label := fmt.Sprintf(" %s/%s  blobs %d/%d", HumanSize(e.Done), HumanSize(e.Total), e.BlobsDone, e.Blobs)
	if e.Kind == EventVerified {
		label = " verified " + e.Item.String()
	}

	n := max(r.Width-len(label)-10, 10)
	frac := 0.0

	if e.Total > 0 {
		frac = float64(e.Done) / float64(e.Total)
	}

	full := min(int(frac*float64(n)), n)
	line := fmt.Sprintf("[%s%s] %3.0f%%%s", strings.Repeat("=", full), strings.Repeat(" ", n-full), frac*100, label)

	if len(line) > r.Width-1 {
		line = line[:r.Width-1]
	}

	fmt.Fprint(r.w, "\r\033[K"+line)
	r.drawn = true
}

// String is a one-line summary.
func (s Stats) String() string {
	unverified := ""
	if s.Unverified > 0 {
		unverified = fmt.Sprintf(", %d not verified (no trust-policy rule)", s.Unverified)
	}

	return fmt.Sprintf("%d items, %d verified%s: %d blobs copied (%s), %d skipped (%s), %d manifests and %d tags written",
		s.Items, s.Verified, unverified, s.BlobsCopied, HumanSize(s.BytesCopied), s.BlobsSkipped, HumanSize(s.BytesSkipped),
		s.ManifestsWritten, s.TagsWritten)
}

// HumanSize formats bytes with binary units.
func HumanSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}

	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}

	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// WriteText writes the plan for --dry-run: one line per item with its
// kind, reference, platforms and size, then the total.
func (p *Plan) WriteText(w io.Writer) error {
	var b strings.Builder

	fmt.Fprintf(&b, "source: %s\n", p.Source)

	arches := "all"
	if len(p.Selection.Arches) > 0 {
		arches = strings.Join(p.Selection.Arches, ",")
	}

	versions := make([]string, len(p.Selection.Versions))
	for i, v := range p.Selection.Versions {
		versions[i] = v.String()
	}

	fmt.Fprintf(&b, "versions: %s; architectures: %s\n", strings.Join(versions, ","), arches)

	if len(p.Selection.TalosDefaults) > 0 {
		defaults := make([]string, len(p.Selection.TalosDefaults))
		for i, v := range p.Selection.TalosDefaults {
			defaults[i] = v.String()
		}

		fmt.Fprintf(&b, "default cluster images of: %s\n", strings.Join(defaults, ","))
	}

	for _, it := range p.Items {
		ref := it.Repo + "@" + it.Digest.String()
		if len(it.Tags) > 0 {
			ref = it.Repo + ":" + strings.Join(it.Tags, ",") + " (" + it.Digest.String()[:19] + ")"
		}

		extra := ""
		if it.Subject != nil {
			extra = " for " + it.Subject.String()[:19]
		}

		if len(it.Platforms) > 0 {
			extra += " [" + strings.Join(it.Platforms, " ") + "]"
		}

		fmt.Fprintf(&b, "  %-10s %s%s  %s, %d blobs\n", it.Kind, ref, extra, HumanSize(it.Size), len(it.Blobs))
	}

	for _, n := range p.Notes {
		fmt.Fprintf(&b, "note: %s\n", n)
	}

	fmt.Fprintf(&b, "total: %d items, %s\n", len(p.Items), HumanSize(p.Size()))

	_, err := io.WriteString(w, b.String())

	return err
}
