// Package depmod computes, in pure Go, the files `depmod --all` (kmod 30)
// writes into a kernel module directory: modules.dep and the other text
// files that Talos's module loader reads (github.com/pmorjan/kmod, used
// by machined's KernelModuleSpec controller, reads modules.dep,
// modules.alias and modules.builtin), and the binary indexes libkmod
// reads (modules.dep.bin, modules.alias.bin, modules.symbols.bin,
// modules.builtin.bin, modules.builtin.alias.bin; udevd and kmod's
// modprobe use only those).
//
// It follows kmod's tools/depmod.c and libkmod-elf.c: a module's exports
// are its __crc_* symbols (CONFIG_MODVERSIONS) or else the strings of
// __ksymtab_strings; its needs are its undefined symbols and __versions
// entries; a module depends on the modules exporting what it needs.
// Modules are ordered by modules.order, the rest in the iteration order of
// depmod's hash table, and each line's dependencies in depmod's
// topological order, so that the output is byte-for-byte depmod's
// (tested against Debian's depmod). Only uncompressed .ko files are read:
// Talos kernels have no module compression (CONFIG_MODULE_COMPRESS unset).
package depmod

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"path"
	"slices"
	"strconv"
	"strings"
)

// Files are the names Generate returns, in the order depmod writes them.
var Files = []string{
	"modules.dep", "modules.dep.bin", "modules.alias", "modules.alias.bin", "modules.softdep",
	"modules.symbols", "modules.symbols.bin", "modules.builtin.bin", "modules.builtin.alias.bin", "modules.devname",
}

// BuiltIn is the search-list name for every directory not named otherwise.
const BuiltIn = "built-in"

// Options are depmod.d settings.
type Options struct {
	// Search is the "search" list, highest priority first; BuiltIn stands
	// for every directory the list does not name. When a module name is
	// found twice, the copy in the higher-priority directory wins. Empty
	// means depmod's default, {"updates"} before everything else. Talos
	// passes /etc/modules.d/10-extra-modules.conf: "search extras built-in".
	Search []string
	// Logger receives what depmod would print as warnings (unreadable
	// modules, dependency cycles); nil discards them.
	Logger *slog.Logger
	// MaxModuleSize bounds a module read into memory when fsys does not
	// give an io.ReaderAt; 0 means 1 GiB.
	MaxModuleSize int64
}

// mod is one module of the tree.
type mod struct {
	name    string // "vfat"
	relpath string // "kernel/fs/fat/vfat.ko"
	info    *module
	sortIdx int
	idx     int
	// dependencies in the order found, each once
	deps       []*mod
	users      int
	depSortIdx int
	depLoop    bool
}

// symbolOwner maps a symbol to the module exporting it.
type symbolOwner struct {
	owner *mod
}

const maxInt32 = 1<<31 - 1

// Generate reads the module directory fsys (lib/modules/<kver>) and
// returns the content of each of Files.
func Generate(fsys fs.FS, opts Options) (map[string][]byte, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	if opts.MaxModuleSize == 0 {
		opts.MaxModuleSize = 1 << 30
	}

	search := opts.Search
	if len(search) == 0 {
		search = []string{"updates"}
	}

	d := &depmod{fsys: fsys, opts: opts, log: log, search: search, byName: map[string]*mod{}}

	if err := d.find(); err != nil {
		return nil, err
	}

	d.buildArray()

	if err := d.sort(); err != nil {
		return nil, err
	}

	if err := d.load(); err != nil {
		return nil, err
	}

	d.calculate()

	return d.output()
}

type depmod struct {
	fsys    fs.FS
	opts    Options
	log     *slog.Logger
	search  []string
	byName  map[string]*mod
	modules []*mod
	symbols map[string]symbolOwner
}

