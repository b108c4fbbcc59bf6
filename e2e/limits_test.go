//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/storage"
)

// Load and fault tests of issue 13 against the real binary. Each logs its
// measurements on lines starting "FIGURE:"; the bounds asserted are
// generous, the figures are what to read.

// figure logs a measurement for the note.
func figure(t *testing.T, format string, a ...any) {
	t.Helper()
	t.Logf("FIGURE: "+format, a...)
}

// procStatus reads a field of /proc/<pid>/status, in kB for memory.
func procStatus(t *testing.T, pid int, field string) int64 {
	t.Helper()

	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}

	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)

			return n
		}
	}

	t.Fatalf("no %s in /proc/%d/status", field, pid)

	return 0
}

func openFiles(pid int) int {
	entries, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))

	return len(entries)
}

func createSchematic(t *testing.T, base, body string) string {
	t.Helper()

	resp, err := http.Post(base+"/schematics", "application/yaml", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()

	var out struct {
		ID string `json:"id"`
	}

	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != 201 {
		t.Fatalf("POST /schematics %q = %d, %v", body, resp.StatusCode, err)
	}

	return out.ID
}

// TestHelperHoldConns is not a test: started by TestIdleConnectionFlood as a
// separate process (each process has its own file-descriptor limit), it
// opens KILN_E2E_HOLD_N connections to KILN_E2E_HOLD_ADDR, says how many on
// stdout, and holds them until its stdin closes.
func TestHelperHoldConns(t *testing.T) {
	addr := os.Getenv("KILN_E2E_HOLD_ADDR")
	if addr == "" {
		t.Skip("a helper process of TestIdleConnectionFlood")
	}

	n, _ := strconv.Atoi(os.Getenv("KILN_E2E_HOLD_N"))

	var (
		mu    sync.Mutex
		conns []net.Conn
		fails atomic.Int64
		wg    sync.WaitGroup
		next  atomic.Int64
	)

	for range 64 {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				c, err := net.DialTimeout("tcp", addr, 10*time.Second)
				if err != nil {
					fails.Add(1)

					continue
				}

				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}
		})
	}

	wg.Wait()
	fmt.Printf("held %d failed %d\n", len(conns), fails.Load())

	io.Copy(io.Discard, os.Stdin) //nolint:errcheck // until the parent closes it
}

// holdConns opens n connections to addr from a helper process.
func holdConns(t *testing.T, addr string, n int) (opened int) {
	t.Helper()

	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperHoldConns$", "-test.timeout=10m")
	cmd.Env = append(os.Environ(), "KILN_E2E_HOLD_ADDR="+addr, "KILN_E2E_HOLD_N="+strconv.Itoa(n))

	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}

	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}

	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() {
		stdin.Close()
		cmd.Wait() //nolint:errcheck // it exits when stdin closes
	})

	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		var held, failed int
		if _, err := fmt.Sscanf(sc.Text(), "held %d failed %d", &held, &failed); err == nil {
			return held
		}
	}

	t.Fatalf("helper process gave no count: %v", sc.Err())

	return 0
}

