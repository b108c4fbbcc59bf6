package storage

import (
	"os"
	"syscall"
)

// stampOf identifies a file's state: any write through the kernel moves its
// ctime, which (unlike mtime) no caller can set back.
func stampOf(st os.FileInfo) stamp {
	s := stamp{size: st.Size(), mtime: st.ModTime().UnixNano()}

	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		s.dev, s.ino = uint64(sys.Dev), sys.Ino //nolint:unconvert // Dev is not uint64 on every architecture
		s.ctime = sys.Ctim.Nano()
	}

	return s
}