// modname is libkmod's modname_normalize of a path's last element: up to
// the first '.', with '-' as '_'.
func modname(p string) string {
	base := path.Base(p)
	if i := strings.IndexByte(base, '.'); i >= 0 {
		base = base[:i]
	}

	return strings.ReplaceAll(base, "-", "_")
}

// find walks the tree for *.ko, skipping "build" and "source" and keeping,
// for each module name, the copy the search list prefers.
func (d *depmod) find() error {
	return fs.WalkDir(d.fsys, ".", func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}

		if p == "." {
			return nil
		}

		if e.Name() == "build" || e.Name() == "source" {
			if e.IsDir() {
				return fs.SkipDir
			}

			return nil
		}

		if e.IsDir() || !e.Type().IsRegular() || !strings.HasSuffix(p, ".ko") || len(e.Name()) <= len(".ko") {
			return nil
		}

		name := modname(p)

		if old, ok := d.byName[name]; ok {
			if d.higherPriority(old.relpath, p) {
				d.log.Debug("depmod: ignored lower priority module", "path", p, "kept", old.relpath)
				return nil
			}
		}

		d.byName[name] = &mod{name: name, relpath: p, sortIdx: 1, depSortIdx: maxInt32}

		return nil
	})
}

// higherPriority says whether the module at oldPath wins over newPath,
// as depmod_module_is_higher_priority decides (overrides aside). depmod
// keeps the search list in reverse (each entry is pushed on its head), so
// a higher rank is a higher priority; a path takes the rank of the
// highest entry it starts with, or BuiltIn's; old wins ties. Its quirk is
// kept: an entry matching the new path is not tried on the old one.
func (d *depmod) higherPriority(oldPath, newPath string) bool {
	newPrio, oldPrio, builtin := -1, -1, -1

	for i := range d.search {
		s := d.search[len(d.search)-1-i]

		switch {
		case s == BuiltIn:
			builtin = i
		case strings.HasPrefix(newPath, s):
			newPrio = i
		case strings.HasPrefix(oldPath, s):
			oldPrio = i
		}
	}

	if newPrio < 0 {
		newPrio = builtin
	}

	if oldPrio < 0 {
		oldPrio = builtin
	}

	return newPrio <= oldPrio
}

// buildArray lists the modules in the iteration order of depmod's
// modules_by_name hash table (512 buckets).
func (d *depmod) buildArray() {
	names := make([]string, 0, len(d.byName))
	for n := range d.byName {
		names = append(names, n)
	}

	hashOrder(names, 512)

	for i, n := range names {
		m := d.byName[n]
		m.idx = i
		d.modules = append(d.modules, m)
	}
}

