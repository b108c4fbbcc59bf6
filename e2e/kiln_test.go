//go:build integration

package e2e

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"github.com/kiln-dev/kiln/internal/testfixture"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	emptyID = "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba"
	argsID  = "9cba8e32753f91a16c1837ab8abf356af021706ef284aef07380780177d9a06c"
	metaID  = "d308a2a5ee2277bed5fbaa104fcbc8d59122abfa737df987a95b4ca763459a7f"
)

func binary(t *testing.T, env string) string {
	t.Helper()

	path := os.Getenv(env)
	if path == "" {
		t.Fatalf("%s is not set: run this suite through make (make test / make e2e)", env)
	}

	if _, err := os.Stat(path); err != nil {
		t.Fatalf("%s: %v", env, err)
	}

	return path
}

// kiln is a running kiln process.
type kiln struct {
	cmd     *exec.Cmd
	addr    string
	dataDir string
	logs    *syncBuffer
	done    chan error
}

// passwordFile is the admin password kiln made in its data directory.
func (k *kiln) passwordFile() string { return filepath.Join(k.dataDir, "auth", "admin-password") }

// to is `kiln mirror`'s destination flags for this kiln: its address and
// admin credential.
func (k *kiln) to() []string { return []string{"--to", k.addr, "--to-password-file", k.passwordFile()} }

// adminAuthorization is the Authorization header of the admin credential.
func (k *kiln) adminAuthorization(t *testing.T) string {
	t.Helper()

	password, err := os.ReadFile(k.passwordFile())
	if err != nil {
		t.Fatal(err)
	}

	return "Basic " + base64.StdEncoding.EncodeToString([]byte("admin:"+strings.TrimSpace(string(password))))
}

// syncBuffer collects the process's log lines while the test reads them.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) WriteString(line string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.WriteString(line)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()

	return s.b.String()
}

// startKiln runs `kiln serve` with args and env, on a port the kernel picks,
// and waits until /readyz answers.
func startKiln(t *testing.T, env []string, args ...string) *kiln {
	t.Helper()

	return startKilnCmd(t, nil, env, args...)
}

// startKilnCmd is startKiln with kiln run through wrapper (a command line
// that ends by exec'ing its arguments), if any.
func startKilnCmd(t *testing.T, wrapper []string, env []string, args ...string) *kiln {
	t.Helper()

	args = append([]string{binary(t, "KILN_BIN"), "serve", "--listen", "127.0.0.1:0", "--log-format", "json"}, args...)
	args = append(append([]string(nil), wrapper...), args...)
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), env...)

	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}

	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}

	k := &kiln{cmd: cmd, logs: &syncBuffer{}, done: make(chan error, 1), dataDir: "_data"}

	for i, a := range args {
		if a == "--data-dir" && i+1 < len(args) {
			k.dataDir = args[i+1]
		}
	}
	addrc := make(chan string, 1)

	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			k.logs.WriteString(line + "\n")

			var entry struct {
				Msg     string `json:"msg"`
				Address string `json:"address"`
			}

			if json.Unmarshal([]byte(line), &entry) == nil && entry.Msg == "kiln serving" {
				addrc <- entry.Address
			}
		}

		k.done <- cmd.Wait()
	}()

	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill() //nolint:errcheck
			<-k.done
		}

		if t.Failed() {
			t.Logf("kiln log:\n%s", k.logs.String())
		}
	})

	select {
	case k.addr = <-addrc:
	case err := <-k.done:
		t.Fatalf("kiln exited before serving: %v\n%s", err, k.logs.String())
	case <-time.After(2 * time.Minute):
		// Seeding the demo release on a first start takes 6 s on an idle
		// 2-core machine and went past 30 s on a loaded one.
		t.Fatalf("kiln did not start serving in 2 minutes\n%s", k.logs.String())
	}

	return k
}

// stop sends SIGTERM and wants a clean exit.
func (k *kiln) stop(t *testing.T) {
	t.Helper()

	if err := k.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}

	select {
	case err := <-k.done:
		if err != nil {
			t.Fatalf("kiln exited with %v after SIGTERM\n%s", err, k.logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("kiln did not stop within 30 s of SIGTERM")
	}
}

func httpDo(t *testing.T, client *http.Client, method, url, body string) (int, http.Header, string) {
	t.Helper()

	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}

	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()

	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}

	return resp.StatusCode, resp.Header, string(data)
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}

	return string(out)
}

