package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The seams of kiln's packages (README, Architecture), checked with the go
// command and the parser rather than trusted to review.

const (
	modulePath = "github.com/kiln-dev/kiln"
	moduleRoot = "../.."
)

// goList runs `go list` at the module root and returns its output lines.
func goList(t *testing.T, args ...string) []string {
	t.Helper()

	gocmd, err := exec.LookPath("go")
	if err != nil {
		gocmd = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}

	cmd := exec.CommandContext(t.Context(), gocmd, append([]string{"list"}, args...)...)
	cmd.Dir = moduleRoot

	out, err := cmd.Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}

		t.Fatalf("go list %v: %v\n%s", args, err, stderr)
	}

	return strings.Split(strings.TrimSpace(string(out)), "\n")
}

// imports maps each package of `go list -deps pkgs` to its imports.
func imports(t *testing.T, pkgs ...string) map[string][]string {
	t.Helper()

	deps := map[string][]string{}

	for _, line := range goList(t, append([]string{"-deps", "-f", "{{.ImportPath}}\t{{join .Imports \" \"}}"}, pkgs...)...) {
		path, imps, _ := strings.Cut(line, "\t")
		deps[path] = strings.Fields(imps)
	}

	return deps
}

func isKiln(path string) bool { return path == modulePath || strings.HasPrefix(path, modulePath+"/") }

// kilnTestKit reports whether a package of kiln's is test support.
func kilnTestKit(path string) bool {
	rel := strings.TrimPrefix(path, modulePath+"/")

	return strings.Contains(rel, "testfixture") || strings.Contains(rel, "testrelease") ||
		slices.ContainsFunc(strings.Split(rel, "/"), func(e string) bool { return strings.HasSuffix(e, "test") })
}

// thirdPartyTesting are the packages of kiln's dependencies that import
// testing or net/http/httptest from a file that is not a _test.go file,
// so that every binary using them links those: none of them is kiln's
// choice of a test kit. A new entry means a new path brings a test kit
// into the binary: look at it before adding it here.
var thirdPartyTesting = map[string]string{
	// testutils.go; reached through talos machinery/constants, which kiln
	// reads its constants from.
	"github.com/containerd/go-cni": "testing",
	// verify_test_dsa.go is compiled (its name does not end in _test.go);
	// reached through sigstore-go's RFC 3161 timestamp verification.
	"github.com/digitorus/pkcs7": "testing",
	// testutils.go; reached through cosign's pkg/cosign (signing).
	"github.com/sigstore/sigstore/pkg/tuf": "testing net/http/httptest",
	// registry.TLS; the in-memory registry mirror serves a layout or
	// archive through while it verifies its signatures.
	"github.com/google/go-containerregistry/pkg/registry":      "net/http/httptest",
	"github.com/google/go-containerregistry/internal/httptest": "net/http/httptest",
}

// TestBinaryCarriesNoTestKit: the kiln binary links none of the packages
// that sign or fake releases for tests (kiln's signingtest, testrelease,
// testfixture, storagetest, sigstore-go's test CA, ggcr's random images),
// no package of kiln imports testing or httptest, and the dependencies that
// do are the known ones above.
func TestBinaryCarriesNoTestKit(t *testing.T) {
	deps := imports(t, "./cmd/kiln")

	if len(deps) < 100 {
		t.Fatalf("go list -deps ./cmd/kiln listed %d packages: not the binary's dependencies", len(deps))
	}

	for path, imps := range deps {
		switch {
		case isKiln(path) && kilnTestKit(path),
			path == "github.com/google/go-containerregistry/pkg/v1/random",
			strings.HasPrefix(path, "github.com/sigstore/sigstore-go/pkg/testing"):
			t.Errorf("the kiln binary links the test kit %s", path)
		}

		for _, imp := range imps {
			if imp != "testing" && imp != "net/http/httptest" {
				continue
			}

			switch {
			case isKiln(path):
				t.Errorf("%s (in the kiln binary) imports %s", path, imp)
			case !slices.Contains(strings.Fields(thirdPartyTesting[path]), imp):
				t.Errorf("%s imports %s into the kiln binary, and is not one of the known dependencies that do", path, imp)
			}
		}
	}
}

