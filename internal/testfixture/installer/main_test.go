package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/builder/disk"
	"github.com/kiln-dev/kiln/internal/testfixture"
)

// TestInstall runs the installer onto disk image files, in place and
// through a temp file as onto a block device, and reads the result with
// sgdisk, fsck.vfat and mtools.
func TestInstall(t *testing.T) {
	const diskSize = 100 * disk.MiB

	testfixture.RequireTool(t, "sgdisk", "fsck.vfat", "mtype", "cmp")

	root := t.TempDir()
	assets := filepath.Join(root, "usr", "install", "amd64")

	if err := os.MkdirAll(assets, 0o755); err != nil {
		t.Fatal(err)
	}

	sdboot, uki := []byte("MZ systemd-boot"), bytes.Repeat([]byte("MZ uki "), 300000)
	os.WriteFile(filepath.Join(assets, "systemd-boot.efi"), sdboot, 0o000) //nolint:errcheck
	os.WriteFile(filepath.Join(assets, "vmlinuz.efi"), uki, 0o000)         //nolint:errcheck

	dir := t.TempDir()
	var disks []string

	for _, via := range []bool{false, true} {
		img := filepath.Join(dir, map[bool]string{false: "direct.raw", true: "via-temp.raw"}[via])
		if err := os.WriteFile(img, nil, 0o644); err != nil {
			t.Fatal(err)
		}

		if err := os.Truncate(img, diskSize); err != nil {
			t.Fatal(err)
		}

		var out strings.Builder

		args := []string{"install", "--disk", img, "--root", root, "--version", "v1.13.0", "--arch", "amd64", "--timeout", "0", "--efi-size", "64"}
		if via {
			args = append(args, "--via-temp")
		}

		if err := run(context.Background(), args, &out); err != nil {
			t.Fatal(err)
		}

		t.Log(out.String())

		disks = append(disks, img)
	}

	if b, err := exec.Command("cmp", disks[0], disks[1]).CombinedOutput(); err != nil {
		t.Fatalf("the disk written through a temp file differs: %v %s", err, b)
	}

	img := disks[0]

	p, err := exec.Command("sgdisk", "-p", img).CombinedOutput()
	if err != nil || !strings.Contains(string(p), " EFI\n") || !strings.Contains(string(p), " META\n") {
		t.Fatalf("sgdisk -p: %v\n%s", err, p)
	}

	tbl, err := disk.Layout(disk.Params{Size: diskSize, EFISize: 64 * disk.MiB})
	if err != nil {
		t.Fatal(err)
	}

	efi, _ := tbl.Partition(disk.LabelEFI)
	at := img + "@@" + itoa(efi.Offset)

	for path, want := range map[string][]byte{
		"::/EFI/BOOT/BOOTX64.EFI":        sdboot,
		"::/EFI/Linux/Talos-v1.13.0.efi": uki,
		"::/loader/loader.conf":          []byte("# systemd-boot configuration\n\ntimeout 0\n"),
	} {
		got, err := exec.Command("mtype", "-i", at, path).Output()
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: %d bytes (%v), want %d", path, len(got), err, len(want))
		}
	}

	// fsck.vfat reads the partition as a file of its own.
	part := filepath.Join(dir, "efi.img")
	if b, err := exec.Command("dd", "if="+img, "of="+part, "bs=1M", "skip="+itoa(efi.Offset>>20), "count="+itoa(efi.Size>>20), "conv=sparse", "status=none").CombinedOutput(); err != nil {
		t.Fatalf("dd: %v %s", err, b)
	}

	if b, err := exec.Command("fsck.vfat", "-n", part).CombinedOutput(); err != nil {
		t.Errorf("fsck.vfat -n: %v\n%s", err, b)
	}

	// Before 1.10 the image carries vmlinuz and initramfs.xz, for GRUB.
	old := t.TempDir()
	os.MkdirAll(filepath.Join(old, "usr/install/amd64"), 0o755)                       //nolint:errcheck
	os.WriteFile(filepath.Join(old, "usr/install/amd64/vmlinuz"), []byte("k"), 0o644) //nolint:errcheck

	err = run(context.Background(), []string{"install", "--disk", img, "--root", old, "--version", "v1.9.4"}, &strings.Builder{})
	if err == nil || !strings.Contains(err.Error(), "this fixture installs only systemd-boot") {
		t.Errorf("pre-1.10 layout: %v", err)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
