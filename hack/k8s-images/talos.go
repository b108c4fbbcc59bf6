package main

import (
	"fmt"
	"go/ast"
	"go/token"
	"slices"
	"strconv"
	"strings"

	"github.com/blang/semver/v4"
	"github.com/google/go-containerregistry/pkg/name"
)

const (
	talosctlCmdPkg = talosPath + "/cmd/talosctl/cmd/talos"
	imagesPkg      = talosPath + "/pkg/images"
	v1alpha1Pkg    = machineryPath + "/config/types/v1alpha1"
)

// notClusterImages are fields `talosctl images default` prints that a
// cluster does not run: the installer (printed up to v1.11, on request in
// 1.12 pre-releases) comes from the factory, and the talos image (1.12
// pre-releases, for the docker provisioner) is Talos itself.
var notClusterImages = map[string]bool{"Installer": true, "Talos": true}

// accessorTypes maps the config accessor pkg/images.List calls before
// Image() to the v1alpha1 type whose Image method gives the default:
// talosctl's default command passes a bare v1alpha1.Config, so
// config.Cluster().Etcd() is a *v1alpha1.EtcdConfig, and the K8s*Config
// accessors of 1.14 bridge to the same structs (v1alpha1_k8s_bridge.go).
var accessorTypes = map[string]string{
	"Etcd":                       "EtcdConfig",
	"CoreDNS":                    "CoreDNS",
	"Kubelet":                    "KubeletConfig",
	"K8sKubeletConfig":           "KubeletConfig",
	"K8sCoreDNSConfig":           "CoreDNS",
	"APIServer":                  "APIServerConfig",
	"K8sAPIServerConfig":         "APIServerConfig",
	"ControllerManager":          "ControllerManagerConfig",
	"K8sControllerManagerConfig": "ControllerManagerConfig",
	"Scheduler":                  "SchedulerConfig",
	"K8sSchedulerConfig":         "SchedulerConfig",
	"Proxy":                      "ProxyConfig",
	"K8sProxyConfig":             "ProxyConfig",
}

// row is one version's cluster images in talosctl's order.
type row struct {
	// Images are what a node of that version pulls by default.
	Images []string
	// Printed are what `talosctl images default` prints for the same
	// images; they differ where a talosctl flag default re-tags an image
	// (talosctl v1.13.0-v1.13.6 dropped the "v" of Kubernetes tags).
	Printed []string
}

// derive computes the cluster images of the machinery module in
// machineryDir as the talos main module in talosDir lists them: the
// fields `talosctl images default` prints, in its order, each computed as
// pkg/images.List computes it, from the machinery's constants.
func derive(machineryDir, talosDir string) (row, error) {
	l := newLoader(machineryDir, talosDir)

	cmd, err := defaultCommand(l)
	if err != nil {
		return row{}, err
	}

	list, err := listFunc(l)
	if err != nil {
		return row{}, err
	}

	var r row

	for _, field := range cmd.fields {
		if notClusterImages[field] {
			continue
		}

		e, ok := list.assign[field]
		if !ok {
			return row{}, fmt.Errorf("talosctl prints images.%s, which pkg/images.List does not set", field)
		}

		ref, err := l.listValue(list.file, e)
		if err != nil {
			return row{}, fmt.Errorf("images.%s: %w", field, err)
		}

		tag, err := name.NewTag(ref, name.StrictValidation)
		if err != nil || tag.String() != ref {
			return row{}, fmt.Errorf("images.%s = %q: not a fully qualified tagged reference (%v)", field, ref, err)
		}

		printed := ref

		if opt, ok := list.options[field]; ok {
			if flag, ok := cmd.options[opt]; ok {
				v, err := l.flagValue(cmd, flag)
				if err != nil {
					return row{}, fmt.Errorf("images.%s: option %s: %w", field, opt, err)
				}

				printed = tag.Context().Name() + ":" + v
			}
		}

		r.Images = append(r.Images, ref)
		r.Printed = append(r.Printed, printed)
	}

	if len(r.Images) == 0 {
		return row{}, fmt.Errorf("talosctl images default prints no cluster image")
	}

	return r, nil
}

// command is what the RunE of `talosctl images default` does.
type command struct {
	file *ast.File
	// fields are the images.<Field> it prints, in order.
	fields []string
	// options maps a VersionsListOptions field to its value expression,
	// when it calls ListWithOptions.
	options map[string]ast.Expr
}