// 20,000 idle connections, more than kiln's file-descriptor limit allows it
// to keep (the test's own limit, inherited): /healthz must still answer fast
// on a new connection, and so must a normal request.
func TestIdleConnectionFlood(t *testing.T) {
	const total = 20_000

	k := startKiln(t, nil, "--data-dir", t.TempDir())
	pid := k.cmd.Process.Pid
	base := "http://" + k.addr

	var rl struct{ cur, max uint64 }
	if data, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid)); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if f := strings.Fields(line); len(f) >= 6 && strings.HasPrefix(line, "Max open files") {
				rl.cur, _ = strconv.ParseUint(f[3], 10, 64)
				rl.max, _ = strconv.ParseUint(f[4], 10, 64)
			}
		}
	}

	start := time.Now()
	opened := holdConns(t, k.addr, total/2) + holdConns(t, k.addr, total/2)
	figure(t, "opened %d idle connections in %s; kiln's open files %d (RLIMIT_NOFILE soft %d, hard %d)",
		opened, time.Since(start).Round(time.Millisecond), openFiles(pid), rl.cur, rl.max)

	if opened < total*9/10 {
		t.Fatalf("only %d of %d connections opened", opened, total)
	}

	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}

	var lat []time.Duration

	for range 50 {
		t0 := time.Now()

		resp, err := client.Get(base + "/healthz")
		if err != nil {
			t.Fatalf("healthz with %d idle connections: %v", opened, err)
		}

		io.Copy(io.Discard, resp.Body) //nolint:errcheck
		resp.Body.Close()

		if resp.StatusCode != 200 {
			t.Fatalf("healthz = %d", resp.StatusCode)
		}

		lat = append(lat, time.Since(t0))
	}

	slices.Sort(lat)
	figure(t, "/healthz on a new connection with %d idle ones open: median %s, max %s (50 requests)",
		opened, lat[len(lat)/2].Round(time.Microsecond), lat[len(lat)-1].Round(time.Microsecond))

	// Generous: the issue asks under 100 ms; a shared 2-core machine is slower than a real one.
	if lat[len(lat)-1] > 100*time.Millisecond {
		t.Errorf("slowest healthz took %s", lat[len(lat)-1])
	}

	resp, err := client.Get(base + "/versions")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /versions with %d idle connections: %v %v", opened, resp, err)
	}
	resp.Body.Close()

	figure(t, "kiln holds %d open files after the flood (cap from its limit: %d connections + 64 for health checks)", openFiles(pid), (int(rl.cur)-320)/2)
}

// A body that stops arriving is answered and closed within --read-timeout.
func TestSlowBodyClosed(t *testing.T) {
	k := startKiln(t, nil, "--data-dir", t.TempDir(), "--read-timeout", "2s")

	c, err := net.Dial("tcp", k.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	start := time.Now()
	io.WriteString(c, "POST /schematics HTTP/1.1\r\nHost: kiln\r\nContent-Length: 100000\r\n\r\ncustomization:") //nolint:errcheck

	c.SetReadDeadline(time.Now().Add(30 * time.Second)) //nolint:errcheck

	resp, err := io.ReadAll(c)
	took := time.Since(start)

	if err != nil || !strings.HasPrefix(string(resp), "HTTP/1.1 408") {
		t.Fatalf("slow body: %q, %v after %s", resp, err, took)
	}

	figure(t, "a body stalled after 15 bytes: 408 and connection closed after %s (--read-timeout 2s)", took.Round(time.Millisecond))
}

// 300 raw-disk requests (metal-amd64.raw, a few seconds each to assemble)
// whose clients hang up after 0.5 s: every build is cancelled, so a request
// arriving after them waits for nothing.
func TestAbandonedBuilds(t *testing.T) {
	const n = 300

	k := startKiln(t, nil, "--data-dir", t.TempDir(), "--demo", "--max-builds", "2", "--max-build-queue", "400", "--log-level", "debug")
	base := "http://" + k.addr

	ids := make([]string, n)
	for i := range ids {
		ids[i] = createSchematic(t, base, fmt.Sprintf("customization: {extraKernelArgs: [abandoned=%d]}", i))
	}

	// One raw build to completion, for the comparison (through the REST
	// gateway: it builds without sending the 2 GiB image).
	t0 := time.Now()
	resp, err := http.Post(base+"/v1/images:build", "application/json", strings.NewReader(
		`{"schematicId":"`+createSchematic(t, base, "customization: {extraKernelArgs: [reference]}")+`","version":"v1.13.0","path":"metal-amd64.raw"}`))
	if err != nil {
		t.Fatal(err)
	}

	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()

	if resp.StatusCode != 200 || !strings.Contains(string(out), `"done"`) {
		t.Fatalf("reference build: %d %.300s", resp.StatusCode, out)
	}

	one := time.Since(t0)

	var (
		wg      sync.WaitGroup
		gaveUp  atomic.Int64
		refused atomic.Int64
	)

	start := time.Now()

	for _, id := range ids {
		wg.Go(func() {
			client := &http.Client{Timeout: 500 * time.Millisecond}

			resp, err := client.Get(base + "/image/" + id + "/v1.13.0/metal-amd64.raw")
			if err != nil {
				gaveUp.Add(1)

				return
			}
			io.Copy(io.Discard, resp.Body) //nolint:errcheck
			resp.Body.Close()

			if resp.StatusCode == http.StatusServiceUnavailable {
				refused.Add(1)
			}
		})
	}

	wg.Wait()
	left := time.Now()

	// A small build after them: it needs a free slot.
	kernel := createSchematic(t, base, "customization: {extraKernelArgs: [after]}")

	resp, err = http.Get(base + "/image/" + kernel + "/v1.13.0/kernel-amd64")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("kernel after the abandoned builds: %v %v", resp, err)
	}
	resp.Body.Close()

	drain := time.Since(left)

	time.Sleep(time.Second)

	logs := k.logs.String()
	running := strings.Count(logs, "build cancelled: every request")
	queued := strings.Count(logs, "build cancelled before it started")
	built := strings.Count(logs, `"msg":"built","asset":"metal-amd64.raw"`) - 1

	figure(t, "one raw disk build alone: %s; %d clients gave up after 0.5 s (%d answered 503) within %s",
		one.Round(time.Millisecond), gaveUp.Load(), refused.Load(), left.Sub(start).Round(time.Millisecond))
	figure(t, "after they left, a kernel build was served in %s; of %d raw disk builds %d were cancelled while running, %d while queued, %d completed (uncancelled they would hold the 2 slots about %s)",
		drain.Round(time.Millisecond), n, running, queued, built, (time.Duration(n) * one / 2).Round(time.Second))

	if drain > 30*time.Second || running+queued < n*9/10 {
		t.Errorf("drain %s, %d+%d cancelled", drain, running, queued)
	}
}

