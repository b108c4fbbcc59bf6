package factoryclient

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/siderolabs/image-factory/pkg/client"
	"github.com/siderolabs/image-factory/pkg/schematic"
)

// TestSideroCalls: the calls of Sidero's air-gap plan (a schematic looked up
// by ID, kernel and initramfs fetched by plain GET from the public routes, an
// installer reference in the machine config), and those Omni and the Omni
// bare-metal provider make around them, made with the factory's own client
// against kiln --demo, unchanged: nothing here knows it talks to kiln.
func TestSideroCalls(t *testing.T) {
	bin := os.Getenv("KILN_BIN")
	if bin == "" {
		if os.Getenv("KILN_REQUIRE_FIXTURES") == "1" {
			t.Fatal("KILN_BIN is not set: run this test through make factory-client")
		}

		t.Skip("KILN_BIN is not set (make factory-client sets it)")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	base := "http://" + startKiln(t, bin)
	// Omni's client: the factory's, with a long timeout for builds.
	c, err := client.New(base, client.WithClient(http.Client{Timeout: 10 * time.Minute}))
	if err != nil {
		t.Fatal(err)
	}

	// A ServerClass's schematic: extensions and kernel args.
	sc := schematic.Schematic{Customization: schematic.Customization{
		ExtraKernelArgs:  []string{"console=ttyS0", "sidero.serverclass=workers"},
		SystemExtensions: schematic.SystemExtensions{OfficialExtensions: []string{"siderolabs/gvisor", "siderolabs/intel-ucode"}},
	}}

	body, err := sc.Marshal()
	if err != nil {
		t.Fatal(err)
	}

	wantID, err := sc.ID()
	if err != nil {
		t.Fatal(err)
	}

	id, normalized, err := c.SchematicCreate(ctx, sc)
	if err != nil {
		t.Fatalf("SchematicCreate: %v", err)
	}

	if got, _ := normalized.Marshal(); id != wantID || !bytes.Equal(got, body) {
		t.Fatalf("SchematicCreate = %s\n%s\nthe factory's own code gives %s\n%s", id, got, wantID, body)
	}

	// kiln's own CLI agrees: it prints the ID, then the canonical form as a
	// second YAML document.
	cmd := exec.Command(bin, "schematic", "id", "-")
	cmd.Stdin = bytes.NewReader(body)

	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kiln schematic id: %v", err)
	}

	if cliID, canonical, _ := strings.Cut(string(out), "\n---\n"); cliID != id || canonical != string(body) {
		t.Fatalf("kiln schematic id = %q, canonical\n%s\nthe factory's client got %s\n%s", cliID, canonical, id, body)
	}

	// Sidero's lookup by ID; Omni's too (404 would mean "not known to this factory").
	got, err := c.SchematicGet(ctx, id)
	if err != nil {
		t.Fatalf("SchematicGet: %v", err)
	}

	if b, _ := got.Marshal(); !bytes.Equal(b, body) {
		t.Fatalf("SchematicGet(%s) =\n%s\nwant\n%s", id, b, body)
	}

	if _, err := c.SchematicGet(ctx, strings.Repeat("0", 64)); !client.IsHTTPErrorCode(err, http.StatusNotFound) {
		t.Fatalf("SchematicGet(unknown) = %v, want an HTTP 404", err)
	}

	versions, err := c.Versions(ctx)
	if err != nil || len(versions) == 0 {
		t.Fatalf("Versions = %v, %v", versions, err)
	}

	// The newest, as a provider configured with "latest" picks it.
	v := versions[len(versions)-1]
	t.Logf("Versions = %v; using %s", versions, v)

	exts, err := c.ExtensionsVersions(ctx, v)
	if err != nil {
		t.Fatalf("ExtensionsVersions(%s): %v", v, err)
	}

	for _, want := range sc.Customization.SystemExtensions.OfficialExtensions {
		i := slices.IndexFunc(exts, func(e client.ExtensionInfo) bool { return e.Name == want })
		if i < 0 {
			t.Fatalf("ExtensionsVersions(%s) has no %s: %+v", v, want, exts)
		}

		// Omni takes the extension's version from the ref, after the tag's
		// colon; the ref names the image in kiln's registry.
		e := exts[i]
		path, onKiln := strings.CutPrefix(e.Ref, strings.TrimPrefix(base, "http://")+"/")
		if _, tag, ok := strings.Cut(path, ":"); !onKiln || !ok || tag == "" ||
			!strings.HasPrefix(e.Digest, "sha256:") || e.Author == "" || e.Description == "" {
			t.Fatalf("ExtensionsVersions(%s): %+v, want a ref on kiln's host with a tag, a digest, an author and a description", v, e)
		}
	}

	t.Logf("ExtensionsVersions(%s): %d extensions, e.g. %+v", v, len(exts), exts[0])

	if _, err := c.OverlaysVersions(ctx, v); err != nil {
		t.Fatalf("OverlaysVersions(%s): %v", v, err)
	}

	// Omni lists talosctl downloads; each URL is on kiln and downloads.
	talosctls, err := c.TalosctlList(ctx, v)
	if err != nil || !slices.Contains(talosctls, base+"/talosctl/"+v+"/talosctl-linux-amd64") {
		t.Fatalf("TalosctlList(%s) = %v, %v; want %s/talosctl/%s/talosctl-linux-amd64 among them", v, talosctls, err, base, v)
	}

	for _, u := range talosctls {
		if len(get(ctx, t, u, "application/octet-stream")) == 0 {
			t.Fatalf("%s is empty", u)
		}
	}

	// The URLs the provider and Sidero's Environment build themselves.
	image := base + "/image/" + id + "/" + v + "/"
	kernelURL, initramfsURL := image+"kernel-amd64", image+"initramfs-amd64.xz"

	kernel := get(ctx, t, kernelURL, "application/octet-stream")
	if len(kernel) < 2 || string(kernel[:2]) != "MZ" {
		t.Fatalf("%s is not an EFI-stub kernel (PE's MZ)", kernelURL)
	}

	// Named .xz whatever it holds: zstd from Talos 1.8, and an uncompressed
	// cpio of CPU microcode first when an extension (intel-ucode) has some.
	if initramfs := get(ctx, t, initramfsURL, "application/x-xz"); !slices.ContainsFunc([]string{"070701", "\x28\xb5\x2f\xfd", "\xfd7zXZ\x00"},
		func(magic string) bool { return bytes.HasPrefix(initramfs, []byte(magic)) }) {
		t.Fatalf("%s is no initramfs the kernel reads (newc cpio, zstd or xz): % x", initramfsURL, initramfs[:min(8, len(initramfs))])
	}

	cmdline := strings.TrimSpace(string(get(ctx, t, image+"cmdline-metal-amd64", "application/octet-stream")))
	for _, arg := range sc.Customization.ExtraKernelArgs {
		if !slices.Contains(strings.Fields(cmdline), arg) {
			t.Fatalf("cmdline-metal-amd64 = %q, want %s in it", cmdline, arg)
		}
	}

	// The provider chains iPXE to /pxe/ with the arch as iPXE names it
	// (${buildarch}, x86_64) or as Talos does. kiln's script is the
	// factory's plus an EFI branch for old iPXE builds (builder/cmdline's
	// PXEScript says why): every kernel line boots the URL above with the
	// command line above, every initrd line loads the initramfs above.
	for _, arch := range []string{"amd64", "x86_64"} {
		script := string(get(ctx, t, base+"/pxe/"+id+"/"+v+"/metal-"+arch, "text/plain; charset=utf-8"))

		var kernels, initrds int

		for line := range strings.Lines(script) {
			switch f := strings.Fields(line); {
			case len(f) > 0 && f[0] == "kernel":
				kernels++

				if !strings.HasPrefix(line, "kernel "+kernelURL+" "+cmdline) {
					t.Fatalf("PXE metal-%s kernel line %q, want %s %s", arch, line, kernelURL, cmdline)
				}
			case len(f) > 0 && f[0] == "initrd":
				initrds++

				if f[len(f)-1] != initramfsURL {
					t.Fatalf("PXE metal-%s initrd line %q, want %s", arch, line, initramfsURL)
				}
			}
		}

		if !strings.HasPrefix(script, "#!ipxe\n") || kernels == 0 || initrds != kernels || !strings.HasSuffix(script, "boot\n") {
			t.Fatalf("PXE metal-%s =\n%s\nwant an iPXE script that loads a kernel and its initrd and boots", arch, script)
		}
	}

	// machine.install.image, as Omni writes it for Talos >= 1.10: kiln builds
	// it on this first pull.
	ref, err := name.ParseReference(strings.TrimPrefix(base, "http://")+"/metal-installer/"+id+":"+v, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}

	desc, err := remote.Head(ref, remote.WithContext(ctx))
	if err != nil {
		t.Fatalf("remote.Head(%s): %v", ref, err)
	}

	if desc.MediaType != types.OCIImageIndex {
		t.Fatalf("remote.Head(%s) = %s, want an OCI image index", ref, desc.MediaType)
	}

	idx, err := remote.Index(ref, remote.WithContext(ctx))
	if err != nil {
		t.Fatalf("remote.Index(%s): %v", ref, err)
	}

	if d, err := idx.Digest(); err != nil || d != desc.Digest {
		t.Fatalf("remote.Index(%s) digest = %v, %v; HEAD said %s", ref, d, err, desc.Digest)
	}

	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}

	var platforms []string
	for _, d := range m.Manifests {
		platforms = append(platforms, d.Platform.String())
	}

	if !slices.Equal(platforms, []string{"linux/amd64", "linux/arm64"}) {
		t.Fatalf("remote.Index(%s) platforms = %v, want linux/amd64 and linux/arm64", ref, platforms)
	}

	img, err := idx.Image(m.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}

	if cfg, err := img.ConfigFile(); err != nil || cfg.Architecture != "amd64" || len(cfg.Config.Entrypoint) == 0 {
		t.Fatalf("%s linux/amd64 config = %+v, %v", ref, cfg, err)
	}

	t.Logf("schematic %s; %s %d bytes; installer %s@%s", id, kernelURL, len(kernel), ref, desc.Digest)
}

