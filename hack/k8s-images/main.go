// Command k8s-images writes release/kubernetes_table.go, kiln's table of
// the cluster images (Kubernetes components, kubelet, etcd, CoreDNS,
// flannel, pause, kube-network-policies) of every Talos version.
//
// Nothing in it is typed by hand. For every version of
// github.com/siderolabs/talos/pkg/machinery the Go module proxy serves from
// v1.10.0 on (pre-releases included), it downloads that module with
// `go mod download -json`, and the talos main module of the same version
// where the proxy serves it, and reads their Go source:
//
//   - which images `talosctl images default` prints, and in which order:
//     the fmt.Printf calls of the "default" (later "k8s-bundle") command in
//     cmd/talosctl/cmd/talos;
//   - how each is computed: pkg/images.List, and for the config defaults the
//     Image methods of the machinery's v1alpha1 types;
//   - the constants those use (machinery constants, pkg/images'
//     DefaultSandboxImage), evaluated as Go evaluates them.
//
// Where the proxy serves machinery but not the talos module of a version,
// the talos module of every served version of the same minor is applied
// to that machinery, and they must all agree.
//
//	go run ./hack/k8s-images -o release/kubernetes_table.go   # make k8s-images
//	go run ./hack/k8s-images -check release/kubernetes_table.go
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"go/format"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"

	"github.com/blang/semver/v4"
)

// firstVersion is the oldest Talos version in the table.
var firstVersion = semver.Version{Major: 1, Minor: 10}

