package ext4

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// ErrUnsupported is returned (wrapped) for tree entries the cache cannot
// hold: anything but directories and regular files (symlinks, devices,
// sockets, FIFOs).
var ErrUnsupported = errors.New("ext4: unsupported file type")

// ErrTooSmall is returned (wrapped) when the partition cannot hold the tree.
var ErrTooSmall = errors.New("ext4: partition too small")

// maxNameLen is the ext4 limit on one path component.
const maxNameLen = 255

// node is one directory or regular file of the tree, with its path relative
// to the root in slash form ("blob/sha256-…").
type node struct {
	rel  string
	dir  bool
	size int64
	perm fs.FileMode // permission bits plus setuid/setgid/sticky
}

// tree is a scanned source tree in lexical walk order: every directory comes
// before its contents.
type tree struct {
	root  string
	nodes []node
	// children[dir] is the total directory-entry bytes of dir's entries
	// ("" = root).
	dirents map[string]int64
	files   int
	dirs    int // not counting the root
	content int64
}

// scan walks root. It follows no symlinks and rejects every entry that is not
// a directory or a regular file.
func scan(root string) (*tree, error) {
	st, err := os.Stat(root)
	if err != nil {
		return nil, fmt.Errorf("ext4: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("ext4: %s is not a directory", root)
	}
	t := &tree{root: root, dirents: map[string]int64{"": 0}}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == root {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		name := d.Name()
		if len(name) > maxNameLen {
			return fmt.Errorf("ext4: %s: name longer than %d bytes", rel, maxNameLen)
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		parent := ""
		if i := strings.LastIndexByte(rel, '/'); i >= 0 {
			parent = rel[:i]
		}
		t.dirents[parent] += direntSize(name)
		n := node{rel: rel, perm: info.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)}
		switch {
		case d.IsDir():
			n.dir = true
			t.dirs++
			t.dirents[rel] = 0
		case d.Type().IsRegular():
			n.size = info.Size()
			t.files++
			t.content += n.size
		default:
			return fmt.Errorf("%w: %s is %v", ErrUnsupported, rel, d.Type())
		}
		t.nodes = append(t.nodes, n)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("ext4: scanning %s: %w", root, err)
	}
	return t, nil
}

// direntSize is the size of an ext4 linear directory entry for name:
// 8 bytes of header plus the name, padded to 4 bytes.
func direntSize(name string) int64 { return 8 + roundUp(int64(len(name)), 4) }

func roundUp(n, m int64) int64 { return (n + m - 1) / m * m }

func ceilDiv(n, m int64) int64 { return (n + m - 1) / m }
