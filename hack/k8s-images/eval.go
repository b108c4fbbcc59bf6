package main

import (
	"errors"
	"fmt"
	"go/ast"
	"go/build"
	"go/constant"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// pkg is one parsed Go package (test files left out, build constraints
// evaluated for linux/amd64, the platform Talos builds talosctl's default
// list on) with what the generator reads of it: its constants and its
// functions.
type pkg struct {
	dir   string
	files []*ast.File
	// consts maps a package-level constant to its expression and the file
	// declaring it (whose imports resolve the expression's selectors).
	consts map[string]constDecl
	funcs  []*ast.FuncDecl
	fileOf map[ast.Node]*ast.File
}

type constDecl struct {
	expr ast.Expr
	file *ast.File
}

// loader parses packages of two module trees on demand: the talos main
// module and its pkg/machinery module, as the talos build sees them (its
// go.mod replaces machinery with ./pkg/machinery).
type loader struct {
	fset      *token.FileSet
	machinery string // directory of github.com/siderolabs/talos/pkg/machinery@V
	talos     string // directory of github.com/siderolabs/talos@V; "" when not needed
	pkgs      map[string]*pkg
	values    map[string]constant.Value
	active    map[string]bool
}

const (
	machineryPath = "github.com/siderolabs/talos/pkg/machinery"
	talosPath     = "github.com/siderolabs/talos"
)

func newLoader(machineryDir, talosDir string) *loader {
	return &loader{
		fset:      token.NewFileSet(),
		machinery: machineryDir,
		talos:     talosDir,
		pkgs:      map[string]*pkg{},
		values:    map[string]constant.Value{},
		active:    map[string]bool{},
	}
}

// dir maps an import path of either module to its directory.
func (l *loader) dir(importPath string) (string, error) {
	if rest, ok := strings.CutPrefix(importPath, machineryPath); ok && (rest == "" || rest[0] == '/') {
		return filepath.Join(l.machinery, filepath.FromSlash(rest)), nil
	}

	if rest, ok := strings.CutPrefix(importPath, talosPath+"/"); ok && l.talos != "" {
		return filepath.Join(l.talos, filepath.FromSlash(rest)), nil
	}

	return "", fmt.Errorf("import %q: outside the talos and machinery modules", importPath)
}

// load parses the package at importPath once.
func (l *loader) load(importPath string) (*pkg, error) {
	if p, ok := l.pkgs[importPath]; ok {
		return p, nil
	}

	dir, err := l.dir(importPath)
	if err != nil {
		return nil, err
	}

	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("package %s: %w", importPath, err)
	}

	bctx := build.Default
	bctx.GOOS, bctx.GOARCH, bctx.CgoEnabled = "linux", "amd64", false

	p := &pkg{dir: dir, consts: map[string]constDecl{}, fileOf: map[ast.Node]*ast.File{}}

	for _, e := range entries {
		n := e.Name()
		if e.IsDir() || !strings.HasSuffix(n, ".go") || strings.HasSuffix(n, "_test.go") {
			continue
		}

		if ok, err := bctx.MatchFile(dir, n); err != nil || !ok {
			continue
		}

		f, err := parser.ParseFile(l.fset, filepath.Join(dir, n), nil, parser.SkipObjectResolution)
		if err != nil {
			return nil, fmt.Errorf("package %s: %w", importPath, err)
		}

		p.files = append(p.files, f)

		for _, d := range f.Decls {
			switch d := d.(type) {
			case *ast.GenDecl:
				if d.Tok != token.CONST {
					continue
				}

				for _, s := range d.Specs {
					vs := s.(*ast.ValueSpec)
					for i, id := range vs.Names {
						// Specs without values repeat the previous
						// expression (iota lists); no string constant the
						// generator reads is written that way.
						if i < len(vs.Values) {
							p.consts[id.Name] = constDecl{expr: vs.Values[i], file: f}
						}
					}
				}
			case *ast.FuncDecl:
				p.funcs = append(p.funcs, d)
				p.fileOf[d] = f
			}
		}
	}

	if len(p.files) == 0 {
		return nil, fmt.Errorf("package %s: no Go files in %s", importPath, dir)
	}

	l.pkgs[importPath] = p

	return p, nil
}

// constant evaluates the package-level constant name of importPath.
func (l *loader) constant(importPath, name string) (constant.Value, error) {
	key := importPath + "." + name
	if v, ok := l.values[key]; ok {
		return v, nil
	}

	if l.active[key] {
		return nil, fmt.Errorf("constant %s refers to itself", key)
	}

	p, err := l.load(importPath)
	if err != nil {
		return nil, err
	}

	d, ok := p.consts[name]
	if !ok {
		return nil, fmt.Errorf("constant %s: not declared", key)
	}

	l.active[key] = true
	defer delete(l.active, key)

	v, err := l.eval(importPath, d.file, d.expr)
	if err != nil {
		return nil, fmt.Errorf("constant %s: %w", key, err)
	}

	l.values[key] = v

	return v, nil
}

