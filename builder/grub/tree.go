package grub

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
)

// Limits on what a platform directory may hand us: GRUB's own files are far
// smaller (kernel.img ≈ 30–120 KiB, the largest module < 200 KiB).
const (
	maxFileSize   = 8 << 20
	maxModDepSize = 1 << 20
	maxModules    = 1024
	maxImageSize  = 64 << 20
)

// Talos's module lists and prefix (bootloader/grub/install.go
// generateGrubImage, v1.13.9): the EFI image gets TalosModules, the i386-pc
// core.img TalosModules followed by TalosBIOSModules.
var (
	TalosModules = []string{
		"part_gpt", "ext2", "fat", "xfs", "normal", "configfile", "linux", "boot", "search",
		"search_fs_uuid", "search_fs_file", "ls", "cat", "echo", "test", "help", "reboot", "halt", "all_video",
	}
	TalosBIOSModules = []string{"biosdisk", "part_msdos"}
)

// TalosPrefix is the --prefix Talos passes: grub/ on the third GPT partition
// (BOOT) of the first disk.
const TalosPrefix = "(hd0,gpt3)/grub"

// readFile reads name from dir, refusing anything larger than limit.
func readFile(dir fs.FS, name string, limit int64) ([]byte, error) {
	f, err := dir.Open(name)
	if err != nil {
		return nil, fmt.Errorf("grub: %w", err)
	}
	defer f.Close()

	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("grub: reading %s: %w", name, err)
	}

	if int64(len(b)) > limit {
		return nil, fmt.Errorf("grub: %s is larger than %d bytes", name, limit)
	}

	return b, nil
}

// validModuleName accepts what GRUB names its modules (all_video,
// search_fs_uuid, part_gpt, ...). grub-mkimage also takes paths and names
// ending in .mod; kiln never needs those, and refusing them keeps every read
// inside the platform directory.
func validModuleName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}

	for _, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-':
		default:
			return false
		}
	}

	return true
}

// moddep is moddep.lst: each module's dependencies as listed.
type moddep map[string][]string

// parseModDep reads moddep.lst ("name: dep dep ...", one module a line). A
// name listed twice keeps its last line, as GRUB's resolver (which prepends
// each line to a list and takes the first match) does.
func parseModDep(b []byte) (moddep, error) {
	deps := moddep{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), 64<<10)

	for n := 1; sc.Scan(); n++ {
		line := sc.Text()

		name, rest, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("grub: moddep.lst line %d has no ':'", n)
		}

		deps[name] = strings.Fields(rest)
	}

	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("grub: reading moddep.lst: %w", err)
	}

	return deps, nil
}

// resolve orders modules as grub-mkimage does (util/resolve.c): depth-first,
// each module after its dependencies, a module's dependencies visited from
// the last listed to the first, each module once.
func (d moddep) resolve(modules []string) ([]string, error) {
	var (
		order    []string
		done     = map[string]bool{}
		visiting = map[string]bool{}
	)

	var add func(name string, depth int) error

	add = func(name string, depth int) error {
		if !validModuleName(name) {
			return fmt.Errorf("grub: invalid module name %q", name)
		}

		if done[name] {
			return nil
		}

		// GRUB recurses without a guard and would run out of stack on a
		// cycle; say what is wrong instead.
		if visiting[name] || depth > maxModules {
			return fmt.Errorf("grub: moddep.lst has a dependency cycle through %q", name)
		}

		visiting[name] = true

		deps := d[name]
		for i := len(deps) - 1; i >= 0; i-- {
			if err := add(deps[i], depth+1); err != nil {
				return err
			}
		}

		visiting[name] = false
		done[name] = true
		order = append(order, name)

		if len(order) > maxModules {
			return errors.New("grub: too many modules")
		}

		return nil
	}

	for _, m := range modules {
		if err := add(m, 0); err != nil {
			return nil, err
		}
	}

	return order, nil
}

// Modules returns the modules grub-mkimage would embed for the given list:
// the list with every dependency from dir's moddep.lst, in GRUB's order.
func Modules(dir fs.FS, modules []string) ([]string, error) {
	b, err := readFile(dir, "moddep.lst", maxModDepSize)
	if err != nil {
		return nil, err
	}

	deps, err := parseModDep(b)
	if err != nil {
		return nil, err
	}

	return deps.resolve(modules)
}

// Version returns the GRUB version a platform directory was built from, read
// from its modinfo.sh (grub_version="2.12"), or "" if it does not say.
func Version(dir fs.FS) (string, error) {
	b, err := readFile(dir, "modinfo.sh", 1<<20)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}

	if err != nil {
		return "", err
	}

	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "grub_version="); ok {
			return strings.Trim(v, `"'`), nil
		}
	}

	return "", nil
}
