package xfs

import (
	"testing"
)

func TestDev(t *testing.T) {
	img := buildImage(t, BootSize, bootFiles(300), Options{Features: &LTS66})
	t.Log(run(t, "cp", img, "/tmp/dev.img"))
}
