package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kiln-dev/kiln/signing/signingtest"
)

// sample is one measurement of one contender; every one goes to the
// .jsonl file, the dropped first rounds included.
type sample struct {
	Case      string  `json:"case"`
	Contender string  `json:"contender"` // kiln, talos, nginx
	Round     int     `json:"round"`
	Dropped   bool    `json:"dropped"`
	Wall      float64 `json:"wall_s"`
	TTFB      float64 `json:"ttfb_s,omitempty"`    // kiln: request to first byte (the build, for a cold asset)
	Startup   float64 `json:"startup_s,omitempty"` // fresh kiln: exec to serving
	User      float64 `json:"user_s"`              // clock ticks (10 ms) for a running server
	Sys       float64 `json:"sys_s"`
	CPU       float64 `json:"cpu_s"` // user+sys, exact
	PeakRSS   int64   `json:"peak_rss_bytes"`
	Size      int64   `json:"size_bytes,omitempty"`
	Allocated int64   `json:"allocated_bytes,omitempty"` // Talos: its output; kiln: growth of its data directory
	Bytes     int64   `json:"bytes,omitempty"`           // received by the client
	Cache     string  `json:"x_kiln_cache,omitempty"`
	Load      string  `json:"load"`
	Error     string  `json:"error,omitempty"`
}

// buildCase is one asset built by both contenders.
type buildCase struct {
	group      string // -only group
	input      string // small, large
	path       string // kiln's asset path: metal-amd64.iso, .raw, .raw.zst, .raw.xz
	kind       string // the imager's: iso, image
	format     string // the imager's post-processing: raw, zstd, xz
	bootloader string
	rounds     int
	target     float64 // kiln/Talos wall time wanted (issue 17); 0: none
}

func (c buildCase) name() string { return c.path + " " + c.bootloader + " " + c.input }

func (c buildCase) slug() string {
	return strings.NewReplacer(".", "-", " ", "-").Replace(strings.TrimPrefix(c.name(), "metal-amd64"))
}

type bench struct {
	cfg    config
	log    *slog.Logger
	client *http.Client

	runID     string
	machine   machine
	versions  [][2]string
	in        *inputs
	policy    string
	seeds     map[string]string    // input set -> seeded data directory
	kilns     map[string]*kilnProc // input set -> the kiln of the cold builds
	talos     *talosRun
	raw       *os.File
	rawPath   string
	tablePath string

	samples []sample
	cases   []buildCase
	dls     []downloadCase

	unsupported [][2]string // case, kiln's 501 message
}

func newBench(cfg config, logger *slog.Logger) (*bench, error) {
	id := make([]byte, 4)
	if _, err := rand.Read(id); err != nil {
		return nil, err
	}

	for _, dir := range []string{cfg.out, filepath.Join(cfg.out, "results")} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
	}

	stamp := time.Now().UTC().Format("20060102-150405")
	b := &bench{
		cfg: cfg, log: logger, runID: hex.EncodeToString(id),
		client: &http.Client{Transport: &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 4}, Timeout: 30 * time.Minute},
		seeds:  map[string]string{}, kilns: map[string]*kilnProc{},
		rawPath:   filepath.Join(cfg.out, "results", "imager-bench-"+stamp+".jsonl"),
		tablePath: filepath.Join(cfg.out, "results", "imager-bench-"+stamp+".md"),
	}

	var err error
	if b.raw, err = os.Create(b.rawPath); err != nil {
		return nil, err
	}

	return b, nil
}

func (b *bench) close() {
	for set, k := range b.kilns {
		k.stop()

		// kiln's log beside the figures, for what a figure does not say.
		log := strings.TrimSuffix(b.rawPath, ".jsonl") + "-kiln-" + set + ".log"
		if err := os.WriteFile(log, []byte(k.logs.String()), 0o644); err != nil {
			b.log.Error("writing kiln's log", "error", err)
		}
	}

	b.raw.Close()
}