// importOf is the import path a file names ident for ("constants" →
// ".../pkg/machinery/constants").
func importOf(f *ast.File, ident string) (string, bool) {
	for _, im := range f.Imports {
		p, err := strconv.Unquote(im.Path.Value)
		if err != nil {
			continue
		}

		n := p[strings.LastIndex(p, "/")+1:]
		if im.Name != nil {
			n = im.Name.Name
		}

		if n == ident {
			return p, true
		}
	}

	return "", false
}

var errNotConstant = errors.New("not a constant expression")

// eval computes a constant expression written in file f of importPath:
// literals, constants of this or an imported package, +, parentheses and
// fmt.Sprintf of constants (which the Image methods of the machinery
// config use to join a repository and a tag).
func (l *loader) eval(importPath string, f *ast.File, e ast.Expr) (constant.Value, error) {
	switch e := e.(type) {
	case *ast.BasicLit:
		v := constant.MakeFromLiteral(e.Value, e.Kind, 0)
		if v.Kind() == constant.Unknown {
			return nil, fmt.Errorf("literal %s: %w", e.Value, errNotConstant)
		}

		return v, nil
	case *ast.ParenExpr:
		return l.eval(importPath, f, e.X)
	case *ast.Ident:
		return l.constant(importPath, e.Name)
	case *ast.SelectorExpr:
		x, ok := e.X.(*ast.Ident)
		if !ok {
			return nil, fmt.Errorf("%s: %w", l.source(e), errNotConstant)
		}

		path, ok := importOf(f, x.Name)
		if !ok {
			return nil, fmt.Errorf("%s: %s is not an imported package: %w", l.source(e), x.Name, errNotConstant)
		}

		return l.constant(path, e.Sel.Name)
	case *ast.BinaryExpr:
		x, err := l.eval(importPath, f, e.X)
		if err != nil {
			return nil, err
		}

		y, err := l.eval(importPath, f, e.Y)
		if err != nil {
			return nil, err
		}

		if e.Op != token.ADD || x.Kind() != y.Kind() {
			return nil, fmt.Errorf("%s: only + of like constants is supported: %w", l.source(e), errNotConstant)
		}

		return constant.BinaryOp(x, token.ADD, y), nil
	case *ast.CallExpr:
		return l.sprintf(importPath, f, e)
	}

	return nil, fmt.Errorf("%s: %w", l.source(e), errNotConstant)
}

// sprintf evaluates fmt.Sprintf(format, constants...) with fmt itself.
func (l *loader) sprintf(importPath string, f *ast.File, call *ast.CallExpr) (constant.Value, error) {
	sel, ok := call.Fun.(*ast.SelectorExpr)
	if !ok || sel.Sel.Name != "Sprintf" || len(call.Args) == 0 || call.Ellipsis.IsValid() {
		return nil, fmt.Errorf("%s: %w", l.source(call), errNotConstant)
	}

	if x, ok := sel.X.(*ast.Ident); !ok {
		return nil, fmt.Errorf("%s: %w", l.source(call), errNotConstant)
	} else if p, ok := importOf(f, x.Name); !ok || p != "fmt" {
		return nil, fmt.Errorf("%s: not fmt.Sprintf: %w", l.source(call), errNotConstant)
	}

	args := make([]any, 0, len(call.Args))

	for _, a := range call.Args {
		v, err := l.eval(importPath, f, a)
		if err != nil {
			return nil, err
		}

		switch v.Kind() {
		case constant.String:
			args = append(args, constant.StringVal(v))
		case constant.Int:
			n, ok := constant.Int64Val(v)
			if !ok {
				return nil, fmt.Errorf("%s: integer out of range", l.source(a))
			}

			args = append(args, n)
		default:
			return nil, fmt.Errorf("%s: %w", l.source(a), errNotConstant)
		}
	}

	format, ok := args[0].(string)
	if !ok {
		return nil, fmt.Errorf("%s: format is not a string", l.source(call))
	}

	return constant.MakeString(fmt.Sprintf(format, args[1:]...)), nil
}

// str evaluates e and wants a string.
func (l *loader) str(importPath string, f *ast.File, e ast.Expr) (string, error) {
	v, err := l.eval(importPath, f, e)
	if err != nil {
		return "", err
	}

	if v.Kind() != constant.String {
		return "", fmt.Errorf("%s: not a string constant", l.source(e))
	}

	return constant.StringVal(v), nil
}

// source is e as written, with its position, for error messages.
func (l *loader) source(n ast.Node) string {
	pos := l.fset.Position(n.Pos())

	return fmt.Sprintf("%s:%d", filepath.Base(pos.Filename), pos.Line)
}
