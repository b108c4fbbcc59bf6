//go:build !linux

package storage

import "os"

// stampOf identifies a file's state as well as portable os.FileInfo can.
func stampOf(st os.FileInfo) stamp {
	return stamp{size: st.Size(), mtime: st.ModTime().UnixNano()}
}