func (b *bench) record(s sample) {
	s.Load = loadavg()
	b.samples = append(b.samples, s)

	line, _ := json.Marshal(s)
	_, _ = b.raw.Write(append(line, '\n'))

	b.log.Info("measured", "case", s.Case, "contender", s.Contender, "round", s.Round, "dropped", s.Dropped,
		"wall_s", fmt.Sprintf("%.3f", s.Wall), "cpu_s", fmt.Sprintf("%.3f", s.CPU), "rss_mib", s.PeakRSS>>20, "error", s.Error)
}

func (b *bench) run(ctx context.Context) error {
	b.machine = describeMachine(b.cfg.out)
	b.log.Info("machine", "cpu", b.machine.CPU, "cores", b.machine.Cores, "kernel", b.machine.Kernel, "load", b.machine.LoadStart)

	var err error
	if b.in, err = prepareInputs(b.cfg, filepath.Join(b.cfg.out, "inputs")); err != nil {
		return fmt.Errorf("inputs: %w", err)
	}

	shims := filepath.Join(b.cfg.out, "shims")
	if err := writeShims(b.cfg.trixie, shims); err != nil {
		return err
	}

	b.talos = &talosRun{bin: b.cfg.talosImager, shims: shims, tmp: filepath.Join(b.cfg.out, "talos-tmp"), out: filepath.Join(b.cfg.out, "talos-out"), in: b.in}
	b.recordVersions()

	key, err := signingtest.GenerateKey(signingtest.ECDSAP256)
	if err != nil {
		return err
	}

	if b.policy, err = writePolicy(filepath.Join(b.cfg.out, "trust"), key); err != nil {
		return err
	}

	for _, set := range []string{"small", "large"} {
		b.seeds[set] = filepath.Join(b.cfg.out, "kiln-seed-"+set)
		b.log.Info("seeding kiln", "initramfs", set, "dir", b.seeds[set])

		if err := seedKiln(ctx, b.cfg.kiln, b.seeds[set], b.policy, key, b.in, b.in.initramfs[set]); err != nil {
			return fmt.Errorf("seeding kiln (%s initramfs): %w", set, err)
		}
	}

	if err := b.startKilns(ctx); err != nil {
		return err
	}

	b.cases = allCases(b.cfg)

	for _, c := range b.cases {
		if !b.cfg.want(c.group) {
			continue
		}

		if err := b.buildCase(ctx, c); err != nil {
			return fmt.Errorf("%s: %w", c.name(), err)
		}
	}

	if b.cfg.want("fresh") {
		for _, set := range []string{"small", "large"} {
			if err := b.freshCase(ctx, set); err != nil {
				return fmt.Errorf("fresh kiln (%s): %w", set, err)
			}
		}
	}

	if b.cfg.want("download") {
		if err := b.downloads(ctx); err != nil {
			return fmt.Errorf("warm downloads: %w", err)
		}
	}

	b.machine.LoadEnd = loadavg()

	if err := b.writeTable(); err != nil {
		return err
	}

	if b.cfg.profile {
		if err := b.profiles(ctx); err != nil {
			// The figures are written; a profile that fails is reported, not fatal.
			b.log.Error("profiling kiln", "error", err)
		}
	}

	return nil
}

func allCases(cfg config) []buildCase {
	var cases []buildCase

	for _, input := range []string{"small", "large"} {
		cases = append(cases,
			buildCase{group: "iso", input: input, path: "metal-amd64.iso", kind: "iso", format: "raw", bootloader: "sd-boot", rounds: cfg.rounds, target: 0.5},
			buildCase{group: "raw", input: input, path: "metal-amd64.raw", kind: "image", format: "raw", bootloader: "sd-boot", rounds: cfg.rounds, target: 0.3},
			buildCase{group: "zst", input: input, path: "metal-amd64.raw.zst", kind: "image", format: "zstd", bootloader: "sd-boot", rounds: cfg.slowRounds, target: 0.5},
			buildCase{group: "xz", input: input, path: "metal-amd64.raw.xz", kind: "image", format: "xz", bootloader: "sd-boot", rounds: cfg.slowRounds, target: 0.5},
		)
	}

	// GRUB boot loaders (dual-boot is Talos's amd64 default from 1.10):
	// kiln builds them from the seed release's GRUB trees; where a tree is
	// missing it answers 501 naming it, and Talos alone is measured.
	for _, input := range []string{"small", "large"} {
		for _, bl := range []string{"dual-boot", "grub"} {
			cases = append(cases,
				buildCase{group: "grub", input: input, path: "metal-amd64.iso", kind: "iso", format: "raw", bootloader: bl, rounds: cfg.slowRounds},
				buildCase{group: "grub", input: input, path: "metal-amd64.raw", kind: "image", format: "raw", bootloader: bl, rounds: cfg.slowRounds},
			)
		}
	}

	return cases
}