// defaultCommand finds the cobra.Command named "default" (or aliased so,
// from v1.13 where it is "k8s-bundle") in talosctl's talos commands.
func defaultCommand(l *loader) (*command, error) {
	p, err := l.load(talosctlCmdPkg)
	if err != nil {
		return nil, err
	}

	var found []*command

	for _, f := range p.files {
		ast.Inspect(f, func(n ast.Node) bool {
			lit, ok := n.(*ast.CompositeLit)
			if !ok || !isSelector(lit.Type, "cobra", "Command") {
				return true
			}

			var (
				isDefault bool
				run       *ast.FuncLit
			)

			for _, el := range lit.Elts {
				kv, ok := el.(*ast.KeyValueExpr)
				if !ok {
					continue
				}

				key, _ := kv.Key.(*ast.Ident)
				if key == nil {
					continue
				}

				switch key.Name {
				case "Use":
					isDefault = isDefault || stringLit(kv.Value) == "default"
				case "Aliases":
					if al, ok := kv.Value.(*ast.CompositeLit); ok {
						isDefault = isDefault || slices.ContainsFunc(al.Elts, func(e ast.Expr) bool { return stringLit(e) == "default" })
					}
				case "RunE":
					run, _ = kv.Value.(*ast.FuncLit)
				}
			}

			if isDefault && run != nil {
				found = append(found, readRun(f, run))
			}

			return true
		})
	}

	if len(found) != 1 {
		return nil, fmt.Errorf("%s: %d commands named or aliased \"default\" with a RunE, want 1", talosctlCmdPkg, len(found))
	}

	if len(found[0].fields) == 0 {
		return nil, fmt.Errorf("%s: the default command prints no images.<Field>", talosctlCmdPkg)
	}

	return found[0], nil
}

// readRun collects, in source order, the images.<Field> arguments of the
// print calls of run and the ListWithOptions options.
func readRun(f *ast.File, run *ast.FuncLit) *command {
	c := &command{file: f, options: map[string]ast.Expr{}}

	ast.Inspect(run.Body, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok {
			return true
		}

		sel, ok := call.Fun.(*ast.SelectorExpr)
		if !ok {
			return true
		}

		switch {
		case isFmtPrint(f, sel):
			for _, a := range call.Args {
				if s, ok := a.(*ast.SelectorExpr); ok {
					if _, ok := s.X.(*ast.Ident); ok {
						c.fields = append(c.fields, s.Sel.Name)
					}
				}
			}
		case sel.Sel.Name == "ListWithOptions" && len(call.Args) == 2:
			if lit, ok := call.Args[1].(*ast.CompositeLit); ok {
				for _, el := range lit.Elts {
					if kv, ok := el.(*ast.KeyValueExpr); ok {
						if k, ok := kv.Key.(*ast.Ident); ok {
							c.options[k.Name] = kv.Value
						}
					}
				}
			}
		}

		return true
	})

	return c
}

// isFmtPrint reports whether sel is a Print* function of an imported
// package: fmt, or from v1.14 talosctl's own safeout.
func isFmtPrint(f *ast.File, sel *ast.SelectorExpr) bool {
	x, ok := sel.X.(*ast.Ident)
	if !ok {
		return false
	}

	p, ok := importOf(f, x.Name)

	return ok && (p == "fmt" || strings.HasSuffix(p, "/safeout")) && strings.HasPrefix(sel.Sel.Name, "Print")
}

// list is pkg/images.List and ListWithOptions.
type list struct {
	file *ast.File
	// assign maps a Versions field to the expression List assigns it.
	assign map[string]ast.Expr
	// options maps a Versions field to the VersionsListOptions field that
	// re-tags it in ListWithOptions.
	options map[string]string
}

func listFunc(l *loader) (*list, error) {
	p, err := l.load(imagesPkg)
	if err != nil {
		return nil, err
	}

	out := &list{assign: map[string]ast.Expr{}, options: map[string]string{}}

	for _, fn := range p.funcs {
		if fn.Recv != nil || fn.Body == nil {
			continue
		}

		switch fn.Name.Name {
		case "List":
			out.file = p.fileOf[fn]

			for _, st := range fn.Body.List {
				as, ok := st.(*ast.AssignStmt)
				if !ok || len(as.Lhs) != 1 || len(as.Rhs) != 1 {
					continue
				}

				if field, ok := fieldOf(as.Lhs[0]); ok {
					out.assign[field] = as.Rhs[0]
				}
			}
		case "ListWithOptions":
			for _, st := range fn.Body.List {
				ifs, ok := st.(*ast.IfStmt)
				if !ok {
					continue
				}

				cond, ok := ifs.Cond.(*ast.BinaryExpr)
				if !ok || cond.Op != token.NEQ {
					continue
				}

				opt, ok := fieldOf(cond.X)
				if !ok {
					continue
				}

				for _, bst := range ifs.Body.List {
					if as, ok := bst.(*ast.AssignStmt); ok && len(as.Lhs) == 1 {
						if field, ok := fieldOf(as.Lhs[0]); ok {
							out.options[field] = opt
						}
					}
				}
			}
		}
	}

	if out.file == nil || len(out.assign) == 0 {
		return nil, fmt.Errorf("%s: no func List assigning images.<Field>", imagesPkg)
	}

	return out, nil
}

