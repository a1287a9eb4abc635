package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
	"testing"
)

func TestIsNoSpace(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{syscall.ENOSPC, true},
		{syscall.EDQUOT, true},
		{&fs.PathError{Op: "write", Path: "pushrelay.db", Err: syscall.ENOSPC}, true},
		{fmt.Errorf("store commit: %w", &fs.PathError{Op: "write", Path: "x", Err: syscall.EDQUOT}), true},
		// bbolt's grow error keeps only the text.
		{fmt.Errorf("file resize error: %s", &fs.PathError{Op: "truncate", Path: "x", Err: syscall.ENOSPC}), true},
		{syscall.EIO, false},
		{errors.New("store closed"), false},
		{ErrClosed, false},
	} {
		if got := IsNoSpace(c.err); got != c.want {
			t.Errorf("IsNoSpace(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

func TestProbeSpace(t *testing.T) {
	dir := t.TempDir()
	if err := ProbeSpace(dir, 64<<10); err != nil {
		t.Fatal(err)
	}
	left, _ := os.ReadDir(dir)
	if len(left) != 0 {
		t.Fatalf("probe left %d files behind", len(left))
	}
	if err := ProbeSpace(dir+"/missing", 1); err == nil {
		t.Fatal("probe of a missing dir succeeded")
	}
}