// startKilns starts one kiln per input set on a copy of its seed, and
// builds one ISO on each, unmeasured: the release is then verified and
// extracted, as on a kiln that has served before.
func (b *bench) startKilns(ctx context.Context) error {
	for _, set := range []string{"small", "large"} {
		dir := filepath.Join(b.cfg.out, "kiln-"+set)
		if err := copyTree(b.seeds[set], dir); err != nil {
			return err
		}

		k, err := startKiln(b.cfg.kiln, dir, b.policy, nil)
		if err != nil {
			return err
		}

		b.kilns[set] = k

		id, err := createSchematic(ctx, b.client, k, schematicFor("sd-boot", "kiln.bench="+b.runID+"-warmup"))
		if err != nil {
			return err
		}

		if _, err := get(ctx, b.client, k.url("/image/"+id+"/"+talosVersion+"/metal-amd64.iso"), "", false); err != nil {
			return fmt.Errorf("warm-up build (%s): %w\n%s", set, err, lastLines(k.logs.String(), 20))
		}
	}

	return nil
}

func (b *bench) buildCase(ctx context.Context, c buildCase) error {
	k := b.kilns[c.input]
	kilnSupported := true

	for round := range c.rounds {
		arg := fmt.Sprintf("kiln.bench=%s%s-r%d", b.runID, c.slug(), round)

		order := []string{"kiln", "talos"}
		if round%2 == 1 {
			order = []string{"talos", "kiln"}
		}

		for _, who := range order {
			if ctx.Err() != nil {
				return ctx.Err()
			}

			var (
				s   sample
				err error
			)

			switch who {
			case "kiln":
				if !kilnSupported {
					continue
				}

				s, err = b.kilnBuild(ctx, k, c, arg)
				if errors.Is(err, errUnsupported) {
					kilnSupported = false

					b.unsupported = append(b.unsupported, [2]string{c.name(), strings.TrimPrefix(err.Error(), errUnsupported.Error()+": ")})

					continue
				}
			case "talos":
				s, err = b.talos.build(ctx, c, arg, k.url(""))
			}

			if err != nil {
				return err
			}

			s.Case, s.Round, s.Dropped = c.name(), round, round == 0
			b.record(s)
		}
	}

	return nil
}

// kilnBuild is one cold GET of c's asset from k, for a new schematic.
func (b *bench) kilnBuild(ctx context.Context, k *kilnProc, c buildCase, arg string) (sample, error) {
	s := sample{Contender: "kiln"}

	id, err := createSchematic(ctx, b.client, k, schematicFor(c.bootloader, arg))
	if err != nil {
		return s, err
	}

	before, err := allocated(k.dataDir)
	if err != nil {
		return s, err
	}

	settle()

	t0, err := readProcTimes(k.pid)
	if err != nil {
		return s, err
	}

	if err := resetPeakRSS(k.pid); err != nil {
		return s, err
	}

	d, err := get(ctx, b.client, k.url("/image/"+id+"/"+talosVersion+"/"+c.path), "", false)
	if err != nil {
		if errors.Is(err, errUnsupported) {
			return s, err
		}

		return s, fmt.Errorf("kiln: %w\n%s", err, lastLines(k.logs.String(), 10))
	}

	t1, err := readProcTimes(k.pid)
	if err != nil {
		return s, err
	}

	if s.PeakRSS, err = peakRSS(k.pid); err != nil {
		return s, err
	}

	after, err := allocated(k.dataDir)
	if err != nil {
		return s, err
	}

	used := t1.sub(t0)
	s.Wall, s.TTFB = d.wall.Seconds(), d.ttfb.Seconds()
	s.User, s.Sys, s.CPU = used.user.Seconds(), used.sys.Seconds(), (used.cpu + used.children).Seconds()
	s.Size, s.Bytes, s.Allocated, s.Cache = d.bytes, d.bytes, after-before, d.cache

	if d.cache != "miss" {
		return s, fmt.Errorf("kiln answered X-Kiln-Cache %q for a new schematic, want miss", d.cache)
	}

	return s, nil
}

