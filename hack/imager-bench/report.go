package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// rssTarget is issue 17's bound on kiln's peak RSS.
const rssTarget = 256 << 20

// pair is the kept samples of two contenders in one case, by round.
type pair struct {
	a, b []sample // same length, same rounds
}

func (b *bench) kept(name, who string) []sample {
	var out []sample

	for _, s := range b.samples {
		if s.Case == name && s.Contender == who && !s.Dropped && s.Error == "" {
			out = append(out, s)
		}
	}

	return out
}

func (b *bench) paired(name, x, y string) pair {
	var p pair

	ys := map[int]sample{}
	for _, s := range b.kept(name, y) {
		ys[s.Round] = s
	}

	for _, s := range b.kept(name, x) {
		if t, ok := ys[s.Round]; ok {
			p.a, p.b = append(p.a, s), append(p.b, t)
		}
	}

	return p
}

func values(ss []sample, f func(sample) float64) []float64 {
	out := make([]float64, len(ss))
	for i, s := range ss {
		out[i] = f(s)
	}

	return out
}

func ratios(p pair, f func(sample) float64) []float64 {
	var out []float64

	for i := range p.a {
		if d := f(p.b[i]); d > 0 {
			out = append(out, f(p.a[i])/d)
		}
	}

	return out
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}

	s := slices.Clone(v)
	slices.Sort(s)

	if len(s)%2 == 1 {
		return s[len(s)/2]
	}

	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func num(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v < 0.1:
		return fmt.Sprintf("%.3f", v)
	case v < 100:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.0f", v)
	}
}

// spread is "median [min–max]".
func spread(v []float64) string {
	if len(v) == 0 {
		return "—"
	}

	if len(v) == 1 {
		return num(v[0])
	}

	return fmt.Sprintf("%s [%s–%s]", num(median(v)), num(slices.Min(v)), num(slices.Max(v)))
}

// ratio is "median× [min–max]", with ✓ or ✗ against a target (≤ target
// when below, ≥ target otherwise).
func ratio(v []float64, target float64, atLeast bool) string {
	if len(v) == 0 {
		return "—"
	}

	s := fmt.Sprintf("%.2f×", median(v))
	if len(v) > 1 {
		s += fmt.Sprintf(" [%.2f–%.2f]", slices.Min(v), slices.Max(v))
	}

	if target > 0 {
		if m := median(v); (atLeast && m >= target) || (!atLeast && m <= target) {
			s += " ✓"
		} else {
			s += " ✗"
		}
	}

	return s
}

func mib(v float64) string { return fmt.Sprintf("%.0f", v/(1<<20)) }

