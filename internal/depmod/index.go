package depmod

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// The binary index libkmod reads (modules.dep.bin, modules.alias.bin,
// modules.symbols.bin, modules.builtin.bin, modules.builtin.alias.bin):
// kmod's depmod.c "binary index write", format version 2.1. A radix trie
// whose nodes are written children first; every integer is big-endian.
//
//	u32 magic 0xB007F457, u32 version 0x00020001, u32 root offset
//	node: [prefix NUL] [u8 first, u8 last, u32 child[last-first+1]]
//	      [u32 count, {u32 priority, value NUL}...]
//
// A node offset carries flags in its top nibble saying which parts exist.
const (
	indexMagic   = 0xB007F457
	indexVersion = 0x00020001

	nodePrefix   = 0x80000000
	nodeValues   = 0x40000000
	nodeChildren = 0x20000000
	nodeMask     = 0x0FFFFFFF

	childMax = 128
)

type indexValue struct {
	priority uint32
	value    string
}

type indexNode struct {
	prefix      string
	values      []indexValue
	first, last int // child range; first == childMax when there are none
	children    [childMax]*indexNode
}

func newIndexNode(prefix string) *indexNode {
	return &indexNode{prefix: prefix, first: childMax}
}

// index is one binary index being built.
type index struct {
	root *indexNode
}

func newIndex() *index { return &index{root: newIndexNode("")} }

// checkASCII is depmod's index__checkstring: anything but 7-bit ASCII in
// a key or value is fatal there, and an error here.
func checkASCII(s string) error {
	for i := 0; i < len(s); i++ {
		if s[i] >= childMax {
			return fmt.Errorf("module index: bad character %#x in %q: only 7-bit ASCII is supported", s[i], s)
		}
	}

	return nil
}

// insert adds value under key with priority, as index_insert does.
func (x *index) insert(key, value string, priority uint32) error {
	if err := checkASCII(key); err != nil {
		return err
	}

	if err := checkASCII(value); err != nil {
		return err
	}

	node := x.root
	i := 0

	for {
		// Make node.prefix a prefix of key[i:], splitting node if not.
		j := 0
		for ; j < len(node.prefix); j++ {
			if i+j >= len(key) || node.prefix[j] != key[i+j] {
				child := *node
				child.prefix = node.prefix[j+1:]
				ch := int(node.prefix[j])

				*node = indexNode{prefix: node.prefix[:j], first: ch, last: ch}
				node.children[ch] = &child

				break
			}
		}

		i += j

		if i == len(key) {
			node.addValue(value, priority)
			return nil
		}

		ch := int(key[i])
		if node.children[ch] == nil {
			node.first, node.last = min(node.first, ch), max(node.last, ch)

			child := newIndexNode(key[i+1:])
			child.addValue(value, priority)
			node.children[ch] = child

			return nil
		}

		node = node.children[ch]
		i++
	}
}

// addValue inserts before the first value of equal or higher priority, so
// that among equal priorities the latest comes first (index_add_value).
func (n *indexNode) addValue(value string, priority uint32) {
	pos := 0
	for pos < len(n.values) && n.values[pos].priority < priority {
		pos++
	}

	n.values = append(n.values, indexValue{})
	copy(n.values[pos+1:], n.values[pos:])
	n.values[pos] = indexValue{priority: priority, value: value}
}

func (n *indexNode) hasChildren() bool { return n.first < childMax }

// bytes serializes the index as index_write does.
func (x *index) bytes() []byte {
	var buf bytes.Buffer

	buf.Write(be32(indexMagic))
	buf.Write(be32(indexVersion))
	buf.Write(be32(0))

	root := writeNode(x.root, &buf)

	out := buf.Bytes()
	binary.BigEndian.PutUint32(out[8:], root)

	return out
}

func writeNode(n *indexNode, buf *bytes.Buffer) uint32 {
	if n == nil {
		return 0
	}

	var offs []uint32

	if n.hasChildren() {
		for c := n.first; c <= n.last; c++ {
			offs = append(offs, writeNode(n.children[c], buf))
		}
	}

	off := uint32(buf.Len())

	if n.prefix != "" {
		buf.WriteString(n.prefix)
		buf.WriteByte(0)

		off |= nodePrefix
	}

	if len(offs) > 0 {
		buf.WriteByte(byte(n.first))
		buf.WriteByte(byte(n.last))

		for _, o := range offs {
			buf.Write(be32(o))
		}

		off |= nodeChildren
	}

	if len(n.values) > 0 {
		buf.Write(be32(uint32(len(n.values))))

		for _, v := range n.values {
			buf.Write(be32(v.priority))
			buf.WriteString(v.value)
			buf.WriteByte(0)
		}

		off |= nodeValues
	}

	return off
}

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
