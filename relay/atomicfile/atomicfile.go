// Package atomicfile writes small files (keys, state) so that a crash or a
// power cut leaves either the old content or the new one under the name,
// never an empty or half-written file.
//
// Write puts the data in a temporary file in the same directory, fsyncs
// it, renames it over the name and fsyncs the directory, so the rename
// itself is durable. A temporary file left by a crash is named
// ".NAME.tmp-*" and is harmless; the next Write to NAME removes nothing
// else.
package atomicfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Write atomically replaces (or creates) path with data, mode perm.
func Write(path string, data []byte, perm os.FileMode) error {
	dir, name := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("write %s: sync: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	done = true
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("write %s: sync directory: %w", path, err)
	}
	return nil
}

// Create is Write for a file that must not exist yet: it fails with an
// error matching fs.ErrExist when path exists, and never replaces it.
// (Two racing Creates may both succeed; the relay's data dir has one
// writer, held by the store's lock.)
func Create(path string, data []byte, perm os.FileMode) error {
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("create %s: %w", path, os.ErrExist)
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("create %s: %w", path, err)
	}
	return Write(path, data, perm)
}

// syncDir fsyncs a directory so that a rename in it survives a power cut.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	return errors.Join(err, d.Close())
}
