package xfs

import (
	"os"
	"syscall"
	"testing"
)

type syscallStat = syscall.Stat_t

// allocated returns the bytes the file system allocated for path.
func allocated(t testing.TB, path string, st *syscall.Stat_t) int64 {
	t.Helper()
	if err := syscall.Stat(path, st); err != nil {
		t.Fatal(err)
	}
	_ = os.Getpagesize
	return st.Blocks * 512
}
