// Command imager-bench measures kiln's builder side by side with Talos's own
// imager (pkg/imager v1.13.9, hack/imager-bench/talos) on the same input
// files, and kiln's warm downloads against nginx serving the same file
// (make bench-imager; issue 17).
//
// kiln is driven as a user drives it: the real binary (kiln serve) with a
// release pushed into its embedded registry from the bench's inputs
// (demo.Push, signed, under a trust policy naming the key), a new
// schematic per measured build so that every GET is cold, and the asset
// downloaded over loopback. Talos's imager runs once per asset in its own
// process, with the factory's post-processing (zstd -T0 -18, xz -0 -T0).
// Each case runs in rounds that alternate which contender goes first, with
// sync before each contender; the first round is dropped. The figures are
// paired medians: the median of kiln/Talos over the rounds.
//
// Everything it writes goes under -out (_bench): inputs, kiln data
// directories, Talos's scratch, the table (imager-bench-<time>.md) and
// every measurement (imager-bench-<time>.jsonl), and with -profile the perf
// profiles of kiln's builds (profile-<case>.txt).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

type config struct {
	kiln, kilnVersion  string
	talosImager        string
	kernelDir          string
	sdbootDir, busybox string
	trixie             string
	nginx              string
	perf               string
	out                string
	rounds, slowRounds int
	downloadRounds     int
	only               map[string]bool
	profile            bool
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "imager-bench:", err)
		os.Exit(1)
	}
}

func run() error {
	var cfg config

	var only string

	flag.StringVar(&cfg.kiln, "kiln", "_bin/kiln", "kiln binary (make build)")
	flag.StringVar(&cfg.kilnVersion, "kiln-version", "", "what to call the kiln measured (git describe)")
	flag.StringVar(&cfg.talosImager, "talos-imager", "_bench/bin/talos-imager", "Talos's imager (hack/imager-bench/talos)")
	flag.StringVar(&cfg.kernelDir, "kernel-dir", "_e2e/kernel", "Debian's unpacked linux-image package (make deps)")
	flag.StringVar(&cfg.sdbootDir, "sdboot-dir", "/usr/lib/systemd/boot/efi", "Debian's systemd-boot-efi files")
	flag.StringVar(&cfg.busybox, "busybox", "/bin/busybox", "static busybox for the initramfs (busybox-static)")
	flag.StringVar(&cfg.trixie, "trixie", "_e2e/imager-trixie/root", "Debian 13's mtools and xfsprogs, unpacked (the imager's shims)")
	flag.StringVar(&cfg.nginx, "nginx", "_e2e/nginx/root/usr/sbin/nginx", "Debian's nginx, unpacked")
	flag.StringVar(&cfg.perf, "perf", "perf", "perf, for -profile")
	flag.StringVar(&cfg.out, "out", "_bench", "directory for everything the bench writes")
	flag.IntVar(&cfg.rounds, "rounds", 5, "rounds per case, the first dropped")
	flag.IntVar(&cfg.slowRounds, "slow-rounds", 4, "rounds of the cases where Talos takes many seconds (.raw.zst, .raw.xz, GRUB), the first dropped")
	flag.IntVar(&cfg.downloadRounds, "download-rounds", 6, "rounds of each warm download, the first dropped")
	flag.StringVar(&only, "only", "", "comma-separated case groups: iso, raw, zst, xz, grub, fresh, download (default all)")
	flag.BoolVar(&cfg.profile, "profile", true, "after the timed rounds, profile kiln's cold builds and a warm download with perf")
	flag.Parse()

	if flag.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	}

	if cfg.rounds < 2 || cfg.slowRounds < 2 || cfg.downloadRounds < 2 {
		return errors.New("rounds must be at least 2: the first is dropped")
	}

	cfg.only = map[string]bool{}

	for _, g := range strings.Split(only, ",") {
		if g = strings.TrimSpace(g); g != "" {
			if !knownGroup(g) {
				return fmt.Errorf("-only: unknown group %q", g)
			}

			cfg.only[g] = true
		}
	}

	for _, p := range []*string{&cfg.kiln, &cfg.talosImager, &cfg.kernelDir, &cfg.trixie, &cfg.nginx, &cfg.out} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return err
		}

		*p = abs
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))

	b, err := newBench(cfg, logger)
	if err != nil {
		return err
	}
	defer b.close()

	start := time.Now()

	if err := b.run(ctx); err != nil {
		return err
	}

	logger.Info("bench done", "duration", time.Since(start).Round(time.Second), "table", b.tablePath, "raw", b.rawPath)

	return nil
}

func knownGroup(g string) bool {
	switch g {
	case "iso", "raw", "zst", "xz", "grub", "fresh", "download":
		return true
	}

	return false
}

func (c *config) want(group string) bool { return len(c.only) == 0 || c.only[group] }
