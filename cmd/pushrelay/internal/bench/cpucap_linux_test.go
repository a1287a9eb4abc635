package bench

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestCapCPU: a capped process is in a cgroup of its own with the quota
// asked for, and release removes the cgroup once the process is gone.
func TestCapCPU(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make cgroups")
	}
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	release, err := capCPU(pid, 0.25)
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatal(err)
	}
	var dir string
	for _, root := range cpuCgroupRoots {
		if d := filepath.Join(root, "pushrelay-bench-"+strconv.Itoa(pid)); fileExists(d) {
			dir = d
			break
		}
	}
	if dir == "" {
		t.Fatal("no cgroup made for the process")
	}
	procs, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	quota, err := os.ReadFile(filepath.Join(dir, "cpu.cfs_quota_us"))
	if err != nil {
		quota, _ = os.ReadFile(filepath.Join(dir, "cpu.max"))
	}
	cmd.Process.Kill()
	cmd.Wait()
	release()
	if strings.TrimSpace(string(procs)) != strconv.Itoa(pid) {
		t.Errorf("cgroup.procs = %q, want %d", procs, pid)
	}
	if q := strings.Fields(string(quota)); len(q) == 0 || q[0] != "25000" {
		t.Errorf("quota = %q, want 25000 µs of each 100000", quota)
	}
	if fileExists(dir) {
		t.Errorf("cgroup %s left after release", dir)
	}
}
