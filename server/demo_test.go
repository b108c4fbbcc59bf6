package server

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kiln-dev/kiln/access"
	"github.com/kiln-dev/kiln/demo"
	"github.com/kiln-dev/kiln/release"
)

// demoState is what a restart of the demo must leave alone.
type demoState struct {
	digests map[string]string // repository:tag -> digest
	sigs    map[string]int    // .sig tag -> signatures in it
	key     string            // sha256 of cosign.key
}

func readDemoState(t *testing.T, ts *testServer) demoState {
	t.Helper()

	st := demoState{digests: map[string]string{}, sigs: map[string]int{}}

	for _, ver := range demo.Versions() {
		v := ver.String()

		for _, path := range []string{release.ImagerRepo, release.InstallerBaseRepo, release.ExtensionsRepo, release.OverlaysRepo, release.TalosctlAllRepo} {
			ref, err := name.NewTag(ts.addr+"/"+demo.Namespace+"/"+path+":"+v, name.Insecure)
			if err != nil {
				t.Fatal(err)
			}

			desc, err := remote.Head(ref)
			if err != nil {
				t.Fatalf("%s: %v", ref, err)
			}

			st.digests[ref.RepositoryStr()+":"+v] = desc.Digest.String()

			sig := ref.Context().Tag("sha256-" + desc.Digest.Hex + ".sig")

			img, err := remote.Image(sig)
			if err != nil {
				t.Fatalf("%s: %v", sig, err)
			}

			layers, err := img.Layers()
			if err != nil {
				t.Fatal(err)
			}

			st.sigs[sig.Context().RepositoryStr()+":"+sig.TagStr()] = len(layers)
		}
	}

	key, err := os.ReadFile(filepath.Join(ts.dir, demo.Dir, demo.KeyFile))
	if err != nil {
		t.Fatal(err)
	}

	sum := sha256.Sum256(key)
	st.key = hex.EncodeToString(sum[:])

	return st
}

