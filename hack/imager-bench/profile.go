package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// profiles records where kiln spends its time, with perf sampling the real
// binary (cpu-clock, so it works without hardware counters, as in a VM;
// call graphs by frame pointers, which Go keeps): a cold build of each
// sd-boot asset, a warm download and a fresh kiln's first ISO. Each gets a
// perf.data and a text report of self time by symbol and of time by
// symbol with its callees, kernel included, under results/<run>-profile/.
// It runs after the timed rounds: perf's overhead is in none of them.
func (b *bench) profiles(ctx context.Context) error {
	if _, err := exec.LookPath(b.cfg.perf); err != nil {
		return fmt.Errorf("perf: %w (Debian's linux-perf)", err)
	}

	dir := strings.TrimSuffix(b.tablePath, ".md") + "-profile"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}

	for _, c := range allCases(b.cfg) {
		if c.bootloader != "sd-boot" || !b.cfg.want(c.group) {
			continue
		}

		k := b.kilns[c.input]

		id, err := createSchematic(ctx, b.client, k, schematicFor(c.bootloader, fmt.Sprintf("kiln.bench=%s-profile%s", b.runID, c.slug())))
		if err != nil {
			return err
		}

		settle()

		if err := b.profileRequest(ctx, filepath.Join(dir, strings.TrimPrefix(c.slug(), "-")), k.pid, func() error {
			_, err := get(ctx, b.client, k.url("/image/"+id+"/"+talosVersion+"/"+c.path), "", false)
			return err
		}); err != nil {
			return fmt.Errorf("%s: %w", c.name(), err)
		}
	}

	if b.cfg.want("download") {
		w, err := b.warmFile(ctx, "small", "metal-amd64.raw")
		if err != nil {
			return err
		}

		settle()

		if err := b.profileRequest(ctx, filepath.Join(dir, "warm-download-raw-small"), b.kilns["small"].pid, func() error {
			_, err := get(ctx, b.client, w.url, "", false)
			return err
		}); err != nil {
			return fmt.Errorf("warm download: %w", err)
		}
	}

	if b.cfg.want("fresh") {
		if err := b.profileFresh(ctx, filepath.Join(dir, "fresh-iso-small")); err != nil {
			return fmt.Errorf("fresh kiln: %w", err)
		}
	}

	b.log.Info("kiln profiles written", "dir", dir)

	return nil
}

// profileRequest runs perf record on pid while do runs.
func (b *bench) profileRequest(ctx context.Context, base string, pid int, do func() error) error {
	perf := exec.CommandContext(ctx, b.cfg.perf, "record", "-F", "999", "-g", "-p", strconv.Itoa(pid), "-o", base+".data")

	var stderr bytes.Buffer
	perf.Stdout, perf.Stderr = &stderr, &stderr

	if err := perf.Start(); err != nil {
		return err
	}

	// perf record attaches after it starts; a request sent at once would
	// lose its first milliseconds.
	time.Sleep(500 * time.Millisecond)

	err := do()

	_ = perf.Process.Signal(syscall.SIGINT)

	if werr := perf.Wait(); werr != nil && !strings.Contains(stderr.String(), "perf record: Captured") {
		return fmt.Errorf("perf record: %w: %s", werr, stderr.String())
	}

	if err != nil {
		return err
	}

	return perfReport(b.cfg.perf, base)
}

// profileFresh runs a fresh kiln under perf record from its start to its
// first ISO.
func (b *bench) profileFresh(ctx context.Context, base string) error {
	dir := filepath.Join(b.cfg.out, "kiln-fresh")
	if err := copyTree(b.seeds["small"], dir); err != nil {
		return err
	}
	defer os.RemoveAll(dir) //nolint:errcheck

	settle()

	k, err := startKiln(b.cfg.kiln, dir, b.policy, []string{b.cfg.perf, "record", "-F", "999", "-g", "-o", base + ".data", "--"})
	if err != nil {
		return err
	}

	id, err := createSchematic(ctx, b.client, k, schematicFor("sd-boot", "kiln.bench="+b.runID+"-profile-fresh"))
	if err == nil {
		_, err = get(ctx, b.client, k.url("/image/"+id+"/"+talosVersion+"/metal-amd64.iso"), "", false)
	}

	k.stop() // kiln; perf ends with it

	if err != nil {
		return err
	}

	return perfReport(b.cfg.perf, base)
}

// perfReport writes base.txt: self time by symbol (where the CPU is
// spent), then time by symbol with its callees (which of kiln's steps
// spends it).
func perfReport(perf, base string) error {
	var out bytes.Buffer

	for _, args := range [][]string{
		{"report", "-i", base + ".data", "--stdio", "--no-children", "--sort", "dso,sym", "-g", "none", "--percent-limit", "0.5"},
		{"report", "-i", base + ".data", "--stdio", "--children", "--sort", "sym", "-g", "none", "--percent-limit", "2"},
	} {
		fmt.Fprintf(&out, "### perf %s\n\n", strings.Join(args, " "))

		cmd := exec.Command(perf, args...)

		var stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &stderr

		if err := cmd.Run(); err != nil {
			return fmt.Errorf("perf report: %w: %s", err, stderr.String())
		}

		out.WriteString("\n")
	}

	return os.WriteFile(base+".txt", out.Bytes(), 0o644)
}
