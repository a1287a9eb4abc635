//go:build !linux

package bench

import "errors"

// capCPU needs Linux's cgroups.
func capCPU(pid int, cores float64) (release func(), err error) {
	if cores <= 0 {
		return func() {}, nil
	}
	return nil, errors.New("cpu cap: needs Linux cgroups")
}
