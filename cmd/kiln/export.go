package main

import (
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kiln-dev/kiln/internal/checksums"
	"github.com/kiln-dev/kiln/internal/cli"
	"github.com/kiln-dev/kiln/internal/iox"
	"github.com/kiln-dev/kiln/release"
)

const exportUsage = `Usage: kiln export --kiln URL --schematic ID --version V --output DIR [flags]

Writes a schematic's asset mirror directory, DIR/<version>/, from a running
kiln, for a plain web server to serve as the Sidero air-gap plan's asset
mirror: metal-amd64.raw.xz, vmlinuz-amd64, initramfs-amd64.xz and, when the
schematic embeds an image cache, image-cache.oci and
metal-amd64-with-cache.raw.xz, with checksums.txt (cd DIR/<version> &&
sha512sum -c checksums.txt). kiln builds what is not built yet.

Each file is downloaded to a temporary file in the directory, checked
against checksums.txt and renamed into place, so the directory never holds
a half-written file; a file whose sha512 already matches is not downloaded
again, so an interrupted export resumes and a repeated one writes nothing.
Progress goes to stderr.

  kiln export --kiln http://kiln.lan:8080 --version v1.13.0 --output /srv/talos \
      --schematic 376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba

Flags:
`

const exportEnvPrefix = "KILN_EXPORT_"

// tempPrefix names export's temporary files, so a later run can remove
// what an interrupted one left.
const tempPrefix = ".kiln-export-"

func exportCmd(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	if len(args) > 0 && isHelp(args[0]) {
		fmt.Fprint(stdout, exportUsage)

		return nil
	}

	fs := flag.NewFlagSet("kiln export", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(fs.Output(), exportUsage); fs.PrintDefaults() }

	fs.String(cli.ConfigFlag, "", "YAML file of settings, keyed by flag name")
	kiln := fs.String("kiln", "", "kiln's URL, http(s)://host[:port] (required)")
	schematicID := fs.String("schematic", "", "schematic ID (required)")
	version := fs.String("version", "", "Talos version, e.g. v1.13.0 (required)")
	output := fs.String("output", "", "directory the <version>/ directory is written under (required)")
	caFile := fs.String("ca-file", "", "PEM CA bundle to trust kiln's TLS certificate with (default: the system's)")
	insecure := fs.Bool("insecure", false, "accept any TLS certificate from kiln (never on a network you do not trust)")

	if err := cli.Parse(fs, args, exportEnvPrefix, getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}

		return err
	}

	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: every setting is a flag", fs.Arg(0))
	}

	if *kiln == "" || *schematicID == "" || *version == "" || *output == "" {
		return errors.New("--kiln, --schematic, --version and --output are required")
	}

	base, err := url.Parse(strings.TrimSuffix(*kiln, "/"))
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" || base.RawQuery != "" || base.Fragment != "" {
		return fmt.Errorf("--kiln %q: want http(s)://host[:port]", *kiln)
	}

	if !hexID.MatchString(*schematicID) {
		return fmt.Errorf("--schematic %q: want a schematic ID, 64 lower-case hex digits (kiln schematic id prints one)", *schematicID)
	}

	// The version names a directory: only a parsed one, in Talos's
	// spelling, does.
	v, err := release.ParseVersion(*version)
	if err != nil {
		return fmt.Errorf("--version: %w", err)
	}

	if *caFile != "" && *insecure {
		return errors.New("give --ca-file or --insecure, not both")
	}

	if base.Scheme == "http" && (*caFile != "" || *insecure) {
		return fmt.Errorf("--kiln %s is plain HTTP: --ca-file and --insecure are for https", *kiln)
	}

	client, err := kilnClient(*caFile, *insecure)
	if err != nil {
		return err
	}

	// kiln answers once it has built the file, which for a disk image
	// takes minutes: the command's context (Ctrl-C) bounds it instead.
	client.Timeout = 0

	if *insecure {
		fmt.Fprintf(stderr, "warning: --insecure: kiln's certificate is not verified\n")
	}

	e := &exporter{
		client: client,
		base:   base.JoinPath("assets", *schematicID, v.String()),
		dir:    filepath.Join(*output, v.String()),
		stderr: stderr,
	}

	return e.run(ctx)
}

type exporter struct {
	client *http.Client
	base   *url.URL
	dir    string
	stderr io.Writer
}

func (e *exporter) run(ctx context.Context) error {
	// Asking for checksums.txt builds every file on kiln's side.
	fmt.Fprintf(e.stderr, "asking %s for %s (kiln builds what is not built yet)\n", e.base.Redacted(), "checksums.txt")

	sums, err := e.get(ctx, "checksums.txt", checksums.MaxFileBytes)
	if err != nil {
		return err
	}

	entries, err := checksums.Parse(sums)
	if err != nil {
		return fmt.Errorf("checksums.txt from %s: %w", e.base.Redacted(), err)
	}

	if err := os.MkdirAll(e.dir, 0o755); err != nil {
		return fmt.Errorf("output: %w", err)
	}

	if err := removeTemps(e.dir); err != nil {
		return err
	}

	downloaded := 0

	for _, ent := range entries {
		if ent.Name == "checksums.txt" || strings.HasPrefix(ent.Name, tempPrefix) {
			return fmt.Errorf("checksums.txt from %s lists %s, which is not an asset", e.base.Redacted(), ent.Name)
		}

		path := filepath.Join(e.dir, ent.Name)

		same, err := hasSHA512(path, ent.SHA512)
		if err != nil {
			return err
		}

		if same {
			fmt.Fprintf(e.stderr, "%s: up to date\n", ent.Name)

			continue
		}

		if err := e.download(ctx, ent); err != nil {
			return err
		}

		downloaded++
	}

	// checksums.txt last: it vouches for the files, so it is never there
	// before them.
	if old, err := os.ReadFile(filepath.Join(e.dir, "checksums.txt")); err != nil || !bytes.Equal(old, sums) {
		if err := writeAtomic(e.dir, "checksums.txt", bytes.NewReader(sums), nil); err != nil {
			return err
		}

		downloaded++
	}

	fmt.Fprintf(e.stderr, "%s: %d files, %d written, %d up to date\n", e.dir, len(entries)+1, downloaded, len(entries)+1-downloaded)

	return nil
}