func TestAllSurfaces(t *testing.T) {
	k := startKiln(t, nil, "--data-dir", t.TempDir())
	base := "http://" + k.addr
	grpcurl := binary(t, "GRPCURL")
	client := &http.Client{Timeout: 10 * time.Second}

	t.Run("public routes", func(t *testing.T) {
		code, hdr, body := httpDo(t, client, "POST", base+"/schematics", "customization:\n  extraKernelArgs: [noapic, nolapic]\n")
		if code != 201 || !strings.Contains(body, `"id":"`+argsID+`"`) || hdr.Get("Content-Type") != "application/json" {
			t.Fatalf("POST /schematics = %d %s %q", code, body, hdr.Get("Content-Type"))
		}

		code, hdr, body = httpDo(t, client, "GET", base+"/schematics/"+argsID, "")
		if code != 200 || body != "customization:\n    extraKernelArgs:\n        - noapic\n        - nolapic\n" || hdr.Get("Content-Type") != "application/yaml" {
			t.Fatalf("GET /schematics/id = %d %q", code, body)
		}

		if code, _, body = httpDo(t, client, "GET", base+"/schematics/"+strings.Repeat("0", 64), ""); code != 404 || body != "schematic not found\n" {
			t.Fatalf("GET unknown = %d %q", code, body)
		}

		if code, _, body = httpDo(t, client, "POST", base+"/schematics", "customization: {extraKernelArgs: 1}"); code != 400 || !strings.Contains(body, "cannot construct") {
			t.Fatalf("POST bad = %d %q", code, body)
		}

		if code, _, _ = httpDo(t, client, "GET", base+"/healthz", ""); code != 200 {
			t.Fatalf("/healthz = %d", code)
		}

		if code, _, _ = httpDo(t, client, "GET", base+"/readyz", ""); code != 200 {
			t.Fatalf("/readyz = %d", code)
		}
	})

	t.Run("grpcurl reflection", func(t *testing.T) {
		out := run(t, grpcurl, "-plaintext", k.addr, "list")
		for _, svc := range []string{"kiln.v1.SchematicService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"} {
			if !strings.Contains(out, svc) {
				t.Errorf("grpcurl list does not show %s:\n%s", svc, out)
			}
		}

		out = run(t, grpcurl, "-plaintext", k.addr, "describe", "kiln.v1.SchematicService")
		if !strings.Contains(out, "rpc CreateSchematic") {
			t.Errorf("describe: %s", out)
		}
	})

	t.Run("grpcurl create and get", func(t *testing.T) {
		out := run(t, grpcurl, "-plaintext", "-d", `{"schematic":{"customization":{"meta":[{"key":10,"value":"foo"}]}}}`, k.addr, "kiln.v1.SchematicService/CreateSchematic")
		if !strings.Contains(out, metaID) {
			t.Fatalf("typed CreateSchematic: %s", out)
		}

		out = run(t, grpcurl, "-plaintext", "-d", `{"yaml":"{}"}`, k.addr, "kiln.v1.SchematicService/CreateSchematic")
		if !strings.Contains(out, emptyID) {
			t.Fatalf("yaml CreateSchematic: %s", out)
		}

		out = run(t, grpcurl, "-plaintext", "-d", `{"id":"`+metaID+`"}`, k.addr, "kiln.v1.SchematicService/GetSchematic")
		if !strings.Contains(out, "value: foo") {
			t.Fatalf("GetSchematic: %s", out)
		}

		out = run(t, grpcurl, "-plaintext", "-H", "authorization: "+k.adminAuthorization(t), "-d", `{"page_size":2}`, k.addr, "kiln.v1.SchematicService/ListSchematics")
		if !strings.Contains(out, "nextPageToken") {
			t.Fatalf("ListSchematics with 3 stored and page size 2 has no next page: %s", out)
		}

		anon, err := exec.Command(grpcurl, "-plaintext", "-d", `{"page_size":2}`, k.addr, "kiln.v1.SchematicService/ListSchematics").CombinedOutput()
		if err == nil || !strings.Contains(string(anon), "Unauthenticated") {
			t.Fatalf("ListSchematics without the admin credential: %v %s", err, anon)
		}

		cmd := exec.Command(grpcurl, "-plaintext", "-d", `{"yaml":"owner: x"}`, k.addr, "kiln.v1.SchematicService/CreateSchematic")

		bad, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(bad), "InvalidArgument") || !strings.Contains(string(bad), "owner is not supported") {
			t.Fatalf("invalid create: %v %s", err, bad)
		}

		out = run(t, grpcurl, "-plaintext", k.addr, "grpc.health.v1.Health/Check")
		if !strings.Contains(out, "SERVING") {
			t.Fatalf("health: %s", out)
		}
	})

	t.Run("gateway", func(t *testing.T) {
		code, _, body := httpDo(t, client, "POST", base+"/v1/schematics", `{"yaml":"customization: {diskImage: {sectorSize: 4096}}"}`)
		if code != 200 || !strings.Contains(body, "92833e9ddd9bb9e11b2464fa5525429f01866306d52ebd882ee08d7918f6d1ea") {
			t.Fatalf("POST /v1/schematics = %d %s", code, body)
		}

		code, _, body = httpDo(t, client, "GET", base+"/v1/schematics/"+metaID, "")
		if code != 200 || !strings.Contains(body, metaID) {
			t.Fatalf("GET /v1/schematics/id = %d %s", code, body)
		}

		if code, _, body = httpDo(t, client, "GET", base+"/v1/schematics/nope", ""); code != 404 || !strings.Contains(body, "schematic not found") {
			t.Fatalf("GET /v1/schematics/nope = %d %s", code, body)
		}
	})

	k.stop(t)
}

