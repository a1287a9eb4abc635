package bench

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// diskWritten returns the bytes written so far to the block device that
// holds dir (/sys/dev/block/MAJ:MIN/stat, sectors written), by every
// writer, and the device's name. Unlike the relay's write_bytes
// (/proc/PID/io) it counts what the filesystem writes for it too: the
// journal's commits behind each fdatasync, which on flash wear as much as
// the data. A dir on a filesystem without a block device (tmpfs) has none.
func diskWritten(dir string) (int64, string, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return 0, "", err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, "", fmt.Errorf("%s: no device number", dir)
	}
	dev := uint64(st.Dev)
	major := (dev>>8)&0xfff | (dev>>32)&^0xfff
	minor := dev&0xff | (dev>>12)&^0xff
	sys := fmt.Sprintf("/sys/dev/block/%d:%d", major, minor)
	b, err := os.ReadFile(sys + "/stat")
	if err != nil {
		return 0, "", fmt.Errorf("%s is on no block device: %w", dir, err)
	}
	f := strings.Fields(string(b))
	if len(f) < 7 {
		return 0, "", fmt.Errorf("%s/stat: %q", sys, b)
	}
	sectors, err := strconv.ParseInt(f[6], 10, 64)
	if err != nil {
		return 0, "", fmt.Errorf("%s/stat: %w", sys, err)
	}
	name := sys
	if target, err := os.Readlink(sys); err == nil {
		name = target[strings.LastIndexByte(target, '/')+1:]
	}
	return sectors * 512, name, nil
}