func main() {
	out := flag.String("o", "", "write the table to this file")
	check := flag.String("check", "", "compare this file with the table; exit 1 if they differ")
	jobs := flag.Int("jobs", 8, "go commands run at once")

	flag.Parse()

	if (*out == "") == (*check == "") {
		fmt.Fprintln(os.Stderr, "usage: k8s-images -o FILE | -check FILE")
		os.Exit(2)
	}

	if err := run(context.Background(), *out, *check, *jobs); err != nil {
		fmt.Fprintln(os.Stderr, "k8s-images:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out, check string, jobs int) error {
	src, err := generate(ctx, jobs)
	if err != nil {
		return err
	}

	if out != "" {
		return os.WriteFile(out, src, 0o644)
	}

	old, err := os.ReadFile(check)
	if err != nil {
		return err
	}

	return compare(check, old, src)
}

// compare fails with the first differing line when committed is not want.
func compare(file string, committed, want []byte) error {
	if bytes.Equal(committed, want) {
		return nil
	}

	a, b := strings.Split(string(committed), "\n"), strings.Split(string(want), "\n")
	for i := 0; i < max(len(a), len(b)); i++ {
		var x, y string
		if i < len(a) {
			x = a[i]
		}

		if i < len(b) {
			y = b[i]
		}

		if x != y {
			return fmt.Errorf("%s is not what the module proxy gives (run make k8s-images and commit it); line %d:\n  committed: %s\n  derived:   %s", file, i+1, x, y)
		}
	}

	return errors.New(file + " differs")
}

// entry is one row of the table with where it was read.
type entry struct {
	version string
	row     row
	// layoutFrom is the talos module version whose talosctl and pkg/images
	// gave the order and the pause image.
	layoutFrom string
}

// generate derives the table from the module proxy and renders it.
func generate(ctx context.Context, jobs int) ([]byte, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return nil, err
	}

	p := newProxy(goBin, os.TempDir(), jobs)

	machinery, err := p.discover(ctx, firstVersion)
	if err != nil {
		return nil, err
	}

	versions := make([]string, 0, len(machinery))
	for v := range machinery {
		versions = append(versions, v)
	}

	sortVersions(versions)

	if len(versions) == 0 {
		return nil, fmt.Errorf("the module proxy serves no %s from %s on", machineryPath, firstVersion)
	}

	talos, err := p.download(ctx, talosPath, versions)
	if err != nil {
		return nil, err
	}

	for v, m := range talos {
		if m.Error != "" && !notServed(m) {
			return nil, fmt.Errorf("%s@%s: %s", talosPath, v, m.Error)
		}
	}

	var (
		entries []entry
		leftOut []string
	)

	for _, v := range versions {
		e, err := deriveVersion(v, machinery, talos, versions)
		if errors.Is(err, errLeftOut) {
			leftOut = append(leftOut, v)
			continue
		}

		if err != nil {
			return nil, fmt.Errorf("talos %s: %w", v, err)
		}

		slog.Debug("derived", "version", v, "layout", e.layoutFrom)

		entries = append(entries, e)
	}

	return render(entries, leftOut)
}

// errLeftOut marks a version whose row cannot be read: a pre-release whose
// own talos module the proxy does not serve (pre-releases of one minor
// differ in what talosctl prints, so none stands in for another).
var errLeftOut = errors.New("left out")

// deriveVersion computes the row of v with the talos module of v or, for a
// release whose own is not served, with that of every served release of
// v's minor, which must all agree.
func deriveVersion(v string, machinery, talos map[string]module, versions []string) (entry, error) {
	if m := talos[v]; m.Error == "" {
		r, err := derive(machinery[v].Dir, m.Dir)
		if err != nil {
			return entry{}, err
		}

		return entry{version: v, row: r, layoutFrom: v}, nil
	}

	sv := semver.MustParse(v[1:])
	if len(sv.Pre) > 0 {
		return entry{}, fmt.Errorf("%w: the module proxy does not serve %s@%s", errLeftOut, talosPath, v)
	}

	var (
		e     entry
		tried []string
	)

	for _, t := range versions {
		st := semver.MustParse(t[1:])
		if st.Major != sv.Major || st.Minor != sv.Minor || len(st.Pre) > 0 || talos[t].Error != "" {
			continue
		}

		r, err := derive(machinery[v].Dir, talos[t].Dir)
		if err != nil {
			return entry{}, fmt.Errorf("with the talos module of %s: %w", t, err)
		}

		if len(tried) > 0 && !slices.Equal(r.Images, e.row.Images) {
			return entry{}, fmt.Errorf("the talos module of %s is not served, and those of %s and %s list its images differently", v, tried[0], t)
		}

		// The nearest served release before v is the one the table names;
		// the others confirm it.
		if len(tried) == 0 || st.LT(sv) {
			e = entry{version: v, row: r, layoutFrom: t}
		}

		tried = append(tried, t)
	}

	if len(tried) == 0 {
		return entry{}, fmt.Errorf("the module proxy serves no talos module of a %d.%d release to read talosctl from", sv.Major, sv.Minor)
	}

	// Which image a flag default re-tags was read from another version:
	// say nothing of what this version's talosctl prints.
	e.row.Printed = e.row.Images

	return e, nil
}

const header = `// Code generated by go run ./hack/k8s-images; DO NOT EDIT.

package release

// kubernetesTable holds, for every Talos version from %s to %s that the
// Go module proxy served when it was generated (%d versions, pre-releases
// included), the cluster images a node of that version runs by default, in
// the order ` + "`talosctl images default`" + ` prints them (the installer it also
// printed up to v1.11 left out). "Runs by default" is what pkg/images.List
// gives for a default config, which is what the node's control-plane
// controller calls; talosctl prints the same except where a flag default
// re-tags an image (noted on the row). Each row was read from the Go source of
// github.com/siderolabs/talos/pkg/machinery and github.com/siderolabs/talos
// of that version: the constants, the v1alpha1 config defaults,
// pkg/images.List and talosctl's print order. Where the proxy serves the
// machinery but not the talos module of a release, every served talos
// module of the same minor was applied to it and agreed.
//
// Left out, as the proxy serves their machinery but not their own talos
// module (pre-releases of a minor differ in what talosctl prints):
%s
var kubernetesTable = []kubernetesRow{
`

func render(entries []entry, leftOut []string) ([]byte, error) {
	var b bytes.Buffer

	fmt.Fprintf(&b, header, entries[0].version, entries[len(entries)-1].version, len(entries), commentList(leftOut))

	for _, e := range entries {
		if e.layoutFrom == e.version {
			fmt.Fprintf(&b, "\t// %s: order and pause image from talos %s.\n", e.version, e.layoutFrom)
		} else {
			fmt.Fprintf(&b, "\t// %s: talos %s is not served; order and pause image from talos %s (every served %s agrees).\n",
				e.version, e.version, e.layoutFrom, minorOf(e.version))
		}

		var differ []string

		for i, img := range e.row.Images {
			if p := e.row.Printed[i]; p != img {
				differ = append(differ, p[strings.LastIndex(p, "/")+1:])
			}
		}

		if len(differ) > 0 {
			fmt.Fprintf(&b, "\t// talosctl %s prints %s instead: its flag defaults re-tag them, the node does not.\n",
				e.version, strings.Join(differ, ", "))
		}

		fmt.Fprintf(&b, "\t{Version: MustParseVersion(%q), Images: []string{\n", e.version)

		for _, img := range e.row.Images {
			fmt.Fprintf(&b, "\t\t%q,\n", img)
		}

		b.WriteString("\t}},\n")
	}

	b.WriteString("}\n")

	return format.Source(b.Bytes())
}

// commentList is vs as "// a, b, c." lines of at most 78 columns.
func commentList(vs []string) string {
	if len(vs) == 0 {
		return "// none."
	}

	var (
		lines []string
		line  = "//"
	)

	for i, v := range vs {
		w := " " + v + ","
		if i == len(vs)-1 {
			w = " " + v + "."
		}

		if len(line)+len(w) > 78 {
			lines = append(lines, line)
			line = "//"
		}

		line += w
	}

	return strings.Join(append(lines, line), "\n")
}

func minorOf(v string) string {
	sv := semver.MustParse(v[1:])

	return fmt.Sprintf("v%d.%d", sv.Major, sv.Minor)
}
