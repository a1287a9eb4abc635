package bench

import (
	"os"
	"path/filepath"
	"testing"
)

// diskWritten counts a synced write to the device under the test's
// temporary dir.
func TestDiskWritten(t *testing.T) {
	dir := t.TempDir()
	before, name, err := diskWritten(dir)
	if err != nil {
		t.Skipf("no block device under %s: %v", dir, err)
	}
	f, err := os.Create(filepath.Join(dir, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const n = 1 << 20
	if _, err := f.Write(make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	after, _, err := diskWritten(dir)
	if err != nil {
		t.Fatal(err)
	}
	if after-before < n {
		t.Fatalf("%s: %d bytes written across a synced write of %d", name, after-before, n)
	}
}
