package bench

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// cpuCgroupRoots: cgroup v1's cpu controller, or v2's unified tree.
var cpuCgroupRoots = []string{"/sys/fs/cgroup/cpu", "/sys/fs/cgroup"}

// capCPU moves process pid (every thread) into a cgroup of its own whose
// CPU bandwidth is cores (0.5: half a core over each 100 ms period), so
// each relay of a measurement gets the CPU of a gateway of its own
// rather than whatever it wins of the shared cores. release removes the
// cgroup once the process has exited. It needs root and a cpu
// controller (v1 cpu.cfs_quota_us, or v2 cpu.max).
func capCPU(pid int, cores float64) (release func(), err error) {
	if cores <= 0 {
		return func() {}, nil
	}
	const period = 100000 // µs
	quota := int(cores * period)
	for _, root := range cpuCgroupRoots {
		v1 := fileExists(filepath.Join(root, "cpu.cfs_quota_us"))
		v2 := fileExists(filepath.Join(root, "cgroup.controllers"))
		if !v1 && !v2 {
			continue
		}
		dir := filepath.Join(root, fmt.Sprintf("pushrelay-bench-%d", pid))
		if err := os.Mkdir(dir, 0o755); err != nil {
			return nil, fmt.Errorf("cpu cap: %w", err)
		}
		release = func() { os.Remove(dir) }
		var werr error
		if v1 {
			werr = errors.Join(
				os.WriteFile(filepath.Join(dir, "cpu.cfs_period_us"), []byte(strconv.Itoa(period)), 0),
				os.WriteFile(filepath.Join(dir, "cpu.cfs_quota_us"), []byte(strconv.Itoa(quota)), 0))
		} else {
			werr = os.WriteFile(filepath.Join(dir, "cpu.max"), fmt.Appendf(nil, "%d %d", quota, period), 0)
		}
		if werr == nil {
			werr = os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0)
		}
		if werr != nil {
			release()
			return nil, fmt.Errorf("cpu cap of %.2f cores: %w", cores, werr)
		}
		return release, nil
	}
	return nil, errors.New("cpu cap: no cgroup cpu controller under /sys/fs/cgroup")
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
