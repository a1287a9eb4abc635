package wal

import (
	"os"
	"syscall"
)

// fdatasync flushes f's data and the metadata needed to read it back (its
// size), not its timestamps.
func fdatasync(f *os.File) error {
	return onFD(f, "fdatasync", func(fd int) error { return syscall.Fdatasync(fd) })
}

// preallocate allocates f's blocks up to size and extends its size to it
// (fallocate mode 0): the blocks read as zeros until written, and writing
// them changes neither the file's size nor, once their extents are
// converted, its block map. It fails with an error wrapping
// errors.ErrUnsupported where the filesystem cannot (UBIFS, JFFS2, NFS
// before 4.2).
func preallocate(f *os.File, size int64) error {
	return onFD(f, "fallocate", func(fd int) error { return syscall.Fallocate(fd, 0, 0, size) })
}

// onFD runs call on f's descriptor, again while it is interrupted
// (EINTR), and names f and op in its error.
func onFD(f *os.File, op string, call func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for {
			if serr = call(int(fd)); serr != syscall.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	if serr != nil {
		return &os.PathError{Op: op, Path: f.Name(), Err: serr}
	}
	return nil
}