func (b *bench) writeTable() error {
	var w strings.Builder

	m := b.machine
	fmt.Fprintf(&w, "# kiln vs Talos's imager v1.13.9, same inputs (%s)\n\n", m.Started)
	fmt.Fprintf(&w, "Machine: %s, %d cores, %.1f GiB, kernel %s; files on %s.\n", m.CPU, m.Cores, m.MemoryGiB, m.Kernel, m.Filesystem)
	fmt.Fprintf(&w, "Load average at start %s, at end %s; busiest processes at start: %s.\n\n", m.LoadStart, m.LoadEnd, m.Busiest)
	fmt.Fprintf(&w, "Rounds: %d per case (%d for .raw.zst, .raw.xz and GRUB, %d per download), alternating which contender goes first, `sync` before each; the first round is dropped. Figures are medians [min–max] of the kept rounds; ratios are paired (round by round) medians.\n\n",
		b.cfg.rounds, b.cfg.slowRounds, b.cfg.downloadRounds)

	w.WriteString("| input | bytes | sha256 |\n|---|---|---|\n")

	for _, f := range []struct{ name, path string }{
		{"kernel (Debian " + b.in.kernelVersion + ")", b.in.kernel},
		{"systemd-stub (Debian 12, COFF symbols stripped)", b.in.sdStub},
		{"systemd-boot (Debian 12)", b.in.sdBoot},
		{"initramfs small (busybox, zstd cpio)", b.in.initramfs["small"]},
		{"initramfs large (+64 MiB incompressible)", b.in.initramfs["large"]},
	} {
		sum, size, err := fileSHA256(f.path)
		if err != nil {
			return err
		}

		fmt.Fprintf(&w, "| %s | %d | `%s` |\n", f.name, size, sum)
	}

	w.WriteString("\n| tool | version |\n|---|---|\n")

	for _, v := range b.versions {
		fmt.Fprintf(&w, "| %s | %s |\n", v[0], strings.ReplaceAll(v[1], "|", "/"))
	}

	wall := func(s sample) float64 { return s.Wall }
	ttfb := func(s sample) float64 { return s.TTFB }
	cpu := func(s sample) float64 { return s.CPU }
	rss := func(s sample) float64 { return float64(s.PeakRSS) }
	alloc := func(s sample) float64 { return float64(s.Allocated) }
	size := func(s sample) float64 { return float64(s.Size) }

	w.WriteString("\n## Cold builds: kiln's GET of a new schematic's asset vs Talos's imager making it\n\n")
	w.WriteString("| asset | boot loader | initramfs | n | kiln wall s | kiln to first byte s | Talos wall s | kiln/Talos wall | kiln first byte/Talos | kiln CPU s | Talos CPU s | kiln/Talos CPU | kiln peak RSS MiB | Talos peak RSS MiB | allocated MiB kiln / Talos | size MiB kiln / Talos |\n")
	w.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")

	for _, c := range b.cases {
		if !b.cfg.want(c.group) {
			continue
		}

		p := b.paired(c.name(), "kiln", "talos")
		ks, ts := b.kept(c.name(), "kiln"), b.kept(c.name(), "talos")

		if len(ks) == 0 {
			fmt.Fprintf(&w, "| %s | %s | %s | %d | — | — | %s | — | — | — | %s | — | — | %s | — | — / %s |\n",
				c.path, c.bootloader, c.input, len(ts), spread(values(ts, wall)), spread(values(ts, cpu)),
				mib(slices.Max(append(values(ts, rss), 0))), mib(median(values(ts, size))))

			continue
		}

		rssMark := " ✓"
		if slices.Max(values(ks, rss)) >= rssTarget {
			rssMark = " ✗"
		}

		fmt.Fprintf(&w, "| %s | %s | %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s%s | %s | %s / %s | %s / %s |\n",
			c.path, c.bootloader, c.input, len(p.a),
			spread(values(ks, wall)), spread(values(ks, ttfb)), spread(values(ts, wall)),
			ratio(ratios(p, wall), c.target, false), ratioTTFB(p, c.target),
			spread(values(ks, cpu)), spread(values(ts, cpu)), ratio(ratios(p, cpu), 1, false),
			mib(slices.Max(values(ks, rss))), rssMark, mib(slices.Max(values(ts, rss))),
			mib(median(values(ks, alloc))), mib(median(values(ts, alloc))),
			mib(median(values(ks, size))), mib(median(values(ts, size))))
	}

	w.WriteString("\nTargets (issue 17): kiln/Talos wall ≤ 0.5× for the ISO, ≤ 0.3× for `.raw`, ≤ 0.5× for `.raw.zst` and `.raw.xz`; kiln's CPU ≤ Talos's; kiln's peak RSS < 256 MiB. ✓/✗ mark the median against them, the wall-time target twice: against kiln's wall time (request to last byte, the whole asset sent over loopback to a client on the same cores) and against kiln's first byte (kiln answers once the asset is built and committed: the build alone, as Talos's figure is a file written that nobody reads).\n")

	if b.cfg.want("fresh") {
		w.WriteString("\n## A fresh kiln's first ISO (start, verify, extract, build, download) vs Talos's imager making it\n\n")
		w.WriteString("| case | n | kiln wall s | kiln start to serving s | Talos wall s | kiln/Talos wall | kiln CPU s | Talos CPU s | kiln/Talos CPU | kiln peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|\n")

		for _, set := range []string{"small", "large"} {
			name := "first metal-amd64.iso of a fresh kiln, sd-boot " + set
			p := b.paired(name, "kiln", "talos")
			ks, ts := b.kept(name, "kiln"), b.kept(name, "talos")

			fmt.Fprintf(&w, "| %s initramfs | %d | %s | %s | %s | %s | %s | %s | %s | %s |\n", set, len(p.a),
				spread(values(ks, wall)), spread(values(ks, func(s sample) float64 { return s.Startup })), spread(values(ts, wall)),
				ratio(ratios(p, wall), 0, false), spread(values(ks, cpu)), spread(values(ts, cpu)), ratio(ratios(p, cpu), 1, false),
				mib(slices.Max(append(values(ks, rss), 0))))
		}
	}

	if len(b.dls) > 0 {
		tput := func(s sample) float64 { return float64(s.Bytes) / s.Wall / 1e6 }

		w.WriteString("\n## Warm downloads over loopback: kiln vs nginx serving the same file\n\n")
		w.WriteString("| file | request | n | kiln MB/s | nginx MB/s | kiln/nginx throughput | kiln CPU s | nginx CPU s | kiln peak RSS MiB | nginx peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|\n")

		for _, dc := range b.dls {
			p := b.paired(dc.name, "kiln", "nginx")
			ks, ns := b.kept(dc.name, "kiln"), b.kept(dc.name, "nginx")

			fmt.Fprintf(&w, "| %s | %s | %d | %s | %s | %s | %s | %s | %s | %s |\n", dc.file, dc.request, len(p.a),
				spread(values(ks, tput)), spread(values(ns, tput)), ratio(ratios(p, tput), 0.9, true),
				spread(values(ks, cpu)), spread(values(ns, cpu)),
				mib(slices.Max(append(values(ks, rss), 0))), mib(slices.Max(append(values(ns, rss), 0))))
		}

		w.WriteString("\nTarget (issue 17): a warm download ≥ 0.9× nginx's throughput, Range included. The client (Go, 1 MiB reads, discarding) shares the cores with the server.\n")
	}

	w.WriteString("\nHow it is measured: wall time is the client's, request sent to last byte received (kiln) or process start to exit (Talos's imager, one process per asset). CPU is user+sys: for Talos's imager its whole process tree (wait4), for kiln its process CPU clock over the request (every thread; plus children it waited for), for nginx its worker's. Peak RSS: Talos, the largest process of the tree; kiln and nginx, VmHWM over the request (reset with clear_refs). Allocated: Talos, the output file's blocks; kiln, how much its data directory's blocks grew over the request (the asset and whatever it keeps with it). Sizes are the output's (kiln: the bytes served).\n")

	// One line per distinct refusal, naming its cases.
	byMessage := map[string][]string{}

	var messages []string

	for _, u := range b.unsupported {
		if _, ok := byMessage[u[1]]; !ok {
			messages = append(messages, u[1])
		}

		byMessage[u[1]] = append(byMessage[u[1]], u[0])
	}

	for _, msg := range messages {
		fmt.Fprintf(&w, "\nkiln answers 501 (%q), so Talos alone is measured, for: %s.\n", msg, strings.Join(byMessage[msg], "; "))
	}

	fmt.Fprintf(&w, "\nEvery measurement, the dropped rounds included: `%s`.\n", filepath.Base(b.rawPath))

	if err := os.WriteFile(b.tablePath, []byte(w.String()), 0o644); err != nil {
		return err
	}

	fmt.Print(w.String())

	return nil
}

// ratioTTFB is kiln's time to the first byte over Talos's whole time: kiln
// answers only once its asset is built and committed, so this is the build
// alone, the like of Talos's file written, which no reader follows.
func ratioTTFB(p pair, target float64) string {
	return ratio(ratios(p, func(s sample) float64 {
		if s.Contender == "kiln" {
			return s.TTFB
		}

		return s.Wall
	}), target, false)
}