// freshCase: kiln started on a copy of the seeded data directory (nothing
// verified, extracted or built) until its first ISO is downloaded, paired
// with Talos's imager making the same ISO.
func (b *bench) freshCase(ctx context.Context, set string) error {
	name := "first metal-amd64.iso of a fresh kiln, sd-boot " + set
	c := buildCase{input: set, path: "metal-amd64.iso", kind: "iso", format: "raw", bootloader: "sd-boot"}
	dir := filepath.Join(b.cfg.out, "kiln-fresh")

	defer os.RemoveAll(dir) //nolint:errcheck

	for round := range b.cfg.rounds {
		arg := fmt.Sprintf("kiln.bench=%s-fresh-%s-r%d", b.runID, set, round)

		order := []string{"kiln", "talos"}
		if round%2 == 1 {
			order = []string{"talos", "kiln"}
		}

		for _, who := range order {
			var (
				s   sample
				err error
			)

			if who == "kiln" {
				if err := copyTree(b.seeds[set], dir); err != nil {
					return err
				}

				s, err = b.freshKiln(ctx, dir, arg)
			} else {
				s, err = b.talos.build(ctx, c, arg, b.kilns[set].url(""))
			}

			if err != nil {
				return err
			}

			s.Case, s.Round, s.Dropped = name, round, round == 0
			b.record(s)
		}
	}

	return nil
}

func (b *bench) freshKiln(ctx context.Context, dir, arg string) (sample, error) {
	s := sample{Contender: "kiln"}

	settle()

	start := time.Now()

	k, err := startKiln(b.cfg.kiln, dir, b.policy, nil)
	if err != nil {
		return s, err
	}
	defer k.stop()

	s.Startup = time.Since(start).Seconds()

	id, err := createSchematic(ctx, b.client, k, schematicFor("sd-boot", arg))
	if err != nil {
		return s, err
	}

	d, err := get(ctx, b.client, k.url("/image/"+id+"/"+talosVersion+"/metal-amd64.iso"), "", false)
	if err != nil {
		return s, fmt.Errorf("fresh kiln: %w\n%s", err, lastLines(k.logs.String(), 10))
	}

	s.Wall = time.Since(start).Seconds()
	s.TTFB = d.ttfb.Seconds()

	t, err := readProcTimes(k.pid)
	if err != nil {
		return s, err
	}

	s.User, s.Sys, s.CPU = t.user.Seconds(), t.sys.Seconds(), (t.cpu + t.children).Seconds()

	if s.PeakRSS, err = peakRSS(k.pid); err != nil {
		return s, err
	}

	s.Size, s.Bytes, s.Cache = d.bytes, d.bytes, d.cache

	return s, nil
}

func (b *bench) recordVersions() {
	env := b.talos.env()
	b.versions = [][2]string{
		{"kiln", b.cfg.kilnVersion + " (" + b.cfg.kiln + ")"},
		{"Talos imager", "github.com/siderolabs/talos/pkg/imager v1.13.9, profile version " + talosVersion + " (" + b.cfg.talosImager + ")"},
		{"xorriso", toolVersion(env, "xorriso", "-version")},
		{"mkfs.vfat", "dosfstools " + toolVersion(env, "dpkg-query", "-W", "-f", "${Version}", "dosfstools")},
		{"mcopy (shim)", toolVersion(env, "mcopy", "--version")},
		{"mkfs.xfs (shim)", toolVersion(env, "mkfs.xfs", "-V")},
		{"mksquashfs (shim)", toolVersion(env, "mksquashfs", "-version")},
		{"cpio", toolVersion(env, "cpio", "--version")},
		{"grub-mkrescue", toolVersion(env, "grub-mkrescue", "--version")},
		{"zstd", toolVersion(env, "zstd", "--version")},
		{"xz", toolVersion(env, "xz", "--version")},
		{"nginx", nginxVersion(b.cfg.nginx)},
	}
}