// TestDemoRestart: --demo seeds once. Two restarts keep every digest, the
// key and the signatures (no layer added to a .sig); an admin's re-tag is
// not undone by a restart but caught by the release lock: assets built
// before are served, new ones refused with 412 naming both digests.
func TestDemoRestart(t *testing.T) {
	dir := t.TempDir()
	// The external URL is part of an asset's plan (the factory's name in
	// it): fixed, so that a restart on another port finds what was built.
	cfg := Config{DataDir: dir, Demo: true, ExternalURL: "http://kiln.test:8080"}

	ts := startServer(t, cfg)

	for path, mode := range map[string]os.FileMode{filepath.Join(dir, demo.Dir, demo.KeyFile): 0o600, filepath.Join(dir, "auth", "admin-password"): 0o600} {
		if fi, err := os.Stat(path); err != nil || fi.Mode() != mode {
			t.Fatalf("%s: %v, %v; want mode %v", path, fi, err, mode)
		}
	}

	if resp, _ := ts.do(t, "POST", "/schematics", "{}"); resp.StatusCode != 201 {
		t.Fatal(resp.Status)
	}

	kernel := "/image/" + emptyID + "/v1.13.0/kernel-amd64"

	resp, built := ts.do(t, "GET", kernel, "")
	if resp.StatusCode != 200 || len(built) == 0 {
		t.Fatalf("GET kernel = %s", resp.Status)
	}

	first := readDemoState(t, ts)
	ts.stop()

	for i := range 2 {
		ts = startServer(t, cfg)

		again := readDemoState(t, ts)
		if again.key != first.key {
			t.Fatalf("restart %d: the demo key changed", i+1)
		}

		for k, d := range first.digests {
			if again.digests[k] != d {
				t.Errorf("restart %d: %s is %s, was %s", i+1, k, again.digests[k], d)
			}
		}

		for k, n := range first.sigs {
			if again.sigs[k] != n {
				t.Errorf("restart %d: %s holds %d signatures, was %d", i+1, k, again.sigs[k], n)
			}
		}

		if i == 0 {
			ts.stop()
		}
	}

	// The attack, with the admin credential: v1.12.0's imager tagged v1.13.0.
	password, err := access.ReadPassword(filepath.Join(dir, "auth", "admin-password"))
	if err != nil {
		t.Fatal(err)
	}

	admin := remote.WithAuth(&authn.Basic{Username: access.AdminUser, Password: password})
	old, _ := name.NewDigest(ts.addr+"/"+demo.Namespace+"/"+release.ImagerRepo+"@"+first.digests[demo.Namespace+"/"+release.ImagerRepo+":v1.12.0"], name.Insecure)
	newer := first.digests[demo.Namespace+"/"+release.ImagerRepo+":v1.13.0"]

	desc, err := remote.Get(old)
	if err != nil {
		t.Fatal(err)
	}

	if err := remote.Tag(old.Context().Tag("v1.13.0"), desc, admin); err != nil {
		t.Fatalf("admin re-tag: %v", err)
	}

	ts.stop()
	ts = startServer(t, cfg)

	if got := readDemoState(t, ts).digests[demo.Namespace+"/"+release.ImagerRepo+":v1.13.0"]; got != old.DigestStr() {
		t.Fatalf("a restart undid the re-tag: v1.13.0 is %s, the re-tag made it %s", got, old.DigestStr())
	}

	resp, again := ts.do(t, "GET", kernel, "")
	if resp.StatusCode != 200 || again != built || resp.Header.Get("X-Kiln-Cache") != "hit" {
		t.Fatalf("the kernel built before the re-tag = %d %.300q (same bytes %v), want it served", resp.StatusCode, again, again == built)
	}

	resp, body := ts.do(t, "GET", "/image/"+emptyID+"/v1.13.0/cmdline-metal-amd64", "")
	if resp.StatusCode != 412 || !strings.Contains(body, demo.Namespace+"/siderolabs/imager:v1.13.0") ||
		!strings.Contains(body, newer) || !strings.Contains(body, old.DigestStr()) {
		t.Fatalf("a new asset of the re-tagged version = %d %q, want 412 naming the repository and both digests", resp.StatusCode, body)
	}

	// The lock still names what was seeded.
	resp, body = ts.do(t, "GET", "/v1/versions/v1.13.0/lock", "")

	var got struct {
		Lock struct {
			Images     map[string]string `json:"images"`
			RecordedBy string            `json:"recordedBy"`
		} `json:"lock"`
	}

	if err := json.Unmarshal([]byte(body), &got); err != nil || resp.StatusCode != 200 || got.Lock.Images[release.ImagerRepo] != newer || got.Lock.RecordedBy != "kiln serve --demo" {
		t.Fatalf("GET lock = %d %s", resp.StatusCode, body)
	}

	// Recording a new lock is an admin call; afterwards the version builds
	// from what its tag says.
	if resp, _ := ts.do(t, "POST", "/v1/versions/v1.13.0/lock", `{"namespace":"kiln-demo"}`); resp.StatusCode != 401 {
		t.Fatalf("anonymous lock = %s, want 401", resp.Status)
	}

	adminHeader := http.Header{"Authorization": {ts.adminAuthorization(t)}}

	if resp, body := ts.doWith(t, "POST", "/v1/versions/v1.13.0/lock", `{"namespace":"elsewhere"}`, adminHeader); resp.StatusCode != 400 || !strings.Contains(body, `serves releases from namespace \"kiln-demo\"`) {
		t.Fatalf("lock of another namespace = %d %s", resp.StatusCode, body)
	}

	if resp, body := ts.doWith(t, "POST", "/v1/versions/v1.13.0/lock", `{"namespace":"kiln-demo","images":{"siderolabs/imager":"`+newer+`"}}`, adminHeader); resp.StatusCode != 412 {
		t.Fatalf("lock of what the tag no longer holds = %d %s, want 412", resp.StatusCode, body)
	}

	resp, body = ts.doWith(t, "POST", "/v1/versions/v1.13.0/lock", `{"namespace":"kiln-demo"}`, adminHeader)
	if resp.StatusCode != 200 || !strings.Contains(body, old.DigestStr()) || !strings.Contains(body, `"previous"`) || !strings.Contains(body, "kiln mirror (admin)") {
		t.Fatalf("admin lock = %d %s", resp.StatusCode, body)
	}

	if resp, body := ts.do(t, "GET", "/image/"+emptyID+"/v1.13.0/cmdline-metal-amd64", ""); resp.StatusCode != 200 {
		t.Fatalf("after the new lock, cmdline = %d %s", resp.StatusCode, body)
	}
}
