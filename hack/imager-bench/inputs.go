package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// inputs are the four boot files both builders get, byte for byte the same
// (the baseline's, imager-baseline.md): Debian's kernel, Debian 12's
// systemd-stub (its COFF symbol table stripped: Talos's PE assembler
// refuses symbols) and systemd-boot, and one of two initramfs.
type inputs struct {
	kernel, kernelVersion string
	sdStub, sdBoot        string
	initramfs             map[string]string // "small", "large"
}

// sourceDateEpoch is the Image Factory's SOURCE_DATE_EPOCH, also the mtime
// of every initramfs entry, so the inputs are byte-reproducible.
const sourceDateEpoch = 1559424892

// The init of both initramfs: it prints the command line the kernel got to
// the serial console and powers off (nothing boots it in the bench, but the
// inputs are the bootable ones of the baseline).
const initScript = `#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo "CMDLINE $(/bin/busybox cat /proc/cmdline)" >/dev/ttyS0
/bin/busybox poweroff -f
`

// fillerSize is the incompressible part of the large initramfs, which makes
// it 65 MiB: the order of a real Talos initramfs.
const fillerSize = 64 << 20

// prepareInputs writes the inputs under dir, or keeps them if a previous run
// wrote them (they are deterministic: the same source files give the same
// bytes; zstd -19 of the 64 MiB filler takes ~25 s).
func prepareInputs(cfg config, dir string) (*inputs, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}

	kernels, _ := filepath.Glob(filepath.Join(cfg.kernelDir, "boot", "vmlinuz-*"))
	if len(kernels) != 1 {
		return nil, fmt.Errorf("want one kernel in %s/boot (make deps unpacks Debian's), found %v", cfg.kernelDir, kernels)
	}

	in := &inputs{
		kernel:        filepath.Join(dir, "vmlinuz"),
		kernelVersion: strings.TrimPrefix(filepath.Base(kernels[0]), "vmlinuz-"),
		sdStub:        filepath.Join(dir, "systemd-stub.efi"),
		sdBoot:        filepath.Join(dir, "systemd-boot.efi"),
		initramfs:     map[string]string{"small": filepath.Join(dir, "initramfs-small.xz"), "large": filepath.Join(dir, "initramfs-large.xz")},
	}

	kernel, err := os.ReadFile(kernels[0])
	if err != nil {
		return nil, err
	}

	stub, err := os.ReadFile(filepath.Join(cfg.sdbootDir, "linuxx64.efi.stub"))
	if err != nil {
		return nil, fmt.Errorf("%w (Debian's systemd-boot-efi)", err)
	}

	if stub, err = stripCOFFSymbols(stub); err != nil {
		return nil, fmt.Errorf("systemd-stub: %w", err)
	}

	boot, err := os.ReadFile(filepath.Join(cfg.sdbootDir, "systemd-bootx64.efi"))
	if err != nil {
		return nil, fmt.Errorf("%w (Debian's systemd-boot-efi)", err)
	}

	for path, data := range map[string][]byte{in.kernel: kernel, in.sdStub: stub, in.sdBoot: boot} {
		if err := writeIfChanged(path, data); err != nil {
			return nil, err
		}
	}

	busybox, err := os.ReadFile(cfg.busybox)
	if err != nil {
		return nil, fmt.Errorf("%w (Debian's busybox-static)", err)
	}

	for set, path := range in.initramfs {
		filler := 0
		if set == "large" {
			filler = fillerSize
		}

		cpio := initramfsCPIO(busybox, filler)
		sum := sha256.Sum256(cpio)
		stamp := path + ".cpio-sha256"

		// The compressed file is kept only if it was made from exactly this
		// archive (the same busybox, the same recipe).
		if old, err := os.ReadFile(stamp); err == nil && string(old) == hex.EncodeToString(sum[:]) {
			if _, err := os.Stat(path); err == nil {
				continue
			}
		}

		// zstd -19 as the baseline's inputs (Talos's own initramfs is a
		// zstd newc cpio too); one thread, so the bytes do not depend on
		// the machine.
		cmd := exec.Command("zstd", "-q", "-19", "--single-thread", "-c")
		cmd.Stdin = bytes.NewReader(cpio)

		var out, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &stderr

		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("zstd of the %s initramfs: %w: %s", set, err, stderr.String())
		}

		if err := os.WriteFile(path, out.Bytes(), 0o644); err != nil {
			return nil, err
		}

		if err := os.WriteFile(stamp, []byte(hex.EncodeToString(sum[:])), 0o644); err != nil {
			return nil, err
		}
	}

	return in, nil
}

