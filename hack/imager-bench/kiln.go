package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kiln-dev/kiln/demo"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/signing/signingtest"
)

// talosVersion is the version of kiln's bench release and of the imager's
// profile: the imager's own (its quirks and its UKI .uname follow it).
const talosVersion = "v1.13.9"

// kilnProc is a running kiln serve.
type kilnProc struct {
	cmd     *exec.Cmd
	pid     int // kiln's, which is cmd's unless kiln runs under perf
	addr    string
	dataDir string
	logs    *lockedBuffer
	done    chan error
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) WriteString(s string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.WriteString(s)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()

	return b.buf.String()
}

// startKiln runs kiln serve on a free loopback port over dataDir and waits
// until it says where it serves. wrapper, if any, is a command line kiln
// runs under (perf record ... --), whose child is then kiln.
func startKiln(bin, dataDir, policy string, wrapper []string) (*kilnProc, error) {
	args := append(append([]string(nil), wrapper...), bin, "serve", "--listen", "127.0.0.1:0", "--log-format", "json",
		"--data-dir", dataDir, "--trust-policy", policy)

	cmd := exec.Command(args[0], args[1:]...)

	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}

	if err := cmd.Start(); err != nil {
		return nil, err
	}

	k := &kilnProc{cmd: cmd, pid: cmd.Process.Pid, dataDir: dataDir, logs: &lockedBuffer{}, done: make(chan error, 1)}
	addrc := make(chan string, 1)

	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)

		for sc.Scan() {
			line := sc.Text()
			k.logs.WriteString(line + "\n")

			var entry struct {
				Msg     string `json:"msg"`
				Address string `json:"address"`
			}

			if json.Unmarshal([]byte(line), &entry) == nil && entry.Msg == "kiln serving" {
				select {
				case addrc <- entry.Address:
				default:
				}
			}
		}

		k.done <- cmd.Wait()
	}()

	select {
	case k.addr = <-addrc:
	case err := <-k.done:
		return nil, fmt.Errorf("kiln exited before serving: %v\n%s", err, lastLines(k.logs.String(), 20))
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		<-k.done

		return nil, fmt.Errorf("kiln did not serve within 60 s\n%s", lastLines(k.logs.String(), 20))
	}

	if len(wrapper) > 0 {
		if k.pid, err = onlyChild(cmd.Process.Pid); err != nil {
			k.stop()
			return nil, err
		}
	}

	return k, nil
}

// onlyChild is the pid of the one child of pid (kiln under perf record).
func onlyChild(pid int) (int, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return 0, err
	}

	var child int

	f := strings.Fields(string(data))
	if len(f) != 1 {
		return 0, fmt.Errorf("process %d has children %q, want one", pid, f)
	}

	_, err = fmt.Sscan(f[0], &child)

	return child, err
}

// stop ends kiln with SIGTERM (and SIGKILL after 30 s).
func (k *kilnProc) stop() {
	_ = syscall.Kill(k.pid, syscall.SIGTERM)

	select {
	case <-k.done:
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(k.pid, syscall.SIGKILL)
		<-k.done
	}
}

func (k *kilnProc) url(path string) string { return "http://" + k.addr + path }

// seedKiln makes a kiln data directory holding one release, v1.13.9, of the
// bench's inputs with the given initramfs, in kiln's embedded registry:
// pushed with the admin credential, every image signed by key as the
// upstream repository it stands for, and its release lock recorded, as
// kiln mirror leaves a release. Nothing is extracted or built yet.
func seedKiln(ctx context.Context, bin, dir, policy string, key *signingtest.Key, in *inputs, initramfs string) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}

	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}

	k, err := startKiln(bin, dir, policy, nil)
	if err != nil {
		return err
	}
	defer k.stop()

	password, err := os.ReadFile(filepath.Join(dir, "auth", "admin-password"))
	if err != nil {
		return fmt.Errorf("kiln's admin credential: %w", err)
	}

	auth := &authn.Basic{Username: "admin", Password: strings.TrimSpace(string(password))}
	opts := []remote.Option{remote.WithAuth(auth)}

	reg, err := name.NewRegistry(k.addr, name.Insecure)
	if err != nil {
		return err
	}

	files := map[string]string{
		release.KernelAsset: in.kernel, release.InitramfsAsset: initramfs,
		release.SDBootAsset: in.sdBoot, release.SDStubAsset: in.sdStub,
	}

	if _, err := demo.Push(ctx, demo.Options{
		Version: talosVersion, Registry: reg, Remote: opts, KernelVersion: in.kernelVersion,
		// Debian's GRUB, the one Talos's imager runs here (grub-mkrescue,
		// grub-mkimage read /usr/lib/grub): without it the release would
		// get demo's synthetic i386-pc tree, smaller than GRUB's, and no
		// x86_64-efi one, so kiln would answer 501 for GRUB-only assets.
		Grub: demo.GrubFrom(demo.HostGrubDir),
		Assets: func(arch, file string) ([]byte, error) {
			if p, ok := files[file]; ok && arch == "amd64" {
				return os.ReadFile(p)
			}

			return nil, fs.ErrNotExist
		},
		Sign: func(ctx context.Context, ref name.Digest, upstream name.Repository) error {
			return signingtest.SignLegacyAs(ctx, ref, upstream.Name(), key, opts...)
		},
	}); err != nil {
		return fmt.Errorf("pushing the bench release: %w", err)
	}

	req, err := http.NewRequestWithContext(ctx, "POST", k.url("/v1/versions/"+talosVersion+"/lock"), strings.NewReader("{}"))
	if err != nil {
		return err
	}

	req.SetBasicAuth(auth.Username, auth.Password)
	req.Header.Set("Content-Type", "application/json")

	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}

	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()

	if resp.StatusCode != 200 {
		return fmt.Errorf("locking %s: %d %s", talosVersion, resp.StatusCode, body)
	}

	return nil
}

