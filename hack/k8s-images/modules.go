package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"

	"github.com/blang/semver/v4"
)

// module is one answer of `go mod download -json`.
type module struct {
	Path, Version, Dir string
	Error              string
}

// proxy downloads modules through the go command, so GOPROXY, GONOSUMDB,
// GOFLAGS and the module cache apply as for any build.
type proxy struct {
	goBin string
	// slots bounds the go commands running at once.
	slots chan struct{}
	// dir is where the go command runs: outside any module, so that the
	// repository's go.mod plays no part.
	dir string
}

func newProxy(goBin, dir string, jobs int) *proxy {
	return &proxy{goBin: goBin, dir: dir, slots: make(chan struct{}, max(jobs, 1))}
}

// perCommand is how many versions one go command is given: it asks the
// proxy for them one after the other, so small batches in parallel are
// faster than one long list.
const perCommand = 3

// download runs `go mod download -json` for path at every version and
// returns the answer for each, including those the proxy does not serve
// (Error set).
func (p *proxy) download(ctx context.Context, path string, versions []string) (map[string]module, error) {
	out := map[string]module{}

	var (
		mu       sync.Mutex
		wg       sync.WaitGroup
		firstErr error
	)

	for i := 0; i < len(versions); i += perCommand {
		var args []string
		for _, v := range versions[i:min(i+perCommand, len(versions))] {
			args = append(args, path+"@"+v)
		}

		wg.Go(func() {
			select {
			case p.slots <- struct{}{}:
			case <-ctx.Done():
				return
			}

			mods, err := p.run(ctx, args)

			<-p.slots

			mu.Lock()
			defer mu.Unlock()

			if err != nil && firstErr == nil {
				firstErr = err
			}

			for _, m := range mods {
				out[m.Version] = m
			}
		})
	}

	wg.Wait()

	if firstErr != nil {
		return nil, firstErr
	}

	if err := ctx.Err(); err != nil {
		return nil, err
	}

	for _, v := range versions {
		if _, ok := out[v]; !ok {
			return nil, fmt.Errorf("go mod download gave no answer for %s@%s", path, v)
		}
	}

	return out, nil
}

func (p *proxy) run(ctx context.Context, args []string) ([]module, error) {
	cmd := exec.CommandContext(ctx, p.goBin, append([]string{"mod", "download", "-json"}, args...)...)
	cmd.Dir = p.dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")

	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr

	// go mod download exits 1 when any version is missing; the JSON says
	// which, so the exit status alone is no error.
	runErr := cmd.Run()

	var mods []module

	dec := json.NewDecoder(&stdout)

	for {
		var m module
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("go mod download: reading its JSON: %w (stderr: %s)", err, stderr.String())
		}

		mods = append(mods, m)
	}

	if len(mods) == 0 && runErr != nil {
		return nil, fmt.Errorf("go mod download: %w: %s", runErr, stderr.String())
	}

	return mods, nil
}

// notServed reports whether a download error says the proxy does not
// have that version (as opposed to a network or cache failure, which must
// stop the generator rather than drop a row).
func notServed(m module) bool {
	if m.Error == "" {
		return false
	}

	for _, s := range []string{"404 Not Found", "410 Gone", "403 Forbidden", "unknown revision", "invalid version", "not found"} {
		if strings.Contains(m.Error, s) {
			return true
		}
	}

	return false
}

// discover finds the machinery versions the proxy serves from first on,
// downloading each. Proxies that list versions (`@v/list`) are not all
// willing to, and a filtered proxy may serve v1.13.9 but not v1.13.1, so
// versions are asked for one by one: per minor, patches until four in a
// row past the highest found are missing, and alpha/beta/rc pre-releases
// of .0 until two in a row are; minors until one has none. Minors are
// asked for a few at a time, in parallel.
func (p *proxy) discover(ctx context.Context, first semver.Version) (map[string]module, error) {
	served := map[string]module{}

	const window = 4

	for from := first.Minor; ; from += window {
		found := make([]map[string]module, window)
		errs := make([]error, window)

		var wg sync.WaitGroup

		for i := range uint64(window) {
			wg.Go(func() { found[i], errs[i] = p.discoverMinor(ctx, first, from+i) })
		}

		wg.Wait()

		for i := range window {
			if errs[i] != nil {
				return nil, errs[i]
			}

			if len(found[i]) == 0 && from+uint64(i) > first.Minor {
				return served, nil
			}

			maps.Copy(served, found[i])
		}
	}
}

// discoverMinor finds the served versions of one minor.
func (p *proxy) discoverMinor(ctx context.Context, first semver.Version, minor uint64) (map[string]module, error) {
	served := map[string]module{}

	// A series is patches or one kind of pre-release: asked up to slack
	// past the highest found.
	type series struct {
		format string
		asked  int
		high   int // highest found, -1 none
		slack  int
		from   int
	}

	all := []*series{{format: fmt.Sprintf("v%d.%d.%%d", first.Major, minor), high: -1, slack: 4}}
	if minor == first.Minor {
		all[0].from = int(first.Patch)
	}

	// Pre-releases of first itself come before it.
	if minor != first.Minor || first.Patch > 0 {
		for _, pre := range []string{"alpha", "beta", "rc"} {
			all = append(all, &series{format: fmt.Sprintf("v%d.%d.0-%s.%%d", first.Major, minor, pre), high: -1, slack: 2})
		}
	}

	for _, s := range all {
		s.asked = s.from
	}

	for {
		var ask []string

		owner := map[string]*series{}

		for _, s := range all {
			for ; s.asked <= s.high+s.slack || s.asked < s.from+s.slack; s.asked++ {
				v := fmt.Sprintf(s.format, s.asked)
				ask = append(ask, v)
				owner[v] = s
			}
		}

		if len(ask) == 0 {
			return served, nil
		}

		got, err := p.download(ctx, machineryPath, ask)
		if err != nil {
			return nil, err
		}

		for _, v := range ask {
			m := got[v]

			if m.Error != "" {
				if !notServed(m) {
					return nil, fmt.Errorf("%s@%s: %s", machineryPath, v, m.Error)
				}

				continue
			}

			s := owner[v]

			var n int
			if _, err := fmt.Sscanf(v, s.format, &n); err == nil && n > s.high {
				s.high = n
			}

			served[v] = m
		}
	}
}

// sortVersions sorts "vX.Y.Z[-pre]" by semver precedence.
func sortVersions(vs []string) {
	slices.SortFunc(vs, func(a, b string) int {
		return semver.MustParse(a[1:]).Compare(semver.MustParse(b[1:]))
	})
}
