package wal

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
)

// diskWritten returns the process's write_bytes from /proc/self/io, or -1.
func diskWritten() int64 {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return -1
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "write_bytes: "); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err == nil {
				return n
			}
		}
	}
	return -1
}

// BenchmarkAppend appends 300-byte entries, 1 or 32 per Append, and
// reports per entry: fdatasyncs (and directory fsyncs), bytes the log
// wrote, and bytes the kernel sent to the disk for this process
// (/proc/self/io write_bytes, Linux: the tail page each fdatasync writes
// back, journal writes not included), 0 where that is unknown.
func BenchmarkAppend(b *testing.B) {
	for _, per := range []int{1, 32} {
		b.Run(fmt.Sprintf("entries=%d", per), func(b *testing.B) {
			l := openT(b, b.TempDir(), Options{})
			batch := make([][]byte, per)
			for i := range batch {
				batch[i] = bytes.Repeat([]byte{'m'}, 300)
			}
			b.SetBytes(int64(300 * per))
			next := uint64(1)
			disk0 := diskWritten()
			for b.Loop() {
				if err := l.Append(next, batch...); err != nil {
					b.Fatal(err)
				}
				next += uint64(per)
			}
			entries := float64(next - 1)
			b.ReportMetric(float64(l.nSyncs.Load())/entries, "fsyncs/entry")
			b.ReportMetric(float64(l.nBytes.Load())/entries, "B-written/entry")
			if disk0 >= 0 {
				b.ReportMetric(float64(diskWritten()-disk0)/entries, "disk-B/entry")
			}
		})
	}
}
