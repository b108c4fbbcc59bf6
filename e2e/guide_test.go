//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/kiln-dev/kiln/demo"
	"github.com/kiln-dev/kiln/mirror"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/signing/signingtest"
)

const guideFence = "```sh air-gap-guide"

// guideBlocks are the README's air-gap guide: its marked blocks, in order.
func guideBlocks(t *testing.T) []string {
	t.Helper()

	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}

	var (
		blocks []string
		cur    []string
		in     bool
	)

	for _, line := range strings.Split(string(readme), "\n") {
		switch {
		case line == guideFence:
			in, cur = true, nil
		case in && strings.HasPrefix(line, "```"):
			in = false
			blocks = append(blocks, strings.Join(cur, "\n"))
		case in:
			cur = append(cur, line)
		}
	}

	if len(blocks) < 4 {
		t.Fatalf("README.md has %d %q blocks, want the guide's", len(blocks), guideFence)
	}

	return blocks
}

// setVariable gives a variable the guide defines another value: the line
// "NAME=<value>[ # comment]" must be there exactly once.
func setVariable(t *testing.T, script, name, value string) string {
	t.Helper()

	re := regexp.MustCompile(`(?m)^` + name + `=\S+(\s+#.*)?$`)
	if n := len(re.FindAllString(script, -1)); n != 1 {
		t.Fatalf("the guide defines %s %d times, want once", name, n)
	}

	return re.ReplaceAllLiteralString(script, name+"="+value)
}

// heredocLines are the lines of the heredoc that starts with the line start.
func heredocLines(t *testing.T, script, start string) []string {
	t.Helper()

	_, rest, ok := strings.Cut(script, start+"\n")
	if !ok {
		t.Fatalf("the guide has no line %q", start)
	}

	body, _, ok := strings.Cut(rest, "\nEOF\n")
	if !ok {
		t.Fatalf("the heredoc after %q has no end", start)
	}

	return strings.Split(body, "\n")
}

// startUpstreamRegistry starts Debian's docker-registry, as
// testfixture.StartRegistry does, and also gives its process ID, so that
// the guide's test can take it away halfway.
func startUpstreamRegistry(t *testing.T) (string, int) {
	t.Helper()

	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yml")
	conf := fmt.Sprintf("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n", filepath.Join(dir, "data"), addr)

	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(binary(t, "DOCKER_REGISTRY"), "serve", cfg)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() {
		cmd.Process.Kill() //nolint:errcheck // gone already after the guide's step 1
		cmd.Wait()         //nolint:errcheck // killed
	})

	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if resp, err := http.Get("http://" + addr + "/v2/"); err == nil {
			resp.Body.Close()

			return addr, cmd.Process.Pid
		}
	}

	t.Fatalf("docker-registry did not answer on %s", addr)

	return "", 0
}

func freePort(t *testing.T) int {
	t.Helper()

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	return l.Addr().(*net.TCPAddr).Port
}