// 64 schematic POSTs of about 4 MiB at once, half of them the 300,000-item
// lists that took ~100x their size, half a large machine configuration each
// (parsed and stored): kiln's peak RSS stays bounded.
func TestSchematicMemory(t *testing.T) {
	k := startKiln(t, nil, "--data-dir", t.TempDir())
	pid := k.cmd.Process.Pid
	base := "http://" + k.addr

	before := procStatus(t, pid, "VmHWM")

	bodies := make([]string, 64)

	for i := range bodies {
		var b strings.Builder

		if i%2 == 0 {
			b.WriteString("customization:\n  extraKernelArgs:\n")

			for b.Len() < 4<<20-64 {
				b.WriteString("    - a=bbbbbbbb\n")
			}
		} else {
			fmt.Fprintf(&b, "customization:\n  extraKernelArgs: [request=%d]\n  embeddedMachineConfiguration: |\n", i)

			for j := 0; b.Len() < 4<<20-64; j++ {
				fmt.Fprintf(&b, "    key%d: [value, {nested: %d}]\n", j, j)
			}
		}

		bodies[i] = b.String()
	}

	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		counts = map[int]int{}
	)

	start := time.Now()

	for _, body := range bodies {
		wg.Go(func() {
			resp, err := http.Post(base+"/schematics", "application/yaml", strings.NewReader(body))
			if err != nil {
				t.Error(err)

				return
			}
			io.Copy(io.Discard, resp.Body) //nolint:errcheck
			resp.Body.Close()

			mu.Lock()
			counts[resp.StatusCode]++
			mu.Unlock()
		})
	}

	wg.Wait()

	peak := procStatus(t, pid, "VmHWM")
	figure(t, "64 parallel 4 MiB POST /schematics in %s: statuses %v; kiln peak RSS %d MiB (%d MiB before)",
		time.Since(start).Round(time.Millisecond), counts, peak>>10, before>>10)

	if counts[201] != 32 || counts[400] != 32 {
		t.Errorf("statuses %v, want 32 created and 32 refused", counts)
	}

	if peak > 512<<10 {
		t.Errorf("peak RSS %d MiB, target under 512 MiB", peak>>10)
	}
}

func (k *kiln) kill9(t *testing.T) {
	t.Helper()

	if err := k.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}

	<-k.done
}

// waitFor polls cond every 5 ms for up to limit.
func waitFor(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()

	for deadline := time.Now().Add(limit); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return
		}
	}

	t.Fatalf("timed out waiting for %s", what)
}

func entries(dir string) []string {
	list, _ := os.ReadDir(dir)

	var names []string
	for _, e := range list {
		names = append(names, e.Name())
	}

	return names
}