// fieldOf is F of x.F.
func fieldOf(e ast.Expr) (string, bool) {
	s, ok := e.(*ast.SelectorExpr)
	if !ok {
		return "", false
	}

	if _, ok := s.X.(*ast.Ident); !ok {
		return "", false
	}

	return s.Sel.Name, true
}

// listValue evaluates what List assigns: a constant expression,
// config.<...>.<Accessor>().Image(), or (from v1.14) a call of a
// pkg/images function that returns one, each possibly wrapped in
// mustParseTag.
func (l *loader) listValue(f *ast.File, e ast.Expr) (string, error) {
	return l.listValueDepth(f, e, 0)
}

func (l *loader) listValueDepth(f *ast.File, e ast.Expr, depth int) (string, error) {
	if call, ok := e.(*ast.CallExpr); ok && len(call.Args) == 1 {
		if id, ok := call.Fun.(*ast.Ident); ok && strings.HasPrefix(id.Name, "mustParse") {
			e = call.Args[0]
		}
	}

	if call, ok := e.(*ast.CallExpr); ok && len(call.Args) == 0 {
		if id, ok := call.Fun.(*ast.Ident); ok {
			if depth > 4 {
				return "", fmt.Errorf("%s: calls nested too deep", l.source(e))
			}

			fn, ff, err := l.localFunc(imagesPkg, id.Name)
			if err != nil {
				return "", err
			}

			return l.listValueDepth(ff, fn, depth+1)
		}
	}

	if call, ok := e.(*ast.CallExpr); ok && len(call.Args) == 0 {
		if sel, ok := call.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "Image" {
			inner, ok := sel.X.(*ast.CallExpr)
			if !ok {
				return "", fmt.Errorf("%s: Image() not called on an accessor", l.source(e))
			}

			acc, ok := inner.Fun.(*ast.SelectorExpr)
			if !ok {
				return "", fmt.Errorf("%s: Image() not called on an accessor", l.source(e))
			}

			typ, ok := accessorTypes[acc.Sel.Name]
			if !ok {
				return "", fmt.Errorf("%s: config accessor %s: no known v1alpha1 type (update accessorTypes)", l.source(e), acc.Sel.Name)
			}

			return l.imageMethod(typ)
		}
	}

	return l.str(imagesPkg, f, e)
}

// localFunc is the returned expression of a package function without
// parameters whose body is a single return statement.
func (l *loader) localFunc(importPath, name string) (ast.Expr, *ast.File, error) {
	p, err := l.load(importPath)
	if err != nil {
		return nil, nil, err
	}

	for _, fn := range p.funcs {
		if fn.Recv != nil || fn.Name.Name != name || fn.Body == nil {
			continue
		}

		if fn.Type.Params.NumFields() != 0 || len(fn.Body.List) != 1 {
			return nil, nil, fmt.Errorf("%s: func %s is not a single return without parameters", l.source(fn), name)
		}

		ret, ok := fn.Body.List[0].(*ast.ReturnStmt)
		if !ok || len(ret.Results) != 1 {
			return nil, nil, fmt.Errorf("%s: func %s is not a single return", l.source(fn), name)
		}

		return ret.Results[0], p.fileOf[fn], nil
	}

	return nil, nil, fmt.Errorf("%s: no func %s", importPath, name)
}

