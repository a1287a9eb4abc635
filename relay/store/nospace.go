package store

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
)

// IsNoSpace reports whether err means the store could not write for lack
// of space: ENOSPC (the file system is full) or EDQUOT (the user's quota
// is). It follows the %w chain; bbolt formats a few of its errors (a
// failed grow of the file) with %s, so their text is matched as well.
func IsNoSpace(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, syscall.ENOSPC.Error()) || strings.Contains(msg, syscall.EDQUOT.Error())
}

// ProbeSpace tells whether dir can take size more bytes: it writes them to
// a temporary file, syncs it and removes it. A nil error after the store
// failed for lack of space means space was freed and writes may resume.
func ProbeSpace(dir string, size int) error {
	f, err := os.CreateTemp(dir, ".space-probe-*")
	if err != nil {
		return fmt.Errorf("probe space in %s: %w", dir, err)
	}
	defer os.Remove(f.Name())
	_, err = f.Write(make([]byte, size))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("probe space in %s: %w", dir, err)
	}
	return nil
}