// kill -9 in the middle of a build: the next start leaves no scratch, and a
// cached asset damaged while kiln was down is rebuilt, never served.
func TestKillDuringBuild(t *testing.T) {
	dir := t.TempDir()
	// A fixed external URL: it is in every initramfs (the schematic
	// extension's author), so both runs build the same bytes.
	args := []string{"--data-dir", dir, "--demo", "--external-url", "http://kiln.e2e"}
	k := startKiln(t, nil, args...)
	base := "http://" + k.addr
	id := createSchematic(t, base, "customization: {extraKernelArgs: [killed]}")

	// A cached ISO to damage later.
	resp, err := http.Get(base + "/image/" + id + "/v1.13.0/metal-amd64.iso")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("ISO: %v %v", resp, err)
	}

	isoSum := sha256.New()
	io.Copy(isoSum, resp.Body) //nolint:errcheck
	resp.Body.Close()

	etag := strings.Trim(resp.Header.Get("ETag"), `"`)

	// The uncompressed raw disk takes a few seconds to assemble.
	go func() {
		if resp, err := http.Get(base + "/image/" + id + "/v1.13.0/metal-amd64.raw"); err == nil {
			resp.Body.Close()
		}
	}()

	waitFor(t, "a build's scratch directory", time.Minute, func() bool { return len(entries(filepath.Join(dir, "tmp"))) > 0 })
	k.kill9(t)

	scratch, partial := entries(filepath.Join(dir, "tmp")), entries(filepath.Join(dir, "assets", "tmp"))
	figure(t, "after kill -9 mid-build: %v in tmp/, %d partial assets", scratch, len(partial))

	// Damage the cached ISO while kiln is down.
	var isoPath string

	filepath.WalkDir(filepath.Join(dir, "assets"), func(p string, d fs.DirEntry, err error) error { //nolint:errcheck
		if err == nil && strings.HasSuffix(p, ".json") {
			if data, _ := os.ReadFile(p); strings.Contains(string(data), etag) {
				isoPath = strings.TrimSuffix(p, ".json")
			}
		}

		return nil
	})

	f, err := os.OpenFile(isoPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("cached ISO: %v", err)
	}

	f.WriteAt([]byte("corrupt"), 40_000) //nolint:errcheck
	f.Close()

	damaged := sha256.New()
	if data, err := os.ReadFile(isoPath); err == nil {
		damaged.Write(data)
	}

	k = startKiln(t, nil, args...)
	base = "http://" + k.addr

	if left := append(entries(filepath.Join(dir, "tmp")), entries(filepath.Join(dir, "assets", "tmp"))...); len(left) > 0 {
		t.Errorf("after restart: %v left", left)
	}

	resp, err = http.Get(base + "/image/" + id + "/v1.13.0/metal-amd64.iso")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("ISO after restart: %v %v", resp, err)
	}

	again := sha256.New()
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	again.Write(body)

	served := hex.EncodeToString(again.Sum(nil))
	servedTag, _ := storage.ETagOf(bytes.NewReader(body))

	// The ISO is rebuilt (it is not byte-for-byte reproducible across
	// processes, so its digest may differ from the first one); what is
	// served must be whole: its bytes have the ETag sent with them (the
	// chunk digest, storage.ETagOf).
	if servedTag != strings.Trim(resp.Header.Get("ETag"), `"`) || served == hex.EncodeToString(damaged.Sum(nil)) ||
		resp.Header.Get("X-Kiln-Cache") != "miss" || !strings.Contains(k.logs.String(), "dropping a corrupt cached asset") {
		t.Fatalf("ISO after restart: sha256 %s, ETag %s, X-Kiln-Cache %s; first build %x",
			served, resp.Header.Get("ETag"), resp.Header.Get("X-Kiln-Cache"), isoSum.Sum(nil))
	}

	figure(t, "after restart: tmp/ and assets/tmp empty; the ISO damaged on disk was dropped and rebuilt (X-Kiln-Cache miss, served bytes have their ETag, storage.ETagOf)")

	if !strings.Contains(k.logs.String(), "removed a scratch directory left by an interrupted build") {
		t.Errorf("no log of the scratch removed")
	}
}

