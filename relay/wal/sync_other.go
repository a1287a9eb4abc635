//go:build !linux

package wal

import (
	"errors"
	"os"
)

// fdatasync is fsync where the system has no fdatasync.
func fdatasync(f *os.File) error { return f.Sync() }

// preallocate is Linux's fallocate only: elsewhere segments grow as
// they are written.
func preallocate(f *os.File, size int64) error { return errors.ErrUnsupported }
