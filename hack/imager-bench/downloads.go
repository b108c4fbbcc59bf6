package main

import (
	"context"
	"fmt"
	"path/filepath"
	"time"
)

// downloadCase is a warm download: a file kiln has cached, fetched from
// kiln and from nginx serving the same file (kiln's own copy, found by
// content), whole or by ranges.
type downloadCase struct {
	name, file, request string
}

// warmFile is an asset kiln has built and the URL it serves it at.
type warmFile struct {
	set, path string
	url       string
	size      int64
	sha256    string
	file      string // kiln's copy on disk
}

func (b *bench) warmFile(ctx context.Context, set, path string) (*warmFile, error) {
	k := b.kilns[set]

	id, err := createSchematic(ctx, b.client, k, schematicFor("sd-boot", "kiln.bench="+b.runID+"-download"))
	if err != nil {
		return nil, err
	}

	w := &warmFile{set: set, path: path, url: k.url("/image/" + id + "/" + talosVersion + "/" + path)}

	if _, err := get(ctx, b.client, w.url, "", false); err != nil {
		return nil, err
	}

	d, err := get(ctx, b.client, w.url, "", true)
	if err != nil {
		return nil, err
	}

	if d.cache != "hit" {
		return nil, fmt.Errorf("second GET of %s: X-Kiln-Cache %q, want hit", w.url, d.cache)
	}

	w.size, w.sha256 = d.bytes, d.sha256

	if w.file, err = findFile(k.dataDir, w.size, w.sha256); err != nil {
		return nil, fmt.Errorf("kiln's copy of %s: %w", path, err)
	}

	return w, nil
}

func (b *bench) downloads(ctx context.Context) error {
	for _, f := range []struct{ set, path string }{{"large", "metal-amd64.iso"}, {"small", "metal-amd64.raw"}} {
		w, err := b.warmFile(ctx, f.set, f.path)
		if err != nil {
			return err
		}

		if err := b.downloadFile(ctx, w); err != nil {
			return err
		}
	}

	return nil
}

func (b *bench) downloadFile(ctx context.Context, w *warmFile) error {
	k := b.kilns[w.set]

	n, err := startNginx(b.cfg.nginx, filepath.Join(b.cfg.out, "nginx"), w.file)
	if err != nil {
		return err
	}
	defer n.stop()

	nd, err := get(ctx, b.client, n.url(), "", true)
	if err != nil {
		return fmt.Errorf("nginx: %w", err)
	}

	if nd.sha256 != w.sha256 {
		return fmt.Errorf("nginx served %s (%d bytes), kiln %s (%d bytes)", nd.sha256, nd.bytes, w.sha256, w.size)
	}

	file := fmt.Sprintf("%s sd-boot %s (%.0f MiB)", w.path, w.set, float64(w.size)/(1<<20))

	requests := []struct {
		name   string
		ranges []string
	}{
		{"whole file", []string{""}},
		{"Range: the middle half", []string{fmt.Sprintf("bytes=%d-%d", w.size/4, w.size/4+w.size/2-1)}},
		{"Range: 8 MiB pieces in turn", pieces(w.size, 8<<20)},
	}

	for _, r := range requests {
		dc := downloadCase{name: file + ", " + r.name, file: file, request: r.name}
		b.dls = append(b.dls, dc)

		for round := range b.cfg.downloadRounds {
			order := []string{"kiln", "nginx"}
			if round%2 == 1 {
				order = []string{"nginx", "kiln"}
			}

			for _, who := range order {
				url, pid := w.url, k.pid
				if who == "nginx" {
					url, pid = n.url(), n.worker
				}

				s, err := b.timedDownload(ctx, url, pid, r.ranges)
				if err != nil {
					return fmt.Errorf("%s from %s: %w", dc.name, who, err)
				}

				s.Case, s.Contender, s.Round, s.Dropped, s.Size = dc.name, who, round, round == 0, w.size
				b.record(s)
			}
		}
	}

	return nil
}

// pieces are the Range headers of a download in consecutive pieces.
func pieces(size, piece int64) []string {
	var out []string

	for off := int64(0); off < size; off += piece {
		end := min(off+piece, size) - 1
		out = append(out, fmt.Sprintf("bytes=%d-%d", off, end))
	}

	return out
}

// timedDownload fetches url once per range (one request without a range
// for ""), over one kept-alive connection, and measures the server process
// pid meanwhile.
func (b *bench) timedDownload(ctx context.Context, url string, pid int, ranges []string) (sample, error) {
	var s sample

	settle()

	t0, err := readProcTimes(pid)
	if err != nil {
		return s, err
	}

	if err := resetPeakRSS(pid); err != nil {
		return s, err
	}

	start := time.Now()

	for _, r := range ranges {
		d, err := get(ctx, b.client, url, r, false)
		if err != nil {
			return s, err
		}

		want := 200
		if r != "" {
			want = 206
		}

		if d.status != want {
			return s, fmt.Errorf("GET %s (Range %q) = %d, want %d", url, r, d.status, want)
		}

		s.Bytes += d.bytes
	}

	s.Wall = time.Since(start).Seconds()

	t1, err := readProcTimes(pid)
	if err != nil {
		return s, err
	}

	used := t1.sub(t0)
	s.User, s.Sys, s.CPU = used.user.Seconds(), used.sys.Seconds(), (used.cpu + used.children).Seconds()

	if s.PeakRSS, err = peakRSS(pid); err != nil {
		return s, err
	}

	return s, nil
}