// throttle forwards connections to target at about rate bytes per second
// each way, so that a short copy takes long enough to be killed midway.
func throttle(t *testing.T, target string, rate int) string {
	t.Helper()

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() { lis.Close() })

	slowCopy := func(dst, src net.Conn) {
		defer dst.Close()

		buf := make([]byte, 1024)

		for {
			n, err := src.Read(buf)
			if n > 0 {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}

				time.Sleep(time.Duration(n) * time.Second / time.Duration(rate))
			}

			if err != nil {
				return
			}
		}
	}

	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}

			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()

				continue
			}

			go slowCopy(u, c)
			go slowCopy(c, u)
		}
	}()

	return lis.Addr().String()
}

// kill -9 of `kiln cache create` midway: its next run over the same output
// removes what the killed one left and writes the cache.
func TestKillDuringCacheCreate(t *testing.T) {
	dir := t.TempDir()
	k := startKiln(t, nil, "--data-dir", dir, "--demo")
	slow := throttle(t, k.addr, 16<<10)

	parent := t.TempDir()
	out := filepath.Join(parent, "cache")
	args := func(mirror string) []string {
		return []string{"cache", "create", "--mirror", mirror + "/kiln-demo", "--kubernetes", "v1.13.0", "--output", out,
			"--trust-policy", filepath.Join(dir, "demo", "trust-policy.yaml")}
	}

	cmd := exec.Command(binary(t, "KILN_BIN"), args(slow)...)

	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = &output, &output

	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}

	waitFor(t, "the cache's temporary directories", 2*time.Minute, func() bool {
		for _, name := range entries(parent) {
			if strings.HasPrefix(name, ".cache.spool-") {
				return true
			}
		}

		return false
	})

	cmd.Process.Kill() //nolint:errcheck
	cmd.Wait()         //nolint:errcheck

	left := entries(parent)
	figure(t, "kill -9 of kiln cache create midway left %v", left)

	if len(left) == 0 {
		t.Fatal("nothing left to clean: the kill came too late to test anything")
	}

	if msg, err := kilnRun(t, args(k.addr)...); err != nil {
		t.Fatalf("second run: %v\n%s", err, msg)
	}

	if got := entries(parent); !slices.Equal(got, []string{"cache"}) {
		t.Fatalf("after the second run %s holds %v, want only the cache", parent, got)
	}

	figure(t, "the next kiln cache create over the same output removed them and wrote the cache")
}