// imageMethod evaluates the default of (*v1alpha1.<typ>).Image(): the one
// fmt.Sprintf of repository and tag constants in its body.
func (l *loader) imageMethod(typ string) (string, error) {
	p, err := l.load(v1alpha1Pkg)
	if err != nil {
		return "", err
	}

	for _, fn := range p.funcs {
		if fn.Name.Name != "Image" || fn.Recv == nil || len(fn.Recv.List) != 1 || recvType(fn.Recv.List[0].Type) != typ {
			continue
		}

		f := p.fileOf[fn]

		var calls []*ast.CallExpr

		ast.Inspect(fn.Body, func(n ast.Node) bool {
			if c, ok := n.(*ast.CallExpr); ok {
				if s, ok := c.Fun.(*ast.SelectorExpr); ok && s.Sel.Name == "Sprintf" {
					if x, ok := s.X.(*ast.Ident); ok {
						if p, ok := importOf(f, x.Name); ok && p == "fmt" {
							calls = append(calls, c)
						}
					}
				}
			}

			return true
		})

		if len(calls) != 1 {
			return "", fmt.Errorf("(*v1alpha1.%s).Image: %d fmt.Sprintf calls, want 1", typ, len(calls))
		}

		return l.str(v1alpha1Pkg, f, calls[0])
	}

	return "", fmt.Errorf("(*v1alpha1.%s).Image: not found", typ)
}

// flagValue evaluates an option value written as
// <flagsVar>.<field>.String(), where <flagsVar> is a package variable whose
// <field> is flags.Semver(<default>): what the flag prints is the default
// parsed with semver.ParseTolerant, keeping a leading "v" (talos
// pkg/flags.semverValue.String).
func (l *loader) flagValue(c *command, e ast.Expr) (string, error) {
	call, ok := e.(*ast.CallExpr)
	if !ok || len(call.Args) != 0 {
		return l.str(talosctlCmdPkg, c.file, e)
	}

	sel, ok := call.Fun.(*ast.SelectorExpr)
	if !ok || sel.Sel.Name != "String" {
		return "", fmt.Errorf("%s: not <flags>.<field>.String()", l.source(e))
	}

	field, ok := sel.X.(*ast.SelectorExpr)
	if !ok {
		return "", fmt.Errorf("%s: not <flags>.<field>.String()", l.source(e))
	}

	varName, ok := field.X.(*ast.Ident)
	if !ok {
		return "", fmt.Errorf("%s: not <flags>.<field>.String()", l.source(e))
	}

	p, err := l.load(talosctlCmdPkg)
	if err != nil {
		return "", err
	}

	for _, f := range p.files {
		for _, d := range f.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.VAR {
				continue
			}

			for _, s := range gd.Specs {
				vs := s.(*ast.ValueSpec)
				for i, id := range vs.Names {
					if id.Name != varName.Name || i >= len(vs.Values) {
						continue
					}

					lit, ok := vs.Values[i].(*ast.CompositeLit)
					if !ok {
						return "", fmt.Errorf("%s: %s is not a composite literal", l.source(vs), id.Name)
					}

					return l.semverFlag(f, lit, field.Sel.Name)
				}
			}
		}
	}

	return "", fmt.Errorf("%s: variable %s not found", l.source(e), varName.Name)
}

func (l *loader) semverFlag(f *ast.File, lit *ast.CompositeLit, field string) (string, error) {
	for _, el := range lit.Elts {
		kv, ok := el.(*ast.KeyValueExpr)
		if !ok {
			continue
		}

		if k, ok := kv.Key.(*ast.Ident); !ok || k.Name != field {
			continue
		}

		call, ok := kv.Value.(*ast.CallExpr)
		if !ok || len(call.Args) == 0 || !isSelector(call.Fun, "flags", "Semver") {
			return "", fmt.Errorf("%s: %s is not flags.Semver(...)", l.source(kv), field)
		}

		def, err := l.str(talosctlCmdPkg, f, call.Args[0])
		if err != nil {
			return "", err
		}

		v, err := semver.ParseTolerant(def)
		if err != nil {
			return "", fmt.Errorf("%s: flags.Semver(%q): %w", l.source(kv), def, err)
		}

		prefix := ""
		if strings.HasPrefix(def, "v") {
			prefix = "v"
		}

		return prefix + v.String(), nil
	}

	return "", fmt.Errorf("%s: no field %s", l.source(lit), field)
}

func recvType(e ast.Expr) string {
	if s, ok := e.(*ast.StarExpr); ok {
		e = s.X
	}

	if id, ok := e.(*ast.Ident); ok {
		return id.Name
	}

	return ""
}

func isSelector(e ast.Expr, x, sel string) bool {
	if u, ok := e.(*ast.UnaryExpr); ok {
		e = u.X
	}

	s, ok := e.(*ast.SelectorExpr)
	if !ok || s.Sel.Name != sel {
		return false
	}

	id, ok := s.X.(*ast.Ident)

	return ok && id.Name == x
}

func stringLit(e ast.Expr) string {
	lit, ok := e.(*ast.BasicLit)
	if !ok || lit.Kind != token.STRING {
		return ""
	}

	s, err := strconv.Unquote(lit.Value)
	if err != nil {
		return ""
	}

	return s
}