// TestImportBoundaries: builder reads releases through artifacts and
// release, never the copy engine; server wires the demo from package demo,
// never from a test kit, and verifies through signing, never through
// imagecache.
func TestImportBoundaries(t *testing.T) {
	for path := range imports(t, "./builder/...") {
		if path == modulePath+"/mirror" {
			t.Errorf("builder depends on mirror")
		}
	}

	for path := range imports(t, "./server") {
		if isKiln(path) && kilnTestKit(path) {
			t.Errorf("server depends on the test kit %s", path)
		}
	}

	// What server takes from imagecache: its errors, to map them to
	// statuses. Image caches are built by builder.
	allowed := []string{"ErrInvalid", "ErrNotFound"}
	for _, use := range selectorsOf(t, "server", modulePath+"/imagecache") {
		if !slices.Contains(allowed, use.name) {
			t.Errorf("%s: server uses imagecache.%s; it may only map imagecache's errors (%v)", use.pos, use.name, allowed)
		}
	}
}

// TestOneDefinition: one interface a signature check is asked through
// (signing.Checker), one parser of versions (release), one table of
// Kubernetes images (release/kubernetes_table.go).
func TestOneDefinition(t *testing.T) {
	var verifiers, parsers, k8sTables []string

	for _, f := range moduleFiles(t) {
		ast.Inspect(f.file, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.TypeSpec:
				if it, ok := n.Type.(*ast.InterfaceType); ok {
					for _, m := range it.Methods.List {
						for _, id := range m.Names {
							if id.Name == "Verify" {
								verifiers = append(verifiers, f.dir+"."+n.Name.Name)
							}
						}
					}
				}
			case *ast.SelectorExpr:
				if x, ok := n.X.(*ast.Ident); ok && f.imports[x.Name] == "github.com/blang/semver/v4" &&
					slices.Contains([]string{"Parse", "ParseTolerant", "MustParse", "Make", "New"}, n.Sel.Name) {
					parsers = append(parsers, f.fset.Position(n.Pos()).String())
				}
			case *ast.BasicLit:
				if n.Kind == token.STRING && strings.Contains(n.Value, "registry.k8s.io/kube-apiserver") {
					k8sTables = append(k8sTables, f.path)
				}
			}

			return true
		})
	}

	if !slices.Equal(verifiers, []string{"signing.Checker"}) {
		t.Errorf("interfaces with a Verify method: %v, want signing.Checker alone", verifiers)
	}

	for _, p := range parsers {
		if !strings.HasPrefix(p, "release/") {
			t.Errorf("%s parses a version with semver; release.ParseVersion is the one parser", p)
		}
	}

	if k8sTables = slices.Compact(k8sTables); !slices.Equal(k8sTables, []string{"release/kubernetes_table.go"}) {
		t.Errorf("Kubernetes image lists in %v, want release/kubernetes_table.go alone", k8sTables)
	}
}

// goFile is a parsed non-test file of the module.
type goFile struct {
	path, dir string // relative to the module root; dir is its package's directory
	fset      *token.FileSet
	file      *ast.File
	imports   map[string]string // local name to import path
}