// kill -9 of kiln while `kiln mirror` pushes into it: the next start removes
// the cut-off uploads, and the mirror run again completes.
func TestKillDuringMirror(t *testing.T) {
	src := startKiln(t, nil, "--data-dir", t.TempDir(), "--demo")
	policy := filepath.Join(strings.TrimSuffix(srcDataDir(t, src), "/"), "demo", "trust-policy.yaml")

	// The demo's own policy trusts its key under kiln-demo/ only; the
	// destination, which keeps the release at its root, trusts the demo key
	// everywhere, so that kiln mirror can record the release lock there.
	pdir := t.TempDir()
	dstPolicy := filepath.Join(pdir, "policy.yaml")

	if err := os.WriteFile(dstPolicy, []byte("rules:\n  - name: demo-key\n    repositories: ['*', '*/*', '*/*/*', '*/*/*/*', '*/*/*/*/*']\n    keys:\n      - path: "+
		filepath.Join(srcDataDir(t, src), "demo", "cosign.pub")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	dst := startKiln(t, nil, "--data-dir", dir, "--trust-policy", dstPolicy)
	uploads := func() []string {
		var found []string

		filepath.WalkDir(filepath.Join(dir, "registry"), func(p string, d fs.DirEntry, err error) error { //nolint:errcheck
			if err == nil && d.IsDir() && filepath.Base(filepath.Dir(p)) == "_uploads" {
				found = append(found, p)
			}

			return nil
		})

		return found
	}

	mirror := exec.Command(binary(t, "KILN_BIN"), "mirror", "--from", src.addr+"/kiln-demo", "--to", throttle(t, dst.addr, 32<<10),
		"--to-password-file", dst.passwordFile(), "--version", "v1.13.0", "--trust-policy", policy)

	var output bytes.Buffer
	mirror.Stdout, mirror.Stderr = &output, &output

	if err := mirror.Start(); err != nil {
		t.Fatal(err)
	}

	waitFor(t, "an upload in progress", 2*time.Minute, func() bool { return len(uploads()) > 0 })
	dst.kill9(t)
	mirror.Wait() //nolint:errcheck // it fails: its destination died

	cut := uploads()
	figure(t, "kill -9 of kiln during kiln mirror left %d upload sessions", len(cut))

	dst = startKiln(t, nil, "--data-dir", dir, "--trust-policy", dstPolicy)

	if left := uploads(); len(left) > 0 {
		t.Fatalf("after restart: %v", left)
	}

	if msg, err := kilnRun(t, append(append([]string{"mirror", "--from", src.addr + "/kiln-demo"}, dst.to()...), "--version", "v1.13.0", "--trust-policy", policy)...); err != nil {
		t.Fatalf("mirror after restart: %v\n%s", err, msg)
	}

	resp, err := http.Get("http://" + dst.addr + "/versions")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()

	body, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(body), "v1.13.0") {
		t.Fatalf("versions after the mirror: %s", body)
	}

	figure(t, "after restart no upload session was left, and the mirror run again completed (/versions lists v1.13.0)")
}

// srcDataDir finds the --data-dir a kiln was started with.
func srcDataDir(t *testing.T, k *kiln) string {
	t.Helper()

	args := k.cmd.Args
	for i, a := range args {
		if a == "--data-dir" && i+1 < len(args) {
			return args[i+1]
		}
	}

	t.Fatal("no --data-dir")

	return ""
}

// A full data disk is a 507 that says so, and leaves nothing half written;
// once space is freed, builds work. The data directory is a 12 MiB tmpfs
// in a mount namespace of kiln's own, filled but for 256 KiB.
func TestDiskFull(t *testing.T) {
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Fatalf("unshare (util-linux) is required: %v", err)
	}

	dir := t.TempDir()
	wrapper := []string{"unshare", "--user", "--map-root-user", "--mount", "--", "sh", "-c",
		`mount -t tmpfs -o size=12m kiln-full "$KILN_E2E_DIR" && exec "$@"`, "sh"}
	k := startKilnCmd(t, wrapper, []string{"KILN_E2E_DIR=" + dir}, "--data-dir", dir, "--demo")
	base := "http://" + k.addr
	id := createSchematic(t, base, "customization: {extraKernelArgs: [full]}")

	// The namespace's files are seen through kiln's root.
	root := fmt.Sprintf("/proc/%d/root%s", k.cmd.Process.Pid, dir)

	// Fill the disk but for 256 KiB: an ISO no longer needs 12 MiB of
	// disk (it is sparse and its ESP is built in place), so the tmpfs's
	// size alone does not make it fail.
	var st syscall.Statfs_t
	if err := syscall.Statfs(root, &st); err != nil {
		t.Fatal(err)
	}

	filler := filepath.Join(root, "filler")
	if err := os.WriteFile(filler, make([]byte, int64(st.Bavail)*st.Bsize-256<<10), 0o600); err != nil {
		t.Fatal(err)
	}

	resp, err := http.Get(base + "/image/" + id + "/v1.13.0/metal-amd64.iso")
	if err != nil {
		t.Fatal(err)
	}

	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()

	if resp.StatusCode != http.StatusInsufficientStorage || !strings.Contains(string(body), "data disk is full") {
		t.Fatalf("ISO on a full disk = %d %.200q, want 507", resp.StatusCode, body)
	}

	if left := append(entries(filepath.Join(root, "tmp")), entries(filepath.Join(root, "assets", "tmp"))...); len(left) > 0 {
		t.Errorf("a failed build left %v", left)
	}

	figure(t, "ISO build with 256 KiB free on the data dir: %d %q; nothing left in tmp/ or assets/tmp", resp.StatusCode, strings.TrimSpace(string(body)))

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}

	resp, err = http.Get(base + "/image/" + id + "/v1.13.0/kernel-amd64")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("kernel after the failed ISO: %v %v", resp, err)
	}
	resp.Body.Close()

	if strings.Contains(k.logs.String(), `"level":"ERROR"`) {
		t.Errorf("a full disk logged at ERROR:\n%s", k.logs.String())
	}
}