// TestREADMEExamples runs the README's curl and grpcurl lines as written,
// against a real server, so the documentation cannot drift from the code.
func TestREADMEExamples(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}

	// As `make run` starts it, from the directory the examples run in, so
	// that ./_data and ./_bin/kiln in them name what they do after make run.
	workDir := t.TempDir()
	k := startKiln(t, nil, "--data-dir", filepath.Join(workDir, "_data"), "--demo")
	grpcurlDir := filepath.Dir(binary(t, "GRPCURL"))

	if err := os.Mkdir(filepath.Join(workDir, "_bin"), 0o755); err != nil {
		t.Fatal(err)
	}

	if err := os.Symlink(binary(t, "KILN_BIN"), filepath.Join(workDir, "_bin", "kiln")); err != nil {
		t.Fatal(err)
	}

	var commands []string

	inBlock, guide := false, false

	for _, line := range strings.Split(string(readme), "\n") {
		switch {
		case strings.HasPrefix(line, "```"):
			inBlock = !inBlock
			// The air-gap guide runs in its own test (TestAirgapGuide), with its own kiln.
			guide = inBlock && strings.Contains(line, "air-gap-guide")
		case inBlock && !guide && (strings.HasPrefix(line, "curl ") || strings.HasPrefix(line, "grpcurl ") || strings.HasPrefix(line, "./_bin/kiln ")):
			commands = append(commands, line)
		}
	}

	if len(commands) < 3 {
		t.Fatalf("found %d curl/grpcurl examples in README.md, want at least 3", len(commands))
	}

	sawVector, sawKiln := false, false

	dockerConfig := t.TempDir()

	for _, c := range commands {
		script := strings.ReplaceAll(c, "127.0.0.1:8080", k.addr)
		// An HTTP error status must fail the example, not just a dead socket.
		if rest, ok := strings.CutPrefix(script, "curl "); ok {
			script = "curl --fail-with-body " + rest
		}
		cmd := exec.Command("bash", "-o", "pipefail", "-c", script)
		// A reader as a new user runs it: no registry credentials of this
		// machine's (a docker config that once logged in to the port the
		// kiln drew got 401s for kiln cache's anonymous pulls).
		cmd.Env = append(os.Environ(), "PATH="+grpcurlDir+":"+os.Getenv("PATH"), "DOCKER_CONFIG="+dockerConfig)
		cmd.Dir = workDir // downloads land here

		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("README example failed: %s\n%v\n%s", c, err, out)

			continue
		}

		if strings.Contains(string(out), argsID) {
			sawVector = true
		}

		sawKiln = sawKiln || strings.HasPrefix(c, "./_bin/kiln ")

		t.Logf("$ %s\n%s", c, out)
	}

	if !sawVector {
		t.Errorf("no README example printed the ID %s", argsID)
	}

	if !sawKiln {
		t.Error("no README example runs ./_bin/kiln against the demo")
	}
}