// TestAirgapGuide runs the README's "An air-gapped cluster in five steps"
// as written, against a real registry process standing in for the
// internet, then checks what it made: every image pulls through the
// patch's mirrors alone, the ISO, the PXE script and the asset mirror.
func TestAirgapGuide(t *testing.T) {
	ctx := context.Background()
	blocks := guideBlocks(t)
	script := strings.Join(blocks, "\n")

	// The internet: a signed release and every image images.txt names.
	upstream, upstreamPID := startUpstreamRegistry(t)
	reg, _ := name.NewRegistry(upstream, name.Insecure)
	releaseKey := signingtest.MustGenerateKey(t, signingtest.ECDSAP256)

	rel, err := demo.Push(ctx, demo.Options{Version: "v1.13.0", Registry: reg, Sign: func(ctx context.Context, ref name.Digest, up name.Repository) error {
		return signingtest.SignLegacyAs(ctx, ref, up.Name(), releaseKey)
	}})
	if err != nil {
		t.Fatal(err)
	}

	listed, err := mirror.ReadImageList(strings.NewReader(strings.Join(heredocLines(t, script, "cat > images.txt <<'EOF'"), "\n")), "images.txt")
	if err != nil || len(listed) == 0 {
		t.Fatalf("the guide's images.txt: %q, %v", listed, err)
	}

	cosign := newCosignCLI(t)

	var images []mirroredImage

	for i, ref := range listed {
		path, err := mirror.ImageMirrorPath(ref)
		if err != nil {
			t.Fatal(err)
		}

		_, tag, _ := strings.Cut(ref[strings.LastIndex(ref, "/")+1:], ":")
		if tag == "" || strings.Contains(ref, "@") {
			t.Fatalf("the guide's %s: this test pushes tagged images only", ref)
		}

		d := pushPlatformIndex(t, reg.Repo(path).Tag(tag))
		images = append(images, mirroredImage{upstream: ref, digest: d.String()})

		// The first is signed, with the real cosign, and named by the policy.
		if i == 0 {
			if out, err := cosign.run("sign", "--key", "cosign.key", "--tlog-upload=false", "-y", "--allow-http-registry", upstream+"/"+path+"@"+d.String()); err != nil {
				t.Fatalf("cosign sign: %v\n%s", err, out)
			}
		}
	}

	signedPath, _ := mirror.ImageMirrorPath(listed[0])

	for _, d := range rel.KubernetesImages {
		images = append(images, mirroredImage{upstream: release.UpstreamPath(d.Context().RepositoryStr()) + "@" + d.DigestStr(), digest: d.DigestStr()})
	}

	work := t.TempDir()
	if err := os.WriteFile(filepath.Join(work, "release.pub"), releaseKey.PublicKeyPEM(), 0o644); err != nil {
		t.Fatal(err)
	}

	policy := fmt.Sprintf(`rules:
  - name: talos
    repositories: ["siderolabs/*", "registry.k8s.io/*", "registry.k8s.io/*/*"]
    keys: [{path: release.pub}]
  - name: site
    repositories: [%q]
    keys: [{path: %s}]
`, signedPath, cosign.pub())

	if err := os.WriteFile(filepath.Join(work, "policy.yaml"), []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}

	bin := t.TempDir()
	if err := os.Symlink(binary(t, "KILN_BIN"), filepath.Join(bin, "kiln")); err != nil {
		t.Fatal(err)
	}

	// After step 1 the internet goes away: the registry standing in for it
	// is killed, and the rest of the guide runs without it.
	cutOff := fmt.Sprintf(`kill -9 %d
sleep 0.5
if curl -s -o /dev/null --max-time 2 "http://$UPSTREAM/v2/"; then echo "the upstream registry still answers"; exit 1; fi
echo "== the internet is gone"`, upstreamPID)
	script = blocks[0] + "\n" + cutOff + "\n" + strings.Join(blocks[1:], "\n")

	kilnAddr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	script = setVariable(t, script, "UPSTREAM", upstream)
	script = setVariable(t, script, "KILN", kilnAddr)

	// One shell, as a reader pastes the blocks; kiln serve, started in the
	// background by the guide, is in its process group and ends with it.
	runCtx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()

	logFile := filepath.Join(work, "guide.log")

	logOut, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}

	cmd := exec.CommandContext(runCtx, "bash", "-euxo", "pipefail", "-c", script)
	cmd.Dir = work
	cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "HOME="+t.TempDir())
	cmd.Stdout, cmd.Stderr = logOut, logOut
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }

	// kiln serve, started in the background by the guide, runs on for
	// the checks below, then ends with the guide's process group.
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) //nolint:errcheck // gone already if the guide failed early
	})

	start := time.Now()
	runErr := cmd.Run()
	elapsed := time.Since(start)

	logOut.Close()

	out, _ := os.ReadFile(logFile)
	t.Logf("the guide, in %s:\n%s", elapsed.Round(time.Millisecond), out)

	if runErr != nil {
		t.Fatalf("the guide failed: %v", runErr)
	}

	// What the guide printed.
	id := regexp.MustCompile(`(?m)^schematic ([0-9a-f]{64})$`).FindSubmatch(out)
	if id == nil {
		t.Fatal("the guide printed no schematic ID")
	}

	for _, want := range []string{
		"verified " + strings.TrimPrefix(listed[0], "ghcr.io/") + "@",
		"NOT verified " + listed[1] + "@",
		"release lock of v1.13.0 recorded on " + kilnAddr,
		"kernel http://" + kilnAddr + "/image/" + string(id[1]) + "/v1.13.0/kernel-amd64 talos.platform=metal console=ttyS0 ",
		"airgap.tar: OK",
		"== the internet is gone",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the guide's output lacks %q", want)
		}
	}

	// --schematic took the one extension the schematic names, no other.
	if n := strings.Count(string(out), "copied   extension "); n != 2 || strings.Count(string(out), "copied   extension siderolabs/gvisor:") != 2 ||
		strings.Contains(string(out), "copied   overlay ") {
		t.Errorf("the guide copied other extensions or overlays than the schematic's (%d extension lines)", n)
	}

	// Every image, by its upstream name, through nothing but the patch's
	// mirrors, from the kiln the guide started.
	patch, err := os.ReadFile(filepath.Join(work, "airgap.yaml"))
	if err != nil {
		t.Fatal(err)
	}

	if !strings.Contains(string(patch), "url: http://"+kilnAddr+"/v2/docker.io") {
		t.Fatalf("the patch does not send docker.io to kiln:\n%s", patch)
	}

	certDir := t.TempDir()
	confFile := filepath.Join(t.TempDir(), "registries.conf")

	if err := os.WriteFile(confFile, []byte(registriesConf(t, string(patch), certDir)), 0o644); err != nil {
		t.Fatal(err)
	}

	for i, img := range images {
		img.kiln = kilnAddr
		if err := pullThroughMirror(confFile, certDir, filepath.Join(t.TempDir(), strconv.Itoa(i)), img); err != nil {
			t.Error(err)
		}
	}

	t.Logf("pulled %d images (%s) through airgap.yaml's mirrors", len(images), upstreamHosts(images))

	// The boot media.
	iso, err := exec.Command("isoinfo", "-d", "-i", filepath.Join(work, "metal-amd64.iso")).CombinedOutput()
	if err != nil || !strings.Contains(string(iso), "Volume id: TALOS_V1_13_0") {
		t.Errorf("isoinfo of the guide's ISO: %v\n%s", err, iso)
	}

	sum := exec.Command("sha512sum", "-c", "checksums.txt")
	sum.Dir = filepath.Join(work, "assets", "v1.13.0")

	if res, err := sum.CombinedOutput(); err != nil || !strings.Contains(string(res), "initramfs-amd64.xz: OK") {
		t.Errorf("sha512sum -c in the guide's asset mirror: %v\n%s", err, res)
	}
}