func writeIfChanged(path string, data []byte) error {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return nil
	}

	return os.WriteFile(path, data, 0o644)
}

// stripCOFFSymbols removes a PE image's COFF symbol table (and the string
// table after it), which Debian's systemd-stub 252 carries and Talos's UKI
// assembler refuses ("COFF symbols are not supported"): the file is cut
// where the table starts and the two header fields naming it are zeroed.
func stripCOFFSymbols(pe []byte) ([]byte, error) {
	if len(pe) < 0x40 || pe[0] != 'M' || pe[1] != 'Z' {
		return nil, errors.New("not a PE image (no MZ header)")
	}

	off := int(binary.LittleEndian.Uint32(pe[0x3c:]))
	if off+24 > len(pe) || !bytes.Equal(pe[off:off+4], []byte("PE\x00\x00")) {
		return nil, errors.New("not a PE image (no PE signature)")
	}

	coff := off + 4
	sections := int(binary.LittleEndian.Uint16(pe[coff+2:]))
	symtab := int(binary.LittleEndian.Uint32(pe[coff+8:]))
	optSize := int(binary.LittleEndian.Uint16(pe[coff+16:]))

	if symtab == 0 {
		return pe, nil
	}

	// The table must come after every section's data, or cutting it would
	// cut a section.
	sec := coff + 20 + optSize
	for i := range sections {
		h := sec + 40*i
		if h+40 > len(pe) {
			return nil, errors.New("section table past the end of the file")
		}

		end := int(binary.LittleEndian.Uint32(pe[h+20:])) + int(binary.LittleEndian.Uint32(pe[h+16:]))
		if end > symtab {
			return nil, fmt.Errorf("section %d ends at %d, after the symbol table at %d", i, end, symtab)
		}
	}

	if symtab > len(pe) {
		return nil, errors.New("symbol table past the end of the file")
	}

	out := append([]byte(nil), pe[:symtab]...)
	binary.LittleEndian.PutUint32(out[coff+8:], 0)
	binary.LittleEndian.PutUint32(out[coff+12:], 0)

	return out, nil
}

// initramfsCPIO is the newc archive of both initramfs: busybox, /init, the
// console device nodes and, for the large one, filler bytes (a fixed
// ChaCha8 stream: incompressible and the same on every machine).
func initramfsCPIO(busybox []byte, filler int) []byte {
	var buf bytes.Buffer

	w := newcWriter{w: &buf}

	w.add("bin", 0o040755, nil, 0, 0)
	w.add("bin/busybox", 0o100755, busybox, 0, 0)
	w.add("dev", 0o040755, nil, 0, 0)
	w.add("dev/console", 0o020600, nil, 5, 1)
	w.add("dev/ttyS0", 0o020660, nil, 4, 64)
	w.add("init", 0o100755, []byte(initScript), 0, 0)
	w.add("proc", 0o040755, nil, 0, 0)
	w.add("sys", 0o040755, nil, 0, 0)

	if filler > 0 {
		data := make([]byte, filler)
		rng := rand.NewChaCha8([32]byte([]byte("kiln imager-bench filler bytes!!")))
		_, _ = io.ReadFull(rng, data)
		w.add("filler.bin", 0o100644, data, 0, 0)
	}

	w.add("TRAILER!!!", 0, nil, 0, 0)

	return buf.Bytes()
}

// newcWriter writes the "070701" cpio format the kernel unpacks, every
// entry owned by root with the factory's SOURCE_DATE_EPOCH as mtime.
type newcWriter struct {
	w   *bytes.Buffer
	ino int
}

func (n *newcWriter) add(name string, mode uint32, data []byte, rmajor, rminor int) {
	n.ino++

	nlink := 1
	if mode&0o170000 == 0o040000 {
		nlink = 2
	}

	ino := n.ino
	if name == "TRAILER!!!" {
		ino, nlink = 0, 1
	}

	fmt.Fprintf(n.w, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, sourceDateEpoch, len(data), 0, 0, rmajor, rminor, len(name)+1, 0)
	n.w.WriteString(name)
	n.w.WriteByte(0)
	n.pad()
	n.w.Write(data)
	n.pad()
}

func (n *newcWriter) pad() {
	for n.w.Len()%4 != 0 {
		n.w.WriteByte(0)
	}
}

func fileSHA256(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()

	h := sha256.New()

	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}

	return hex.EncodeToString(h.Sum(nil)), n, nil
}
