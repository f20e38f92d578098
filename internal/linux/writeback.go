package linux

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// StartWriteback asks the kernel to start writing the dirty pages of f in
// [off, off+n) to its disk, without waiting for the writes to finish
// (sync_file_range SYNC_FILE_RANGE_WRITE). It makes nothing durable: an
// fsync is still needed; it lets the disk work while the caller writes
// more, so that the fsync finds less to do.
func StartWriteback(f *os.File, off, n int64) error {
	if err := unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE); err != nil {
		return fmt.Errorf("sync_file_range %s %d+%d: %w", f.Name(), off, n, err)
	}
	return nil
}
