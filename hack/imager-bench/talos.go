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
	"time"

	"github.com/kiln-dev/kiln/schematic"
)

// writeShims puts Debian 13's mtools, mkfs.xfs and mksquashfs first on the
// imager's PATH, each run by Debian 13's own loader with its own libraries,
// so that nothing on the machine changes (imager-baseline.md, "Did not
// work"): Debian 12's mtools 4.0.32 cannot write the imager's small FAT32
// ESPs, its mkfs.xfs 6.1 lacks -p file=, its mksquashfs 4.5.1 the
// -xattrs-exclude the imager passes for the schematic's extension. The imager names its mkfs.xfs configuration
// /usr/share/xfsprogs/mkfs/lts_6.18.conf, which no Debian ships: the shim
// points that argument at the bench's copy of 6.13's lts_6.12.conf.
func writeShims(trixieRoot, dir string) error {
	lib := filepath.Join(trixieRoot, "usr/lib/x86_64-linux-gnu")
	loader := filepath.Join(lib, "ld-linux-x86-64.so.2")

	if _, err := os.Stat(loader); err != nil {
		return fmt.Errorf("the imager's Debian 13 tools: %w (make bench-imager fetches them)", err)
	}

	if err := os.RemoveAll(dir); err != nil {
		return err
	}

	conf := filepath.Join(dir, "xfs-mkfs")
	if err := os.MkdirAll(conf, 0o755); err != nil {
		return err
	}

	confs, _ := filepath.Glob(filepath.Join(trixieRoot, "usr/share/xfsprogs/mkfs/*.conf"))
	for _, c := range confs {
		data, err := os.ReadFile(c)
		if err != nil {
			return err
		}

		if err := os.WriteFile(filepath.Join(conf, filepath.Base(c)), data, 0o644); err != nil {
			return err
		}

		if filepath.Base(c) == "lts_6.12.conf" {
			if err := os.WriteFile(filepath.Join(conf, "lts_6.18.conf"), data, 0o644); err != nil {
				return err
			}
		}
	}

	run := fmt.Sprintf("exec %q --library-path %q", loader, lib)

	for _, tool := range []string{"mcopy", "mformat", "mdir", "mmd", "mattrib", "minfo", "mlabel", "mtype"} {
		script := fmt.Sprintf("#!/bin/sh\n# Debian 13's %s (mtools 4.0.48), written by imager-bench.\n%s --argv0 %s %q \"$@\"\n",
			tool, run, tool, filepath.Join(trixieRoot, "usr/bin/mtools"))
		if err := os.WriteFile(filepath.Join(dir, tool), []byte(script), 0o755); err != nil {
			return err
		}
	}

	squash := fmt.Sprintf("#!/bin/sh\n# Debian 13's mksquashfs (squashfs-tools 4.6.1), written by imager-bench.\n%s --argv0 mksquashfs %q \"$@\"\n",
		run, filepath.Join(trixieRoot, "usr/bin/mksquashfs"))
	if err := os.WriteFile(filepath.Join(dir, "mksquashfs"), []byte(squash), 0o755); err != nil {
		return err
	}

	mkfs := fmt.Sprintf(`#!/bin/sh
# Debian 13's mkfs.xfs 6.13, written by imager-bench: -c options= naming a
# file of /usr/share/xfsprogs/mkfs/ reads the bench's copy instead.
for a do
	shift
	case "$a" in
	options=/usr/share/xfsprogs/mkfs/*) a="options=%s/${a##*/}" ;;
	esac
	set -- "$@" "$a"
done
%s --argv0 mkfs.xfs %q "$@"
`, conf, run, filepath.Join(trixieRoot, "usr/sbin/mkfs.xfs"))

	return os.WriteFile(filepath.Join(dir, "mkfs.xfs"), []byte(mkfs), 0o755)
}

// talosRun is one build by Talos's imager.
type talosRun struct {
	bin, shims, tmp, out string
	in                   *inputs
}

func (t *talosRun) env() []string {
	env := []string{}

	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PATH=") && !strings.HasPrefix(kv, "TMPDIR=") && !strings.HasPrefix(kv, "SOURCE_DATE_EPOCH=") {
			env = append(env, kv)
		}
	}

	return append(env, "PATH="+t.shims+":"+os.Getenv("PATH"), "TMPDIR="+t.tmp, "SOURCE_DATE_EPOCH="+strconv.Itoa(sourceDateEpoch))
}

// build makes c's asset from the input set with one extra kernel argument
// and the virtual extension of the schematic that carries it (kiln's
// schematic for the same round; the factory adds it to every ISO and disk,
// with factoryURL as its author), and measures it: wall time, CPU and
// peak RSS of the process tree, the output's size and allocated bytes. The
// output is removed afterwards.
func (t *talosRun) build(ctx context.Context, c buildCase, arg, factoryURL string) (sample, error) {
	s := sample{Contender: "talos"}

	sch, err := schematic.Parse([]byte(schematicFor(c.bootloader, arg)))
	if err != nil {
		return s, err
	}

	canonical, err := sch.Marshal()
	if err != nil {
		return s, err
	}

	schematicFile := filepath.Join(t.tmp, "schematic.yaml")
	if err := os.WriteFile(schematicFile, canonical, 0o644); err != nil {
		return s, err
	}

	if err := os.RemoveAll(t.out); err != nil {
		return s, err
	}

	if err := os.MkdirAll(t.out, 0o755); err != nil {
		return s, err
	}

	if err := os.MkdirAll(t.tmp, 0o755); err != nil {
		return s, err
	}

	defer os.RemoveAll(t.out) //nolint:errcheck

	rssFile := filepath.Join(t.tmp, "peak-rss")
	_ = os.Remove(rssFile)

	args := []string{
		"-rss", rssFile, "-kind", c.kind, "-bootloader", c.bootloader, "-format", c.format,
		"-kernel", t.in.kernel, "-initramfs", t.in.initramfs[c.input], "-sd-stub", t.in.sdStub, "-sd-boot", t.in.sdBoot,
		"-arg", arg, "-out", t.out,
		"-schematic-id", schematic.IDOf(canonical), "-schematic", schematicFile, "-factory-url", factoryURL,
	}

	cmd := exec.CommandContext(ctx, t.bin, args...)
	cmd.Env = t.env()

	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr

	settle()

	start := time.Now()
	err = cmd.Run()
	s.Wall = time.Since(start).Seconds()

	if err != nil {
		return s, fmt.Errorf("talos-imager %s: %w: %s", strings.Join(args, " "), err, lastLines(stderr.String(), 10))
	}

	user, sys := rusageOf(cmd.ProcessState)
	s.User, s.Sys, s.CPU = user.Seconds(), sys.Seconds(), (user + sys).Seconds()

	rss, err := os.ReadFile(rssFile)
	if err != nil {
		return s, fmt.Errorf("talos-imager's peak RSS: %w", err)
	}

	if s.PeakRSS, err = strconv.ParseInt(strings.TrimSpace(string(rss)), 10, 64); err != nil {
		return s, fmt.Errorf("talos-imager's peak RSS %q: %w", rss, err)
	}

	path := strings.TrimSpace(stdout.String())

	info, err := os.Stat(path)
	if err != nil {
		return s, fmt.Errorf("talos-imager output: %w", err)
	}

	s.Size = info.Size()

	if s.Allocated, err = allocated(path); err != nil {
		return s, err
	}

	return s, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}

	return strings.Join(lines, "\n")
}