// writePolicy writes a trust policy that trusts key for every repository.
func writePolicy(dir string, key *signingtest.Key) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}

	if err := os.WriteFile(filepath.Join(dir, "bench.pub"), key.PublicKeyPEM(), 0o644); err != nil {
		return "", err
	}

	policy := filepath.Join(dir, "policy.yaml")
	body := "rules:\n  - name: bench\n    repositories: ['*', '*/*', '*/*/*', '*/*/*/*', '*/*/*/*/*']\n    keys:\n      - name: bench\n        path: bench.pub\n"

	return policy, os.WriteFile(policy, []byte(body), 0o644)
}

// schematicFor is the bench's schematic: the boot loader asked for and one
// kernel argument unique to the measurement, so that its build is cold.
func schematicFor(bootloader, arg string) string {
	return fmt.Sprintf("customization:\n  extraKernelArgs: [%s]\n  bootloader: %s\n", arg, bootloader)
}

func createSchematic(ctx context.Context, client *http.Client, k *kilnProc, body string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, "POST", k.url("/schematics"), strings.NewReader(body))
	if err != nil {
		return "", err
	}

	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()

	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 201 {
		return "", fmt.Errorf("POST /schematics = %d %s", resp.StatusCode, data)
	}

	var created struct{ ID string }
	if err := json.Unmarshal(data, &created); err != nil {
		return "", err
	}

	return created.ID, nil
}

// errUnsupported is kiln's 501: an asset it does not build (yet).
var errUnsupported = errors.New("not supported by kiln")

// download is one GET: time to the first byte and to the last, bytes,
// status, the X-Kiln-Cache header, and the SHA-256 of the body if asked
// (never in a timed run: the client shares the two cores with the server).
type download struct {
	ttfb, wall time.Duration
	bytes      int64
	status     int
	cache      string
	sha256     string
}

func get(ctx context.Context, client *http.Client, url, rangeHeader string, hash bool) (download, error) {
	var d download

	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return d, err
	}

	if rangeHeader != "" {
		req.Header.Set("Range", rangeHeader)
	}

	start := time.Now()

	resp, err := client.Do(req)
	if err != nil {
		return d, err
	}
	defer resp.Body.Close()

	d.ttfb = time.Since(start)
	d.status, d.cache = resp.StatusCode, resp.Header.Get("X-Kiln-Cache")

	if resp.StatusCode != 200 && resp.StatusCode != 206 {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		if resp.StatusCode == 501 {
			return d, fmt.Errorf("%w: %s", errUnsupported, strings.TrimSpace(string(body)))
		}

		return d, fmt.Errorf("GET %s = %d %s", url, resp.StatusCode, body)
	}

	buf := make([]byte, 1<<20)

	var dst io.Writer = io.Discard

	h := sha256.New()
	if hash {
		dst = h
	}

	d.bytes, err = io.CopyBuffer(onlyWriter{dst}, resp.Body, buf)
	d.wall = time.Since(start)

	if err != nil {
		return d, err
	}

	if hash {
		d.sha256 = hex.EncodeToString(h.Sum(nil))
	}

	return d, nil
}

// onlyWriter hides io.Discard's ReaderFrom, so the copy goes through the
// same 1 MiB buffer for every server.
type onlyWriter struct{ io.Writer }

// findFile is the file under dir of the given size and SHA-256: where kiln
// keeps an asset, found by content, not by kiln's layout.
func findFile(dir string, size int64, sum string) (string, error) {
	var found string

	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || found != "" || !d.Type().IsRegular() {
			return nil
		}

		info, err := d.Info()
		if err != nil || info.Size() != size {
			return nil
		}

		if s, _, err := fileSHA256(p); err == nil && s == sum {
			found = p
		}

		return nil
	})
	if err == nil && found == "" {
		err = fmt.Errorf("no file of %d bytes with SHA-256 %s under %s", size, sum, dir)
	}

	return found, err
}

// copyTree copies a seeded data directory for a kiln that starts fresh.
func copyTree(src, dst string) error {
	if err := os.RemoveAll(dst); err != nil {
		return err
	}

	out, err := exec.Command("cp", "-a", src, dst).CombinedOutput()
	if err != nil {
		return fmt.Errorf("cp -a %s %s: %w: %s", src, dst, err, out)
	}

	return nil
}