// get is Sidero's download: a plain GET that follows redirects and wants a
// 2xx; here 200, a non-empty body and contentType.
func get(ctx context.Context, t *testing.T, url, contentType string) []byte {
	t.Helper()

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}

	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()

	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}

	if resp.StatusCode != http.StatusOK || len(body) == 0 || resp.Header.Get("Content-Type") != contentType {
		t.Fatalf("GET %s = %s, %s, %d bytes; want 200, %s, a body\n%.400s", url, resp.Status, resp.Header.Get("Content-Type"), len(body), contentType, body)
	}

	return body
}

// startKiln runs bin serve --demo on a free port of its own choosing and
// returns the address it logs; the process ends with the test.
func startKiln(t *testing.T, bin string) string {
	t.Helper()

	cmd := exec.Command(bin, "serve", "--listen", "127.0.0.1:0", "--log-format", "json", "--data-dir", t.TempDir(), "--demo")

	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}

	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}

	var (
		logs  strings.Builder
		mu    sync.Mutex
		addrc = make(chan string, 1)
		done  = make(chan error, 1)
	)

	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			mu.Lock()
			logs.WriteString(sc.Text() + "\n")
			mu.Unlock()

			var entry struct{ Msg, Address string }
			if json.Unmarshal(sc.Bytes(), &entry) == nil && entry.Msg == "kiln serving" {
				addrc <- entry.Address
			}
		}

		done <- cmd.Wait()
	}()

	logged := func() string {
		mu.Lock()
		defer mu.Unlock()

		return logs.String()
	}

	t.Cleanup(func() {
		_ = cmd.Process.Kill() //nolint:errcheck // it may have exited
		<-done

		if t.Failed() {
			t.Logf("kiln log:\n%s", logged())
		}
	})

	select {
	case addr := <-addrc:
		return addr
	case err := <-done:
		done <- err
		t.Fatalf("kiln exited before serving: %v\n%s", err, logged())
	case <-time.After(2 * time.Minute):
		// Seeding the demo release takes seconds, more on a loaded machine.
		t.Fatalf("kiln did not start serving in 2 minutes\n%s", logged())
	}

	return ""
}