// get reads a small file whole.
func (e *exporter) get(ctx context.Context, name string, limit int64) ([]byte, error) {
	resp, err := e.open(ctx, name)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()

	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}

	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s from %s is over %d bytes", name, e.base.Redacted(), limit)
	}

	return data, nil
}

// open GETs a file of the mirror directory, failing with kiln's message on
// anything but 200.
func (e *exporter) open(ctx context.Context, name string) (*http.Response, error) {
	u := e.base.JoinPath(name)

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}

	resp, err := e.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u.Redacted(), err)
	}

	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()

		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024)) //nolint:errcheck // the status says enough

		return nil, fmt.Errorf("GET %s: %s: %s", u.Redacted(), resp.Status, strings.TrimSpace(string(msg)))
	}

	return resp, nil
}

// download writes one file, checked against its sha512 before it is
// renamed into place.
func (e *exporter) download(ctx context.Context, ent checksums.Entry) error {
	resp, err := e.open(ctx, ent.Name)
	if err != nil {
		return err
	}
	defer resp.Body.Close()

	fmt.Fprintf(e.stderr, "%s: downloading %s\n", ent.Name, sizeText(resp.ContentLength))

	p := &progress{name: ent.Name, total: resp.ContentLength, w: e.stderr, last: time.Now()}
	h := sha512.New()

	check := func() error {
		if got := hex.EncodeToString(h.Sum(nil)); got != ent.SHA512 {
			return fmt.Errorf("%s: kiln sent a file of sha512 %s, its checksums.txt says %s", ent.Name, got, ent.SHA512)
		}

		return nil
	}

	if err := writeAtomic(e.dir, ent.Name, io.TeeReader(iox.ContextReader(ctx, resp.Body), io.MultiWriter(h, p)), check); err != nil {
		return err
	}

	fmt.Fprintf(e.stderr, "%s: done, %s\n", ent.Name, sizeText(p.done))

	return nil
}

// writeAtomic writes r to dir/name through a temporary file in dir that
// check (if any) approves before it is synced and renamed over name.
func writeAtomic(dir, name string, r io.Reader, check func() error) (err error) {
	tmp, err := os.CreateTemp(dir, tempPrefix+name+"-*")
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}

	defer func() {
		if err != nil {
			tmp.Close()           //nolint:errcheck // already failing
			os.Remove(tmp.Name()) //nolint:errcheck // already failing
		}
	}()

	if _, err := io.Copy(tmp, r); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}

	if check != nil {
		if err := check(); err != nil {
			return err
		}
	}

	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}

	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}

	if err := tmp.Close(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}

	if err := os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}

	// The rename is durable once the directory is synced.
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("%s: %w", dir, err)
	}
	defer d.Close()

	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}

	return nil
}

// hasSHA512 reports whether path is a regular file of that sha512; a
// missing file is not.
func hasSHA512(path, want string) (bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}

	if err != nil {
		return false, err
	}
	defer f.Close()

	st, err := f.Stat()
	if err != nil {
		return false, err
	}

	if !st.Mode().IsRegular() {
		return false, fmt.Errorf("%s is not a regular file", path)
	}

	h := sha512.New()
	if _, err := io.Copy(h, f); err != nil {
		return false, fmt.Errorf("reading %s: %w", path, err)
	}

	return hex.EncodeToString(h.Sum(nil)) == want, nil
}

// removeTemps removes what an interrupted export left in dir.
func removeTemps(dir string) error {
	old, err := filepath.Glob(filepath.Join(dir, tempPrefix+"*"))
	if err != nil {
		return err
	}

	for _, p := range old {
		if err := os.Remove(p); err != nil {
			return fmt.Errorf("removing a temporary file of an earlier export: %w", err)
		}
	}

	return nil
}

// progress prints a download's progress at most every two seconds.
type progress struct {
	name  string
	total int64
	done  int64
	w     io.Writer
	last  time.Time
}

func (p *progress) Write(b []byte) (int, error) {
	p.done += int64(len(b))

	if now := time.Now(); now.Sub(p.last) >= 2*time.Second {
		p.last = now
		fmt.Fprintf(p.w, "%s: %s of %s\n", p.name, sizeText(p.done), sizeText(p.total))
	}

	return len(b), nil
}

// sizeText is n bytes for a person; a negative n is an unknown size.
func sizeText(n int64) string {
	switch {
	case n < 0:
		return "(size unknown)"
	case n < 1<<20:
		return fmt.Sprintf("%d bytes", n)
	default:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
}
