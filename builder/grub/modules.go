package grub

import (
	"fmt"
	"io/fs"
	"strings"
)

// Module area object types (include/grub/kernel.h).
const (
	objTypeELF    = 0
	objTypeConfig = 2
	objTypePrefix = 3

	moduleMagic = 0x676d696d // "mimg"
)

// moduleArea builds what grub-mkimage appends to the kernel: a
// grub_module_info{32,64} header, each module (type ELF, padded to the
// pointer size) in dependency order, the embedded config and the prefix
// string, each NUL-terminated and padded.
func moduleArea(dir fs.FS, o Options, ptr uint64) ([]byte, error) {
	prefix := o.Prefix

	order, err := Modules(dir, o.Modules)
	if err != nil {
		return nil, err
	}

	infoSize := uint64(12)
	if ptr == 8 {
		infoSize = 24
	}

	area := make([]byte, infoSize, 1<<20)

	for _, m := range order {
		b, err := readFile(dir, m+".mod", maxFileSize)
		if err != nil {
			return nil, fmt.Errorf("module %s: %w", m, err)
		}

		size := alignUp(uint64(len(b)), ptr)
		area = le.AppendUint32(area, objTypeELF)
		area = le.AppendUint32(area, uint32(size+8))
		area = append(area, b...)
		area = append(area, make([]byte, size-uint64(len(b)))...)

		if len(area) > maxImageSize {
			return nil, fmt.Errorf("grub: modules larger than %d bytes", maxImageSize)
		}
	}

	if o.Config != nil {
		if len(o.Config) > maxFileSize {
			return nil, fmt.Errorf("grub: embedded config larger than %d bytes", maxFileSize)
		}

		size := alignUp(uint64(len(o.Config))+1, ptr)
		area = le.AppendUint32(area, objTypeConfig)
		area = le.AppendUint32(area, uint32(size+8))
		area = append(area, o.Config...)
		area = append(area, make([]byte, size-uint64(len(o.Config)))...)
	}

	if len(prefix) > 4096 || strings.IndexByte(prefix, 0) >= 0 {
		return nil, fmt.Errorf("grub: invalid prefix %q", prefix)
	}

	size := alignUp(uint64(len(prefix))+1, ptr)
	area = le.AppendUint32(area, objTypePrefix)
	area = le.AppendUint32(area, uint32(size+8))
	area = append(area, prefix...)
	area = append(area, make([]byte, size-uint64(len(prefix)))...)

	le.PutUint32(area, moduleMagic)

	if ptr == 8 {
		le.PutUint64(area[8:], infoSize)
		le.PutUint64(area[16:], uint64(len(area)))
	} else {
		le.PutUint32(area[4:], uint32(infoSize))
		le.PutUint32(area[8:], uint32(len(area)))
	}

	return area, nil
}