// moduleFiles parses the module's non-test Go files, leaving out generated
// code (gen/), the tools under hack/ and test fixtures.
func moduleFiles(t *testing.T) []goFile {
	t.Helper()

	var files []goFile

	fset := token.NewFileSet()

	err := filepath.WalkDir(moduleRoot, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}

		rel, _ := filepath.Rel(moduleRoot, p)
		rel = filepath.ToSlash(rel)

		if d.IsDir() {
			if rel != "." && (strings.HasPrefix(d.Name(), ".") || strings.HasPrefix(d.Name(), "_") ||
				slices.Contains([]string{"gen", "hack", "testdata", "node_modules", "tools"}, rel) || strings.HasPrefix(rel, "gen/") ||
				strings.Contains(rel, "testfixture") || strings.HasSuffix(d.Name(), "test")) {
				return filepath.SkipDir
			}

			return nil
		}

		if !strings.HasSuffix(rel, ".go") || strings.HasSuffix(rel, "_test.go") {
			return nil
		}

		f, err := parser.ParseFile(fset, rel, must(os.ReadFile(p)), parser.SkipObjectResolution)
		if err != nil {
			return err
		}

		gf := goFile{path: rel, dir: filepath.Base(filepath.Dir(rel)), fset: fset, file: f, imports: map[string]string{}}

		for _, imp := range f.Imports {
			ip, _ := strconv.Unquote(imp.Path.Value)

			local := filepath.Base(ip)
			if strings.HasPrefix(local, "v") && strings.Count(ip, "/") > 2 {
				if _, err := strconv.Atoi(local[1:]); err == nil {
					local = filepath.Base(filepath.Dir(ip)) // .../semver/v4 is semver
				}
			}

			if imp.Name != nil {
				local = imp.Name.Name
			}

			gf.imports[local] = ip
		}

		files = append(files, gf)

		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	if len(files) < 100 {
		t.Fatalf("found %d Go files under %s: not the module", len(files), moduleRoot)
	}

	return files
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}

	return v
}

type selectorUse struct{ pos, name string }

// selectorsOf lists the names a package's non-test files use from an
// imported package.
func selectorsOf(t *testing.T, dir, importPath string) []selectorUse {
	t.Helper()

	var uses []selectorUse

	for _, f := range moduleFiles(t) {
		if filepath.Dir(f.path) != dir {
			continue
		}

		for local, ip := range f.imports {
			if ip != importPath {
				continue
			}

			ast.Inspect(f.file, func(n ast.Node) bool {
				if s, ok := n.(*ast.SelectorExpr); ok {
					if x, ok := s.X.(*ast.Ident); ok && x.Name == local {
						uses = append(uses, selectorUse{f.fset.Position(s.Pos()).String(), s.Sel.Name})
					}
				}

				return true
			})
		}
	}

	return uses
}

// TestREADMEArchitecture: the README's table of packages lists every
// package of the module, and no other.
func TestREADMEArchitecture(t *testing.T) {
	const (
		begin = "<!-- kiln packages: every package of the module, checked by cmd/kiln TestREADMEArchitecture -->"
		end   = "<!-- end of kiln packages -->"
	)

	readme := string(must(os.ReadFile(readmePath)))

	_, table, ok := strings.Cut(readme, begin+"\n")
	table, _, ok2 := strings.Cut(table, end)

	if !ok || !ok2 {
		t.Fatalf("README has no package table between %q and %q", begin, end)
	}

	var listed []string

	for line := range strings.SplitSeq(strings.TrimSpace(table), "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 4 || !strings.HasPrefix(strings.TrimSpace(cells[1]), "`") {
			continue
		}

		if strings.TrimSpace(cells[2]) == "" {
			t.Errorf("README: package %s has no role", cells[1])
		}

		listed = append(listed, strings.Trim(strings.TrimSpace(cells[1]), "`"))
	}

	var pkgs []string

	for _, p := range goList(t, "-e", "-f", "{{.ImportPath}}", "./...") {
		pkgs = append(pkgs, strings.TrimPrefix(p, modulePath+"/"))
	}

	for _, p := range pkgs {
		if !slices.Contains(listed, p) {
			t.Errorf("README's Architecture table lacks the package %s", p)
		}
	}

	for _, p := range listed {
		if !slices.Contains(pkgs, p) {
			t.Errorf("README's Architecture table lists %s, which is no package of the module", p)
		}
	}
}