func TestConfigLayersAndRestart(t *testing.T) {
	dir := t.TempDir()
	dataFromFile := filepath.Join(dir, "from-file")
	dataFromEnv := filepath.Join(dir, "from-env")
	cfg := filepath.Join(dir, "kiln.yaml")

	if err := os.WriteFile(cfg, []byte("data-dir: "+dataFromFile+"\nlog-level: debug\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	client := &http.Client{Timeout: 10 * time.Second}

	// The file alone decides the data directory.
	k := startKiln(t, []string{"KILN_CONFIG=" + cfg})
	if code, _, body := httpDo(t, client, "POST", "http://"+k.addr+"/schematics", "{}"); code != 201 {
		t.Fatalf("create = %d %s", code, body)
	}

	k.stop(t)

	if _, err := os.Stat(filepath.Join(dataFromFile, "schematics", emptyID[:2], emptyID)); err != nil {
		t.Fatalf("the config file's data-dir was not used: %v", err)
	}

	// The environment beats the file.
	k = startKiln(t, []string{"KILN_CONFIG=" + cfg, "KILN_DATA_DIR=" + dataFromEnv})
	if code, _, _ := httpDo(t, client, "GET", "http://"+k.addr+"/schematics/"+emptyID, ""); code != 404 {
		t.Fatalf("KILN_DATA_DIR did not override the file: GET = %d", code)
	}

	k.stop(t)

	// A flag beats both, and what was stored survived the restarts.
	k = startKiln(t, []string{"KILN_CONFIG=" + cfg, "KILN_DATA_DIR=" + dataFromEnv}, "--data-dir", dataFromFile)
	if code, _, body := httpDo(t, client, "GET", "http://"+k.addr+"/schematics/"+emptyID, ""); code != 200 || body != "customization: {}\n" {
		t.Fatalf("after restart GET = %d %q", code, body)
	}

	k.stop(t)

	// A bad config file is a clear error, not a server on defaults.
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("data-dri: /x\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	out, err := exec.Command(binary(t, "KILN_BIN"), "serve", "--config", bad).CombinedOutput()
	if err == nil || !strings.Contains(string(out), `unknown setting "data-dri"`) {
		t.Fatalf("bad config: %v %s", err, out)
	}
}

func TestTLS(t *testing.T) {
	dir := t.TempDir()
	cert, key := testfixture.SelfSignedCert(t, dir)
	k := startKiln(t, nil, "--data-dir", filepath.Join(dir, "data"), "--tls-cert", cert, "--tls-key", key)

	out := run(t, binary(t, "GRPCURL"), "-insecure", "-d", `{"yaml":"{}"}`, k.addr, "kiln.v1.SchematicService/CreateSchematic")
	if !strings.Contains(out, emptyID) {
		t.Fatalf("gRPC over TLS: %s", out)
	}

	out = run(t, "curl", "-sSk", "https://"+k.addr+"/schematics/"+emptyID)
	if out != "customization: {}\n" {
		t.Fatalf("HTTPS GET: %q", out)
	}

	k.stop(t)
}

func TestSchematicIDCommand(t *testing.T) {
	cmd := exec.Command(binary(t, "KILN_BIN"), "schematic", "id", "-")
	cmd.Stdin = strings.NewReader(`{"customization":{"extraKernelArgs":["noapic","nolapic"]}}`)

	out, err := cmd.CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), argsID+"\n") {
		t.Fatalf("kiln schematic id: %v %s", err, out)
	}
}