// sort orders the modules by modules.order (depmod_modules_sort): listed
// modules first, in the file's order, the others after them in hash
// order. A file whose last line lacks its newline is ignored, as depmod
// ignores it.
func (d *depmod) sort() error {
	data, err := fs.ReadFile(d.fsys, "modules.order")
	if errors.Is(err, fs.ErrNotExist) {
		d.log.Warn("depmod: no modules.order")
		return nil
	}

	if err != nil {
		return fmt.Errorf("depmod: %w", err)
	}

	if len(data) > 0 && data[len(data)-1] != '\n' {
		d.log.Warn("depmod: modules.order: last line has no newline")
		return nil
	}

	lines := strings.SplitAfter(string(data), "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}

	byPath := make(map[string]*mod, len(d.modules))
	for _, m := range d.modules {
		byPath[m.relpath] = m
	}

	total := len(lines) + 1

	for i, line := range lines {
		if m, ok := byPath[strings.TrimSuffix(line, "\n")]; ok {
			m.sortIdx = i + 1 - total
		}
	}

	slices.SortStableFunc(d.modules, func(a, b *mod) int { return a.sortIdx - b.sortIdx })

	for i, m := range d.modules {
		m.idx = i
	}

	return nil
}

// load reads every module's symbols and modinfo, and resolves each
// module's needs against the exports (a later module's export replaces an
// earlier one's, as depmod's hash_add does).
func (d *depmod) load() error {
	d.symbols = map[string]symbolOwner{}

	for _, m := range d.modules {
		info, parseErr, err := d.read(m.relpath)
		if err != nil {
			return fmt.Errorf("depmod: %w", err)
		}

		if parseErr != nil {
			d.log.Warn("depmod: not a readable module; listed without dependencies", "module", m.relpath, "error", parseErr)

			info = &module{}
		}

		m.info = info

		for _, s := range info.exports {
			d.symbols[s] = symbolOwner{owner: m}
		}
	}

	for _, m := range d.modules {
		for _, s := range m.info.needs {
			s = strings.TrimPrefix(s, ".") // PPC64: .foo == foo

			sym, ok := d.symbols[s]
			if !ok {
				continue
			}

			if !slices.Contains(m.deps, sym.owner) {
				m.deps = append(m.deps, sym.owner)
				sym.owner.users++
			}
		}
	}

	return nil
}

// read parses one module. err is about reading the tree (fatal); parseErr
// about the file's content, which depmod only reports.
func (d *depmod) read(relpath string) (m *module, parseErr, err error) {
	f, err := d.fsys.Open(relpath)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close() //nolint:errcheck // read-only

	if ra, ok := f.(io.ReaderAt); ok {
		fi, err := f.Stat()
		if err != nil {
			return nil, nil, err
		}

		m, parseErr = readModule(ra, fi.Size())

		return m, parseErr, nil
	}

	data, err := io.ReadAll(io.LimitReader(f, d.opts.MaxModuleSize+1))
	if err != nil {
		return nil, nil, &fs.PathError{Op: "read", Path: relpath, Err: err}
	}

	if int64(len(data)) > d.opts.MaxModuleSize {
		return nil, nil, &fs.PathError{Op: "read", Path: relpath, Err: fmt.Errorf("larger than %d bytes", d.opts.MaxModuleSize)}
	}

	m, parseErr = readModule(bytes.NewReader(data), int64(len(data)))

	return m, parseErr, nil
}

// calculate sorts the modules topologically (depmod_calculate_dependencies):
// modules nobody needs first, each module's dependencies after it. Modules
// left with users are in (or below) a dependency cycle and are dropped
// from the output, as depmod drops them.
func (d *depmod) calculate() {
	users := make([]int, len(d.modules))

	var roots []int

	for i, m := range d.modules {
		users[i] = m.users
		if users[i] == 0 {
			roots = append(roots, i)
		}
	}

	sorted := 0

	for len(roots) > 0 {
		src := d.modules[roots[len(roots)-1]]
		roots = roots[:len(roots)-1]

		src.depSortIdx = sorted
		sorted++

		for _, dst := range src.deps {
			users[dst.idx]--
			if users[dst.idx] == 0 {
				roots = append(roots, dst.idx)
			}
		}
	}

	if sorted < len(d.modules) {
		for i, m := range d.modules {
			if users[i] != 0 {
				d.log.Warn("depmod: module in a dependency cycle", "module", m.relpath)
				m.depLoop, m.depSortIdx = true, maxInt32
			}
		}
	}

	for _, m := range d.modules {
		slices.SortStableFunc(m.deps, depCmp)
	}
}

func depCmp(a, b *mod) int {
	switch {
	case a.depLoop == b.depLoop:
		return a.depSortIdx - b.depSortIdx
	case a.depLoop:
		return 1
	default:
		return -1
	}
}

// allDeps is every module m needs, directly or not, in load order reversed
// (mod_get_all_sorted_dependencies), cycle members left out.
func allDeps(m *mod) []*mod {
	var out []*mod

	var fill func(*mod)

	fill = func(m *mod) {
		for _, d := range m.deps {
			if slices.Contains(out, d) {
				continue
			}

			out = append(out, d)
			fill(d)
		}
	}

	fill(m)
	slices.SortStableFunc(out, depCmp)

	return slices.DeleteFunc(out, func(d *mod) bool { return d.depLoop })
}

func (d *depmod) output() (map[string][]byte, error) {
	files := map[string][]byte{}

	var deps, aliases, softdeps, symbols, devname bytes.Buffer

	depIdx, aliasIdx, symIdx := newIndex(), newIndex(), newIndex()

	aliases.WriteString("# Aliases extracted from modules themselves.\n")
	softdeps.WriteString("# Soft dependencies extracted from modules themselves.\n")
	symbols.WriteString("# Aliases for symbols, used by symbol_request().\n")

	for _, m := range d.modules {
		if m.depLoop {
			continue
		}

		line := m.relpath + ":"
		for _, dep := range allDeps(m) {
			line += " " + dep.relpath
		}

		deps.WriteString(line + "\n")

		if err := depIdx.insert(m.name, line, uint32(m.idx)); err != nil {
			return nil, fmt.Errorf("depmod: modules.dep.bin: %w", err)
		}
	}

	for _, m := range d.modules {
		for _, kv := range m.info.info {
			switch kv.key {
			case "alias":
				fmt.Fprintf(&aliases, "alias %s %s\n", kv.value, m.name)

				alias, ok := normalizeAlias(kv.value)
				if !ok {
					d.log.Warn("depmod: unmatched bracket in alias", "module", m.name, "alias", kv.value)
					continue
				}

				if err := aliasIdx.insert(alias, m.name, uint32(m.idx)); err != nil {
					return nil, fmt.Errorf("depmod: modules.alias.bin: %w", err)
				}
			case "softdep":
				fmt.Fprintf(&softdeps, "softdep %s %s\n", m.name, kv.value)
			}
		}
	}

	names := make([]string, 0, len(d.symbols))
	for n := range d.symbols {
		names = append(names, n)
	}

	hashOrder(names, 2048)

	for _, n := range names {
		owner := d.symbols[n].owner
		fmt.Fprintf(&symbols, "alias symbol:%s %s\n", n, owner.name)

		if err := symIdx.insert("symbol:"+n, owner.name, uint32(owner.idx)); err != nil {
			return nil, fmt.Errorf("depmod: modules.symbols.bin: %w", err)
		}
	}

	d.devnames(&devname)

	builtin, err := d.builtinIndex()
	if err != nil {
		return nil, err
	}

	builtinAlias, err := d.builtinAliasIndex()
	if err != nil {
		return nil, err
	}

	files["modules.dep"] = deps.Bytes()
	files["modules.dep.bin"] = depIdx.bytes()
	files["modules.alias"] = aliases.Bytes()
	files["modules.alias.bin"] = aliasIdx.bytes()
	files["modules.softdep"] = softdeps.Bytes()
	files["modules.symbols"] = symbols.Bytes()
	files["modules.symbols.bin"] = symIdx.bytes()
	files["modules.builtin.bin"] = builtin
	files["modules.builtin.alias.bin"] = builtinAlias
	files["modules.devname"] = devname.Bytes()

	return files, nil
}

// normalizeAlias is libkmod's alias_normalize: '-' becomes '_' outside
// bracket expressions; an unmatched bracket refuses the alias.
func normalizeAlias(a string) (string, bool) {
	var b strings.Builder

	for i := 0; i < len(a); i++ {
		switch c := a[i]; c {
		case '-':
			b.WriteByte('_')
		case ']':
			return "", false
		case '[':
			j := strings.IndexByte(a[i:], ']')
			if j < 0 {
				return "", false
			}

			b.WriteString(a[i : i+j+1])
			i += j
		default:
			b.WriteByte(c)
		}
	}

	return b.String(), true
}

// devnames writes modules.devname: modules whose aliases give both a
// devname: and a char- or block-major-M-m (output_devname).
func (d *depmod) devnames(out *bytes.Buffer) {
	empty := true

	for _, m := range d.modules {
		var (
			devname      string
			typ          byte
			major, minor uint
		)

		for _, kv := range m.info.info {
			if kv.key != "alias" {
				continue
			}

			var maj, mnr uint

			switch {
			case strings.HasPrefix(kv.value, "devname:"):
				devname = strings.TrimPrefix(kv.value, "devname:")
			case scanMajorMinor(kv.value, "char-major-", &maj, &mnr):
				typ, major, minor = 'c', maj, mnr
			case scanMajorMinor(kv.value, "block-major-", &maj, &mnr):
				typ, major, minor = 'b', maj, mnr
			}

			if typ != 0 && devname != "" {
				break
			}
		}

		if devname == "" {
			continue
		}

		if typ == 0 {
			d.log.Warn("depmod: module has a devname but no major and minor", "module", m.name, "devname", devname)
			continue
		}

		if empty {
			out.WriteString("# Device nodes to trigger on-demand module loading.\n")

			empty = false
		}

		fmt.Fprintf(out, "%s %s %c%d:%d\n", m.name, devname, typ, major, minor)
	}
}

// scanMajorMinor is sscanf(s, "<prefix>%u-%u") == 2.
func scanMajorMinor(s, prefix string, major, minor *uint) bool {
	rest, ok := strings.CutPrefix(s, prefix)
	if !ok {
		return false
	}

	a, rest, ok := strings.Cut(rest, "-")
	if !ok {
		return false
	}

	b := rest
	if i := strings.IndexFunc(rest, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		b = rest[:i]
	}

	ma, err1 := strconv.ParseUint(a, 10, 32)
	mi, err2 := strconv.ParseUint(b, 10, 32)

	if err1 != nil || err2 != nil {
		return false
	}

	*major, *minor = uint(ma), uint(mi)

	return true
}

// builtinIndex is modules.builtin.bin: one key per line of modules.builtin
// (output_builtin_bin).
func (d *depmod) builtinIndex() ([]byte, error) {
	data, err := fs.ReadFile(d.fsys, "modules.builtin")
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}

	if err != nil {
		return nil, fmt.Errorf("depmod: %w", err)
	}

	idx := newIndex()
	sc := bufio.NewScanner(bytes.NewReader(data))

	for sc.Scan() {
		line := sc.Text()
		if line == "" || !isAlpha(line[0]) {
			d.log.Warn("depmod: invalid modules.builtin line", "line", line)
			continue
		}

		if err := idx.insert(modname(line), "", 0); err != nil {
			return nil, fmt.Errorf("depmod: modules.builtin.bin: %w", err)
		}
	}

	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("depmod: modules.builtin: %w", err)
	}

	return idx.bytes(), nil
}

func isAlpha(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

// builtinAliasIndex is modules.builtin.alias.bin: the aliases of built-in
// modules from modules.builtin.modinfo ("<module>.<key>=<value>" strings),
// each mapping to its module (output_builtin_alias_bin).
func (d *depmod) builtinAliasIndex() ([]byte, error) {
	data, err := fs.ReadFile(d.fsys, "modules.builtin.modinfo")
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}

	if err != nil {
		return nil, fmt.Errorf("depmod: %w", err)
	}

	idx := newIndex()
	count := 0

	for _, s := range splitStrings(data) {
		name, kv, ok := strings.Cut(s, ".")
		if !ok {
			continue
		}

		key, value, _ := strings.Cut(kv, "=")
		if key != "alias" {
			continue
		}

		alias, ok := normalizeAlias(value)
		if !ok {
			d.log.Warn("depmod: unmatched bracket in built-in alias", "module", name, "alias", value)
			continue
		}

		if err := idx.insert(alias, name, 0); err != nil {
			return nil, fmt.Errorf("depmod: modules.builtin.alias.bin: %w", err)
		}

		count++
	}

	if count == 0 {
		return nil, nil
	}

	return idx.bytes(), nil
}
